"""How well field boxes find the print: IoU against the generator's own record of where each field went.

A synthetic scan is rendered again from its seed and index (:func:`donut_hole.documents.synth.render_sample`),
which gives each printed field's box on the scanned page. A read field is paired with the printed field of
its key path (list positions ignored) in order; the share of read fields whose box overlaps the truth with
IoU >= 0.5 is the figure reported.

    >>> box_iou([0, 0, 2, 2], [1, 0, 3, 2])
    0.3333
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from donut_hole.documents.synth import render_sample
from donut_hole.model.confidence import kind_of
from donut_hole.model.readings import FieldReading


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return round(inter / union, 4) if union > 0 else 0.0


def truth_boxes(
    source: str, *, seed: int, index: int
) -> tuple[tuple[int, int], list[tuple[str, list[float]]]]:
    """The page size and, in print order, (key path without list positions, box as page fractions) of every
    printed field of sample ``index`` of ``source`` for ``seed``."""
    sample = render_sample(source, seed=seed, index=index)
    width, height = sample.image.size
    boxes = [
        (kind_of(path), [box[0] / width, box[1] / height, box[2] / width, box[3] / height])
        for path, box in sample.field_boxes.items()
    ]
    return (width, height), boxes


def field_ious(
    fields: Sequence[FieldReading], truth: Sequence[tuple[str, list[float]]]
) -> list[float | None]:
    """Per read field, the IoU of its box with the truth box of the same key path (the k-th read of a
    path pairs with its k-th print): 0 where the field has no box, None where nothing of its path is
    printed (a value the page does not show, such as ``document_type``: left out of the figure)."""
    remaining: dict[str, list[list[float]]] = {}
    for path, box in truth:
        remaining.setdefault(path, []).append(box)
    out: list[float | None] = []
    for f in fields:
        boxes = remaining.get(f.name) or []
        if not boxes:
            out.append(None)
            continue
        if f.box is None:
            out.append(0.0)
            boxes.pop(0)
            continue
        out.append(box_iou(f.box, boxes.pop(0)))
    return out


def summary(ious: Sequence[float | None]) -> dict[str, Any]:
    """Read fields with a printed twin, the share of them boxed with IoU >= 0.5, the median IoU."""
    printed = sorted(v for v in ious if v is not None)
    return {
        "fields": len(ious),
        "printed": len(printed),
        "iou_at_least_0.5": round(sum(v >= 0.5 for v in printed) / len(printed), 4) if printed else 0.0,
        "median_iou": printed[len(printed) // 2] if printed else 0.0,
    }
