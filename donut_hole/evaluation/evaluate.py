"""Run a reader over a DONUT dataset and score it with DONUT's metrics (field F1, nTED accuracy)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donut_hole.evaluation.dataset import Sample
from donut_hole.evaluation.metrics import EvalResult, evaluate
from donut_hole.model.predict import DonutReader
from donut_hole.progress import Progress
from donut_hole.scans import DocumentError


@dataclass
class Evaluation:
    """Scores plus what each document produced; unreadable scans count as empty predictions."""

    result: EvalResult
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else 0.0

    def by_type(self) -> dict[str, EvalResult]:
        """The scores of each document type (the ground truth's ``document_type``; ``other`` where none)."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            kind = record["ground_truth"].get("document_type")
            groups[kind if isinstance(kind, str) and kind else "other"].append(record)
        return {
            kind: evaluate([r["prediction"] for r in group], [r["ground_truth"] for r in group])
            for kind, group in sorted(groups.items())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "by_type": {
                kind: {"f1": r.f1, "ted_accuracy": r.ted_accuracy, "n": r.n}
                for kind, r in self.by_type().items()
            },
            "seconds": self.seconds,
            "docs_per_s": self.docs_per_s,
            "errors": sum(1 for r in self.records if r["error"]),
            "documents": self.records,
        }

    def write_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        return out


def evaluate_reader(
    reader: DonutReader, samples: Sequence[Sample], *, batch_size: int = 8, progress: bool = True
) -> Evaluation:
    """Predict every sample in batches; a document that cannot be read is scored as ``{}``."""
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with Progress("evaluate", total=len(samples), enabled=progress) as shown:
        for offset in range(0, len(samples), batch_size):
            chunk = samples[offset : offset + batch_size]
            records.extend(_predict_chunk(reader, chunk))
            shown.advance(len(chunk))
    seconds = time.perf_counter() - start
    result = evaluate([r["prediction"] for r in records], [r["ground_truth"] for r in records])
    return Evaluation(result=result, records=records, seconds=seconds)


def _predict_chunk(reader: DonutReader, chunk: Sequence[Sample]) -> list[dict[str, Any]]:
    images, errors = [], {}
    for i, sample in enumerate(chunk):
        try:
            images.append(reader.load(sample.image_path))
        except DocumentError as exc:
            errors[i] = exc.reason
    predictions = iter(reader.predict_detailed(images, batch_size=max(1, len(images))) if images else [])
    records = []
    for i, sample in enumerate(chunk):
        pred = None if i in errors else next(predictions)
        records.append(
            {
                "file_name": sample.image_path.name,
                "prediction": pred.data if pred else {},
                "ground_truth": sample.gt_parse,
                "confidence": pred.confidence if pred else 0.0,
                "error": errors.get(i),
            }
        )
    return records
