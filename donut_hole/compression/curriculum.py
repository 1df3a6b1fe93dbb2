"""Training data made on the fly: synthetic documents and reading pages, mixed by a curriculum.

A curriculum is a list of stages, each a mix of sources until a number of images has been seen::

    stages:
      - {until: 40000, mix: {reading/easy: 0.7, reading/medium: 0.3}}   # learn to read first
      - {until: null, mix: {shipping_label: 1, bill_of_lading: 1, delivery_note: 1, reading/document: 1}}

Sample ``i`` of a source depends only on ``(seed, source, i)``: a document source renders exactly the scan
that ``donut-hole synth`` writes for that seed and index (the same JPEG round trip), so a run trained on the
fly sees the data a folder would hold, without the folder. Batch ``k`` depends only on ``(seed, k)``, so a
resumed run sees the batches it would have seen. Rendering knows where every character is printed; the
samples carry it for the guided-reading losses (:mod:`donut_hole.compression.guided`).

A stage's ``page_shapes`` draws that share of its document scans in their own page shape (e.g. a 640x480
bill of lading, a portrait label), which the processor then fits into the input as it fits a user's scan:
resized, and padded where the aspect ratios differ. A model that only ever saw pages of its input size
reads such scans badly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from donut_hole.compression.recipe import CurriculumConfig
from donut_hole.documents.canvas import Point
from donut_hole.documents.locations import cell_grid, token_cells
from donut_hole.documents.synth import DEFAULT_SIZES, Located, jpeg_round_trip, render_sample

READING_TASK_TOKEN = "<s_reading>"
"""The decoder's start token for reading pages (DONUT's pre-training used ``<s_synthdog>``)."""


def render(source: str, *, seed: int, index: int, size: tuple[int, int]) -> Located:
    """Sample ``index`` of ``source`` at ``size`` (width, height), decoded as a reader decodes the file
    ``donut-hole synth`` writes for it (the same JPEG round trip)."""
    sample = render_sample(source, seed=seed, index=index, size=size)
    return replace(sample, image=jpeg_round_trip(sample))


class Draw(NamedTuple):
    """One sample of a batch: sample ``number`` of ``source``, rendered at ``size`` (width, height) and
    fitted to the input by the processor, or at the input size when ``size`` is None."""

    source: str
    number: int
    size: tuple[int, int] | None = None


SHORT_SIDE = (0.66, 1.0)
"""Range of a page shape's short side over its long side (4x6 label 0.67, A4 0.71, a 640x480 scan 0.75)."""


def page_shape(source: str, u: float) -> tuple[int, int]:
    """A page size (width, height) of a document type: its long side and orientation as its default size
    (:data:`~donut_hole.documents.synth.DEFAULT_SIZES`), its short side at ``u`` in :data:`SHORT_SIDE`."""
    width, height = DEFAULT_SIZES[source]
    long = max(width, height)
    short = round(long * (SHORT_SIDE[0] + u * (SHORT_SIDE[1] - SHORT_SIDE[0])))
    return (long, short) if width >= height else (short, long)


def fitted(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float]:
    """(scale, dx, dy): where a page of ``size`` (width, height) lands on an input of ``target``
    (height, width) after DONUT's processor (resize to fit, keep the aspect ratio, pad the rest evenly).

    >>> fitted((640, 480), (448, 448))   # 448 x 336 of content, 56 rows of padding above it
    (0.7, 0, 56)
    """
    width, height = size
    target_h, target_w = target
    scale = min(target_w / width, target_h / height)
    return scale, (target_w - round(width * scale)) // 2, (target_h - round(height * scale)) // 2


class CurriculumSampler(Sampler[list[Draw]]):
    """Batches of :class:`Draw` for steps ``start``..``stop``; batch k depends only on (seed, k)."""

    def __init__(self, config: CurriculumConfig, *, batch_size: int, start: int, stop: int):
        self.config, self.batch_size, self.start, self.stop = config, batch_size, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch(self, step: int) -> list[Draw]:
        stage = self.config.stage_at(step * self.batch_size)
        names = list(stage.mix)
        weights = np.array([stage.mix[n] for n in names], dtype=np.float64)
        rng = np.random.default_rng([self.config.seed, step])
        picked = rng.choice(len(names), size=self.batch_size, p=weights / weights.sum())
        # a sample index unique to (step, slot): no two slots of a run ever share a sample
        draws = [Draw(names[k], step * self.batch_size + slot) for slot, k in enumerate(picked)]
        if stage.page_shapes > 0:  # drawn after the sources: a stage without shapes keeps its batches
            shaped = rng.random(self.batch_size) < stage.page_shapes
            short = rng.random(self.batch_size)
            draws = [
                d._replace(size=page_shape(d.source, short[slot]))
                if shaped[slot] and d.source in DEFAULT_SIZES
                else d
                for slot, d in enumerate(draws)
            ]
        return draws

    def __iter__(self) -> Iterator[list[Draw]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)


class CurriculumDataset(Dataset):
    """A :class:`Draw` → the training tensors of one rendered sample, with its reading guidance.

    Each item is a dict: ``pixel_values`` (3, H, W), ``input_ids`` (T,), ``cells`` (T - 1,): the encoder
    cell the decoder should look at to write token t + 1 (-1: none), ``glyphs`` (S,): per encoder cell, the
    id of a character printed there (pad id: none).
    """

    def __init__(
        self,
        config: CurriculumConfig,
        *,
        tokenizer: Any,
        pixels: Any,
        image_size: tuple[int, int],
        task_token: str,
        max_length: int,
        stride: int,
    ):
        self.config, self.tokenizer, self.pixels = config, tokenizer, pixels
        self.image_size, self.task_token, self.max_length, self.stride = (
            image_size,
            task_token,
            max_length,
            stride,
        )
        self.grid = cell_grid(image_size, stride=stride)

    def __len__(self) -> int:  # indices are (source, i) pairs from the sampler, not positions
        raise TypeError("CurriculumDataset is read through CurriculumSampler batches")

    def __getitem__(self, key: tuple[str, int] | Draw) -> dict[str, torch.Tensor]:
        source, index, size = Draw(*key)
        height, width = self.image_size
        sample = render(source, seed=self.config.seed, index=index, size=size or (width, height))
        if size is not None:  # the processor fits the page into the input: move the points with it
            scale, dx, dy = fitted(size, self.image_size)

            def move(point: Point) -> Point:
                return (point[0] * scale + dx, point[1] * scale + dy)

            sample = replace(
                sample,
                centres=[None if c is None else move(c) for c in sample.centres],
                glyphs=[(ch, move(c)) for ch, c in sample.glyphs],
            )
        task = READING_TASK_TOKEN if source.startswith("reading/") else self.task_token
        eos = self.tokenizer.eos_token
        encoded = self.tokenizer(
            task + sample.target + eos,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
        )
        centres = [None] * len(task) + sample.centres + [None] * len(eos)
        cells = token_cells(encoded["offset_mapping"], centres, stride=self.stride, grid=self.grid)
        glyphs = torch.full((self.grid[0] * self.grid[1],), self.tokenizer.pad_token_id, dtype=torch.long)
        unk = self.tokenizer.unk_token_id
        for ch, (x, y) in sample.glyphs:
            token = self.tokenizer.convert_tokens_to_ids(ch)
            row, col = int(y // self.stride), int(x // self.stride)
            if token != unk and 0 <= row < self.grid[0] and 0 <= col < self.grid[1]:
                glyphs[row * self.grid[1] + col] = token
        return {
            "pixel_values": self.pixels(sample.image),
            "input_ids": torch.tensor(encoded["input_ids"], dtype=torch.long),
            "cells": torch.tensor(cells[1:], dtype=torch.long),
            "glyphs": glyphs,
        }


def collate_located(
    items: Sequence[dict[str, torch.Tensor]], *, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Stack a batch: ids padded with ``pad_token_id``, cells with -1 (see :class:`CurriculumDataset`)."""
    longest = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)  # (B, T)
    cells = torch.full((len(items), longest - 1), -1, dtype=torch.long)  # (B, T-1): aligned with labels
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        cells[row, : len(item["cells"])] = item["cells"]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),  # (B, 3, H, W)
        "input_ids": ids,
        "cells": cells,
        "glyphs": torch.stack([item["glyphs"] for item in items]),  # (B, S)
    }
