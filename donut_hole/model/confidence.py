"""Per-field confidence that means what it says: a calibration fitted on held-out scans.

A reading's tokens are split into fields (:func:`field_spans`: each leaf value's tokens, the tags around it);
each field gets a few numbers from its token probabilities and its document's (:func:`features`); a
logistic model fitted on held-out scans whose truth is known (:meth:`Calibration.fit`) turns them into the
probability that the field is right. It is stored in the model folder as ``calibration.json`` and applied
wherever a reading is stored; a folder without one keeps the raw confidence (the mean probability of the
field's tokens), which on a trained DONUT is near 1 for right and wrong fields alike.

    >>> cal = Calibration(weights=[0.0] * len(FEATURES), bias=2.0)
    >>> round(cal.probability([0.0] * len(FEATURES), "carrier"), 3)
    0.881
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from donut_hole.model.tokens import SEP

CALIBRATION_FILE = "calibration.json"
FEATURES = (
    "field mean token logit",
    "field lowest token logit",
    "lowest logit of the field's tags",
    "document lowest token logit",
    "document geometric-mean logit",
    "log tokens in the field",
    "reading cut",
)
LOGIT_CLIP = 12.0

_OPEN = re.compile(r"^<s_(.+)>$")
_CLOSE = re.compile(r"^</s_(.+)>$")
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def logit(p: float) -> float:
    """``log(p / (1 - p))`` clipped to ±12 (probabilities of exactly 0 or 1 included)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return max(-LOGIT_CLIP, min(LOGIT_CLIP, math.log(p / (1 - p))))


def kind_of(path: str) -> str:
    """A field's kind: its key path without list positions (``items.0.sku`` → ``items.sku``)."""
    return _INDEX.sub("", path)


@dataclass
class FieldSpan:
    """One leaf value of a reading: its key path, its text, the token positions ``[start, end)`` that spell
    it, and the positions of the tags around it (its opening tag, its closing tag or separator)."""

    path: str
    value: str
    start: int
    end: int
    tags: list[int] = field(default_factory=list)


def field_spans(tokens: Sequence[str], *, detokenize: Callable[[list[str]], str]) -> list[FieldSpan]:
    """The leaf values of a tagged token list, in order: ``<s_city>``, ``L``, ``yon``, ``</s_city>`` →
    ``[FieldSpan("city", "Lyon", 1, 3, [0, 3])]``. Repeated keys (list items) repeat their path."""
    spans: list[FieldSpan] = []
    path: list[str] = []
    start: int | None = None
    opened_at: int | None = None

    def emit(end: int, closing: int | None) -> None:
        nonlocal start, opened_at
        if start is not None and path and end > start:
            value = str(detokenize(list(tokens[start:end]))).strip()
            tags = [t for t in (opened_at, closing) if t is not None]
            if value:
                spans.append(FieldSpan(".".join(path), value, start, end, tags))
        start = None

    for i, token in enumerate(tokens):
        opened, closed = _OPEN.match(token), _CLOSE.match(token)
        if opened:
            emit(i, i)
            path.append(opened.group(1))
            opened_at = i
        elif closed:
            emit(i, i)
            if path and path[-1] == closed.group(1):
                path.pop()
            opened_at = None
        elif token == SEP:
            emit(i, i)
            opened_at = i
        elif start is None:
            start = i
    return spans


def features(span: FieldSpan, probs: Sequence[float], *, cut: bool) -> list[float]:
    """The numbers the calibration reads for one field (see :data:`FEATURES`), from the probability of
    every chosen token of its document."""
    own = [probs[i] for i in range(span.start, min(span.end, len(probs)))] or [0.0]
    tags = [probs[i] for i in span.tags if i < len(probs)] or [1.0]
    every = list(probs) or [0.0]
    mean_log = sum(math.log(max(p, 1e-12)) for p in every) / len(every)
    return [
        logit(sum(own) / len(own)),
        logit(min(own)),
        logit(min(tags)),
        logit(min(every)),
        logit(math.exp(mean_log)),
        math.log(1 + len(own)),
        1.0 if cut else 0.0,
    ]


@dataclass
class Calibration:
    """A logistic model of "this field is right" over :data:`FEATURES`, with a learned offset per field
    kind seen in fitting (:func:`kind_of`); features are standardised with the fitting set's mean and
    scale."""

    weights: list[float]
    bias: float
    kinds: dict[str, float] = field(default_factory=dict)
    mean: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))
    scale: list[float] = field(default_factory=lambda: [1.0] * len(FEATURES))
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, x: Sequence[float], path: str) -> float:
        z = self.bias + self.kinds.get(kind_of(path), 0.0)
        for w, v, m, s in zip(self.weights, x, self.mean, self.scale, strict=True):
            z += w * (v - m) / s
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    @classmethod
    def fit(
        cls, rows: Sequence[Sequence[float]], paths: Sequence[str], right: Sequence[bool], *, l2: float = 1.0
    ) -> Calibration:
        """Fit by Newton's method on the log-loss plus ``l2`` times the squared weights (offsets included):
        ``rows`` of :func:`features`, each field's key path and whether it was right."""
        x = np.asarray(rows, dtype=np.float64)
        y = np.asarray(right, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("calibration needs one feature row and one label per field, and at least one")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-6] = 1.0
        kinds = sorted({kind_of(p) for p in paths})
        onehot = np.zeros((len(y), len(kinds)))
        for row, path in enumerate(paths):
            onehot[row, kinds.index(kind_of(path))] = 1.0
        design = np.hstack([np.ones((len(y), 1)), (x - mean) / scale, onehot])
        theta = np.zeros(design.shape[1])
        penalty = np.full(design.shape[1], l2)
        penalty[0] = 0.0  # the bias is not shrunk
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -40, 40)))
            grad = design.T @ (p - y) + penalty * theta
            hess = design.T @ (design * (p * (1 - p))[:, None]) + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hess, grad)
            theta -= step
            if float(np.abs(step).max()) < 1e-8:
                break
        n = len(FEATURES)
        return cls(
            weights=[float(v) for v in theta[1 : 1 + n]],
            bias=float(theta[0]),
            kinds={kind: float(v) for kind, v in zip(kinds, theta[1 + n :], strict=True)},
            mean=[float(v) for v in mean],
            scale=[float(v) for v in scale],
            fitted_on={"fields": len(y), "right": int(y.sum())},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "features": list(FEATURES),
            "weights": self.weights,
            "bias": self.bias,
            "kinds": self.kinds,
            "mean": self.mean,
            "scale": self.scale,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        if data.get("kind") != "logistic" or list(data.get("features", [])) != list(FEATURES):
            raise ValueError(
                "calibration.json was written for other features; fit it again (donut-hole calibrate)"
            )
        return cls(
            weights=[float(v) for v in data["weights"]],
            bias=float(data["bias"]),
            kinds={str(k): float(v) for k, v in data.get("kinds", {}).items()},
            mean=[float(v) for v in data["mean"]],
            scale=[float(v) for v in data["scale"]],
            fitted_on=dict(data.get("fitted_on", {})),
        )

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def load_calibration(folder: str | Path) -> Calibration | None:
    """The model folder's calibration, or None where it has none (raw confidences are then kept)."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))


def reliability_bins(
    confidences: Sequence[float], right: Sequence[bool], *, bins: int = 10
) -> list[tuple[float, float, int]]:
    """(mean confidence, share right, fields) of each non-empty equal-width confidence bin (1.0 in the last).

    >>> reliability_bins([0.9, 0.9, 0.1], [True, False, False])
    [(0.1, 0.0, 1), (0.9, 0.5, 2)]
    """
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [
            (c, r)
            for c, r in zip(confidences, right, strict=True)
            if lo <= c < hi or (b == bins - 1 and c >= 1.0)
        ]
        if inside:
            mean = sum(c for c, _ in inside) / len(inside)
            out.append((mean, sum(r for _, r in inside) / len(inside), len(inside)))
    return out


def expected_calibration_error(
    confidences: Sequence[float], right: Sequence[bool], *, bins: int = 10
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their share of fields.

    >>> expected_calibration_error([0.9, 0.9, 0.1, 0.1], [True, False, False, False])
    0.25
    """
    if not confidences:
        return 0.0
    binned = reliability_bins(confidences, right, bins=bins)
    return round(sum(n * abs(accuracy - mean) for mean, accuracy, n in binned) / len(confidences), 6)
