"""Training batches: targets, the dataset of files, the step-seeded sampler and the loader.

Data order depends only on (seed, step), so a resumed run sees exactly the batches it would have seen:
:class:`StepSampler` for a dataset folder, :class:`~donut_hole.compression.curriculum.CurriculumSampler`
for data rendered on the fly. :func:`make_loader` picks one.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.compression.curriculum import CurriculumDataset, CurriculumSampler, collate_located
from donut_hole.compression.guided import encoder_grid
from donut_hole.compression.recipe import CurriculumConfig, TrainConfig
from donut_hole.evaluation.dataset import Sample
from donut_hole.model.build import task_token_of
from donut_hole.model.pixels import pixels_of
from donut_hole.model.tokens import json2token
from donut_hole.scans import load_image


def target_sequence(gt_parse: dict[str, Any], *, task_token: str, eos_token: str) -> str:
    """What the decoder learns to write: ``<task><s_key>value</s_key>...</s>`` (DONUT's layout)."""
    return task_token + json2token(gt_parse) + eos_token


def target_texts(gt_parses: Sequence[dict[str, Any]], model: Any, processor: DonutProcessor) -> list[str]:
    """:func:`target_sequence` of each parse, with the model's task token and the tokenizer's ``</s>``."""
    task_token, eos = task_token_of(model, processor), processor.tokenizer.eos_token
    return [target_sequence(gt, task_token=task_token, eos_token=eos) for gt in gt_parses]


class DonutDataset(Dataset):
    """(pixel_values (3, H, W), token ids (T,)) pairs for a list of samples."""

    def __init__(
        self, samples: Sequence[Sample], processor: DonutProcessor, *, task_token: str, max_length: int
    ):
        self.samples = list(samples)
        self.processor = processor
        self.task_token = task_token
        self.max_length = max_length
        ip = processor.image_processor
        self.image_size = (int(ip.size["height"]), int(ip.size["width"]))
        self._pixels = pixels_of(ip)  # the processor's pixels, in fewer copies where it can

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``pixel_values`` (3, H, W) of one RGB image, as the processor gives them."""
        return self._pixels([image])[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        pixels = self.pixels(load_image(sample.image_path, target_size=self.image_size))
        tokenizer = self.processor.tokenizer
        text = target_sequence(sample.gt_parse, task_token=self.task_token, eos_token=tokenizer.eos_token)
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        return pixels, torch.tensor(ids, dtype=torch.long)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    pixels = torch.stack([p for p, _ in batch])  # (B, 3, H, W)
    longest = max(len(ids) for _, ids in batch)
    ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)  # (B, T)
    for row, (_, seq) in enumerate(batch):
        ids[row, : len(seq)] = seq
    return {"pixel_values": pixels, "input_ids": ids}


class StepSampler(Sampler[list[int]]):
    """Batches of indices that depend only on (seed, step): resuming at step k replays from k."""

    def __init__(self, n: int, *, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = max(1, self.n // self.batch_size)
        for step in range(self.start, self.stop):
            epoch, slot = divmod(step, per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            picked = order[slot * self.batch_size : (slot + 1) * self.batch_size]
            if len(picked) < self.batch_size:  # fewer samples than one batch
                picked = np.resize(order, self.batch_size)
            yield picked.tolist()


class ShardSampler(Sampler[list[Any]]):
    """Slice ``rank`` of ``processes`` equal slices of each batch another sampler yields: the batch's
    items sorted (like sources together), then dealt out in turn, so every slice gets a like mix of
    short and long samples and no process waits long for the others."""

    def __init__(self, batches: Sampler[list[Any]], *, rank: int, processes: int):
        self.batches, self.rank, self.processes = batches, rank, processes

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]  # the step samplers have a length

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batches:
            yield sorted(batch, key=repr)[self.rank :: self.processes]


def make_loader(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    config: TrainConfig,
    train_samples: Sequence[Sample],
    *,
    curriculum: CurriculumConfig | None,
    start: int,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """Batches for steps ``start``..``config.steps``: rendered by the curriculum, or read from files.

    ``shard`` = (rank, processes): this process's equal slice of every batch (data-parallel training).
    """
    tokenizer = processor.tokenizer
    files = DonutDataset(
        train_samples, processor, task_token=task_token_of(model, processor), max_length=config.max_length
    )
    if curriculum is None:
        sampler: Sampler[Any] = StepSampler(
            len(files), batch_size=config.batch_size, seed=config.seed, start=start, stop=config.steps
        )
        dataset: Dataset = files
        collate_fn: Callable[..., Any] = functools.partial(collate, pad_token_id=tokenizer.pad_token_id)
    else:
        _grid, stride = encoder_grid(model, files.image_size)
        sampler = CurriculumSampler(curriculum, batch_size=config.batch_size, start=start, stop=config.steps)
        dataset = CurriculumDataset(
            curriculum,
            tokenizer=tokenizer,
            pixels=files.pixels,
            image_size=files.image_size,
            task_token=files.task_token,
            max_length=config.max_length,
            stride=stride,
        )
        collate_fn = functools.partial(collate_located, pad_token_id=tokenizer.pad_token_id)
    if shard[1] > 1:
        sampler = ShardSampler(sampler, rank=shard[0], processes=shard[1])
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        persistent_workers=False,
        worker_init_fn=_ignore_sigterm,
        # a data-parallel rank's loader starts from a fresh interpreter: a fork would copy its gloo group
        # and thread pools without their threads (a helper's forked loader aborted at the end of a run)
        multiprocessing_context="spawn" if shard[1] > 1 and config.num_workers > 0 else None,
    )


def _ignore_sigterm(_worker_id: int) -> None:
    """Loader processes leave SIGTERM to the trainer: a stop sent to the whole process group (CI, a
    terminal's kill) must reach the trainer's checkpoint, not fail it first with a dead loader; and they
    end without the interpreter's teardown."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A spawned loader ends as a fresh interpreter does, and torch's C++ teardown has been seen to abort
    # there ("terminate called without an active exception") once the trainer is gone: it has nothing to
    # save, so it leaves at its first exit hook. (A forked loader already leaves with os._exit.)
    atexit.register(os._exit, 0)
