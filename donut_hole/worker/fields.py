"""A prediction's searchable fields: ``(key path, value, confidence, box)`` rows for the ``fields`` table.

The confidence of a field is the calibrated probability that it is right where the model folder has a
calibration (:mod:`donut_hole.model.confidence`), else the mean probability of the tokens that spell its
value; a value that cannot be lined up with its tokens gets the document's confidence. The box is where
the field was read (:mod:`donut_hole.model.locate`), as fractions of the page, when the reader located it.

    sequence  <s_carrier>DHL</s_carrier><s_ship_to><s_city>Lyon</s_city></s_ship_to>
    probs        .99      .9 .8 .7  .99     .99       .99   .6 .6 .6 .6   ...
    rows      [("carrier", "DHL", 0.8, None), ("ship_to.city", "Lyon", 0.6, None)]   (no calibration)
"""

from __future__ import annotations

from typing import Any

from donut_hole.db.models import FIELD_NAME_MAX
from donut_hole.model.locate import InputGeometry
from donut_hole.model.readings import field_readings, flatten_parse

__all__ = ["FieldRow", "field_rows", "flatten_parse"]

FieldRow = tuple[str, str, float | None, list[float] | None]


def field_rows(
    prediction: Any,
    tokenizer: Any,
    *,
    calibration: Any = None,
    geometry: InputGeometry | None = None,
    stride: int = 16,
) -> list[FieldRow]:
    """The rows for the ``fields`` table of one prediction (see the module docstring)."""
    readings = field_readings(
        prediction, tokenizer, calibration=calibration, geometry=geometry, stride=stride
    )
    return [(r.name[:FIELD_NAME_MAX], r.value, r.confidence, r.box) for r in readings]
