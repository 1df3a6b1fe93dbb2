"""A prediction's searchable fields: ``(key path, value, confidence)`` rows.

The confidence of a field is the mean probability of the tokens that spell its value, when the generated
tokens can be lined up with the sequence; otherwise it is the document's confidence (the geometric mean
over all its tokens). Lining up: the sequence is tokenized again, which gives back the generated tokens
whenever the tokenizer round-trips (field tags are single special tokens, so it does for DONUT-style
outputs), and the token count must match the number of probabilities (allowing the closing ``</s>``).

    sequence  <s_carrier>DHL</s_carrier><s_ship_to><s_city>Lyon</s_city></s_ship_to>
    probs        .99      .9 .8 .7  .99     .99       .99   .6 .6 .6 .6   ...
    rows      [("carrier", "DHL", 0.8), ("ship_to.city", "Lyon", 0.6)]
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from donut_hole.db.models import FIELD_NAME_MAX
from donut_hole.model.tokens import SEP

_OPEN = re.compile(r"^<s_(.+)>$")
_CLOSE = re.compile(r"^</s_(.+)>$")


def flatten_parse(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key path, value)`` per leaf, in document order; list items repeat their path.

    ``{"ship_to": {"city": "Lyon"}, "items": [{"sku": "A"}, {"sku": "B"}]}``
    → ``[("ship_to.city", "Lyon"), ("items.sku", "A"), ("items.sku", "B")]``
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


def token_spans(
    tokens: list[str], probs: list[float], *, detokenize: Any
) -> dict[str, list[tuple[str, float]]]:
    """Mean token probability of every leaf value in a tagged token list, by key path, in order.

    ``tokens`` are token strings (``<s_city>``, ``L``, ``yon``, ``</s_city>``); ``detokenize`` turns a list
    of content tokens back into text (the tokenizer's ``convert_tokens_to_string``).
    """
    spans: dict[str, list[tuple[str, float]]] = defaultdict(list)
    path: list[str] = []
    buffer: list[str] = []
    buffer_probs: list[float] = []

    def emit() -> None:
        if buffer and path:
            spans[".".join(path)].append(
                (str(detokenize(buffer)).strip(), sum(buffer_probs) / len(buffer_probs))
            )
        buffer.clear()
        buffer_probs.clear()

    for token, prob in zip(tokens, probs, strict=False):
        opened, closed = _OPEN.match(token), _CLOSE.match(token)
        if opened:
            emit()
            path.append(opened.group(1))
        elif closed:
            emit()
            if path and path[-1] == closed.group(1):
                path.pop()
        elif token == SEP:
            emit()
        else:
            buffer.append(token)
            buffer_probs.append(prob)
    return spans


def field_rows(
    *, data: dict[str, Any], sequence: str, token_probs: list[float], confidence: float, tokenizer: Any
) -> list[tuple[str, str, float | None]]:
    """The rows for the ``fields`` table of one prediction (see the module docstring for confidences)."""
    pairs = flatten_parse(data)
    spans: dict[str, list[tuple[str, float]]] = {}
    ids = tokenizer(sequence, add_special_tokens=False)["input_ids"]
    if 0 <= len(token_probs) - len(ids) <= 1:
        spans = token_spans(
            tokenizer.convert_ids_to_tokens(ids), token_probs, detokenize=tokenizer.convert_tokens_to_string
        )
    rows: list[tuple[str, str, float | None]] = []
    for name, value in pairs:
        found = spans.get(name, [])
        match = next((i for i, (text, _) in enumerate(found) if text == value.strip()), None)
        field_confidence = found.pop(match)[1] if match is not None else confidence
        rows.append((name[:FIELD_NAME_MAX], value, round(field_confidence, 6)))
    return rows
