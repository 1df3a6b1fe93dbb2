"""A reading's fields one by one: value, confidence (calibrated where the model folder has a calibration)
and where on the page it was read.

    >>> rows = field_readings(prediction, tokenizer, calibration=cal, geometry=geo)   # doctest: +SKIP
    >>> rows[0]                                                                        # doctest: +SKIP
    FieldReading(name='carrier', value='DHL', confidence=0.97, raw=0.999, box=[0.1, 0.05, 0.3, 0.09])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from donut_hole.model import locate
from donut_hole.model.confidence import Calibration, FieldSpan, features, field_spans


@dataclass
class FieldReading:
    """One leaf value of a reading, in document order (repeated items repeat their key path)."""

    name: str  # dotted key path without list positions: "items.sku"
    value: str
    confidence: float  # calibrated probability that it is right, or ``raw`` without a calibration
    raw: float  # the mean probability of the tokens that spell it (the document's where not lined up)
    box: list[float] | None = None  # [x0, y0, x1, y1], fractions of the page; None: not located
    features: list[float] | None = None  # what the calibration read (None: not lined up with tokens)


def flatten_parse(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key path, value)`` per leaf, in document order; list items repeat their path.

    >>> flatten_parse({"ship_to": {"city": "Lyon"}, "items": [{"sku": "A"}, {"sku": "B"}]})
    [('ship_to.city', 'Lyon'), ('items.sku', 'A'), ('items.sku', 'B')]
    """
    if isinstance(data, dict):
        return [
            pair
            for key, value in data.items()
            for pair in flatten_parse(value, f"{prefix}.{key}" if prefix else key)
        ]
    if isinstance(data, list):
        return [pair for item in data for pair in flatten_parse(item, prefix)]
    if data is None or not prefix:
        return []
    return [(prefix, str(data))]


def _spans(prediction: Any, tokenizer: Any) -> tuple[list[FieldSpan], list[str]]:
    """The reading's field spans over its tokens (the chosen ids, or the sequence tokenized again)."""
    ids = list(getattr(prediction, "token_ids", None) or [])
    if not ids:
        ids = tokenizer(prediction.sequence, add_special_tokens=False)["input_ids"]
        if not 0 <= len(prediction.token_probs) - len(ids) <= 1:
            return [], []
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return field_spans(tokens, detokenize=tokenizer.convert_tokens_to_string), tokens


def field_readings(
    prediction: Any,
    tokenizer: Any,
    *,
    calibration: Calibration | None = None,
    geometry: locate.InputGeometry | None = None,
    stride: int = 16,
) -> list[FieldReading]:
    """Every leaf of ``prediction.data`` with its confidence and box (see :class:`FieldReading`).

    A leaf is lined up with the tokens that spell it by key path and text, in order; one that cannot be
    (a value the parser changed) gets the document's confidence and no box.
    """
    spans, tokens = _spans(prediction, tokenizer)
    probs = list(prediction.token_probs)
    points = getattr(prediction, "points", None)
    out: list[FieldReading] = []
    for name, value in flatten_parse(prediction.data):
        match = next((s for s in spans if s.path == name and s.value == value.strip()), None)
        if match is None:
            confidence = float(prediction.confidence)
            if calibration is not None:
                confidence = min(confidence, calibration.probability(_unlined(probs, prediction.cut), name))
            out.append(
                FieldReading(name, value, round(confidence, 6), round(float(prediction.confidence), 6))
            )
            continue
        spans.remove(match)
        own = probs[match.start : match.end] or [float(prediction.confidence)]
        raw = sum(own) / len(own)
        x = features(match, probs, cut=bool(prediction.cut))
        confidence = calibration.probability(x, name) if calibration is not None else raw
        box = None
        if points is not None and geometry is not None and match.end <= len(points):
            widths = [
                max(1, len(tokens[i].replace("▁", " ").strip()) or 1) for i in range(match.start, match.end)
            ]
            span = locate.span_box(points[match.start : match.end], widths, stride=stride)
            if span is not None and locate.is_finite_box(span):
                box = geometry.box_to_page(span)
        out.append(FieldReading(name, value, round(confidence, 6), round(raw, 6), box, x))
    return out


def _unlined(probs: Sequence[float], cut: bool) -> list[float]:
    """Features for a field not lined up with its tokens: the document's alone."""
    whole = FieldSpan("", "", 0, len(probs))
    return features(whole, probs, cut=cut)
