"""measure_latency: p50 and p95 of the same batch-1 samples (p95 >= p50: it came out below at batch 1), and
the models timed side by side, each image read by one after the other."""

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


class LoadedMachine:
    """A machine that gets slower while it is measured: each read takes longer than the one before."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, cost_s: float) -> None:
        self.reads += 1
        time.sleep(cost_s * (1 + 0.05 * self.reads))


class ReaderOn:
    """A reader that costs ``cost_s`` per image on the shared ``machine``; it records what it was given."""

    def __init__(self, machine: LoadedMachine, cost_s: float) -> None:
        self.machine, self.cost_s = machine, cost_s
        self.seen: list[str] = []

    def load(self, path: Path) -> str:
        return str(path)

    def predict_detailed(self, images: list[str], *, batch_size: int) -> list[None]:
        self.seen.extend(images)
        for _ in images:
            self.machine.read(self.cost_s)
        return [None] * len(images)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_p95_is_never_below_p50_and_batch1_keeps_its_median(batch_size):
    samples = [SimpleNamespace(image_path=Path(f"{i}.jpg")) for i in range(4)]
    latency = measure_latency({"only": SlowThenFastReader()}, samples, repeats=5, batch_size=batch_size)  # type: ignore[dict-item]
    only = latency["only"]
    assert only["ms_per_doc_batch1_p95"] >= only["ms_per_doc_batch1_p50"]
    assert only["ms_per_doc_batch1_p50"] < 10  # the median single image, not a pass's mean
    expected = {"ms_per_doc_batch1_p50", "ms_per_doc_batch1_p95"}
    if batch_size > 1:
        expected.add(f"ms_per_doc_batch{batch_size}_p50")
    assert set(only) == expected


def test_two_models_are_timed_in_turn_so_a_slowing_machine_slows_both_alike():
    """Two readers of the same cost on a machine that slows down as it goes: timed one after the other,
    the second would come out ~1.5x slower; read in turn, image by image, they come out alike."""
    machine = LoadedMachine()
    teacher, student = ReaderOn(machine, 0.002), ReaderOn(machine, 0.002)
    samples = [SimpleNamespace(image_path=Path(f"{i}.jpg")) for i in range(5)]
    latency = measure_latency({"teacher": teacher, "student": student}, samples, repeats=2, batch_size=1)  # type: ignore[dict-item]
    ratio = latency["teacher"]["ms_per_doc_batch1_p50"] / latency["student"]["ms_per_doc_batch1_p50"]
    assert 0.85 < ratio < 1.15, ratio
    assert teacher.seen == student.seen  # the same images, each its own decoding of them
