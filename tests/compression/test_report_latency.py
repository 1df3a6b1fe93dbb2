"""measure_latency: p50 and p95 of the same batch-1 samples, so p95 >= p50 (it came out below at batch 1)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from donut_hole.compression.report import measure_latency


class SlowThenFastReader:
    """One image takes 1 ms, every 5th call 20 ms; a whole pass (several images) 30 ms per image."""

    def __init__(self) -> None:
        self.calls = 0

    def load(self, path: Path) -> str:
        return str(path)

    def predict_detailed(self, images: list[str], *, batch_size: int) -> list[None]:
        self.calls += 1
        if len(images) == 1:
            time.sleep(0.02 if self.calls % 5 == 0 else 0.001)
        else:
            time.sleep(0.03 * len(images))
        return [None] * len(images)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_p95_is_never_below_p50_and_batch1_keeps_its_median(batch_size):
    samples = [SimpleNamespace(image_path=Path(f"{i}.jpg")) for i in range(4)]
    latency = measure_latency(SlowThenFastReader(), samples, repeats=5, batch_size=batch_size)  # type: ignore[arg-type]
    assert latency["ms_per_doc_batch1_p95"] >= latency["ms_per_doc_batch1_p50"]
    assert latency["ms_per_doc_batch1_p50"] < 10  # the median single image, not a pass's mean
    expected = {"ms_per_doc_batch1_p50", "ms_per_doc_batch1_p95"}
    if batch_size > 1:
        expected.add(f"ms_per_doc_batch{batch_size}_p50")
    assert set(latency) == expected
