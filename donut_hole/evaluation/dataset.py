"""DONUT's dataset format: a folder of images and ``metadata.jsonl``.

Each line is ``{"file_name": "000001.jpg", "ground_truth": "{\\"gt_parse\\": {...}}"}``; ``ground_truth``
is a JSON *string*, as clovaai/donut writes it (a plain object is accepted too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset folder or one of its lines cannot be used; the message says where."""


@dataclass(frozen=True)
class Sample:
    image_path: Path
    gt_parse: dict[str, Any]


def read_dataset(folder: str | Path, *, limit: int | None = None) -> list[Sample]:
    """All samples of a DONUT dataset folder, in file order.

    >>> read_dataset("data/val")[0]  # doctest: +SKIP
    Sample(image_path=PosixPath('data/val/000000.jpg'), gt_parse={'document_type': 'shipping_label', ...})
    """
    root = Path(folder)
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise DatasetError(f"{root} is not a DONUT dataset: metadata.jsonl is missing")
    samples: list[Sample] = []
    with meta.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                truth = record["ground_truth"]
                truth = json.loads(truth) if isinstance(truth, str) else truth
                gt_parse = truth["gt_parse"]
                name = record["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{meta}:{number}: not a DONUT metadata line ({exc})") from exc
            if not isinstance(gt_parse, dict):
                raise DatasetError(f"{meta}:{number}: gt_parse must be an object")
            samples.append(Sample(image_path=root / name, gt_parse=gt_parse))
            if limit is not None and len(samples) >= limit:
                break
    if not samples:
        raise DatasetError(f"{meta} holds no samples")
    return samples
