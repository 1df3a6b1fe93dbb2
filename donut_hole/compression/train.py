"""The one training loop: fine-tune/train a teacher, or distill (and prune) a student.

Order of each step, fixed and visible (as in nanoGPT): set lr → evaluate/checkpoint every N →
forward + loss → backward → clip → optimizer step → pruning masks → log. The learning rate is the pure
function :func:`get_lr`; a checkpoint is a plain dict; data order depends only on (seed, step), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.compression.curriculum import (
    READING_TASK_TOKEN,
    CurriculumDataset,
    CurriculumSampler,
    collate_located,
    render,
)
from donut_hole.compression.distill import ce_loss, shift_for_decoder
from donut_hole.compression.guided import encoder_grid
from donut_hole.compression.recipe import CurriculumConfig, TrainConfig
from donut_hole.evaluation.dataset import Sample
from donut_hole.evaluation.evaluate import evaluate_reader
from donut_hole.evaluation.metrics import levenshtein
from donut_hole.model.build import save_model, task_token_of
from donut_hole.model.predict import DonutReader, load_image
from donut_hole.model.tokens import json2token

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"  # one line per log_every steps: step, loss (and its parts), lr, img/s


class CheckpointError(ValueError):
    """A checkpoint that cannot continue this run (made with another tokenizer)."""


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only), so a stopped run checkpoints first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def get_lr(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``.

    >>> get_lr(0, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    0.1
    >>> get_lr(110, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    0.1
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return lr * min_lr_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        # A scan already at the model's size (synth writes them so) passes DONUT's thumbnail, resize and pad
        # unchanged: only rescale and normalise remain, done here in torch (a 448x448 training sample then
        # takes 2.5 ms on one core instead of 5-8.6 ms, so fewer loader processes feed a GPU).
        self._fast = (
            type(ip).__name__.startswith("DonutImageProcessor")
            and ip.do_rescale
            and ip.do_normalize
            and not ip.do_align_long_axis
        )
        self._scale = float(ip.rescale_factor)
        self._mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(ip.image_std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``pixel_values`` (3, H, W) of one RGB image, as the processor gives them."""
        height, width = self.image_size
        if self._fast and image.size == (width, height) and image.mode == "RGB":
            x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
            return (x * self._scale - self._mean) / self._std
        return self.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]

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


class Objective(Protocol):
    """Loss of one batch: returns the scalar to minimise and named parts to log."""

    def __call__(
        self, model: VisionEncoderDecoderModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class CrossEntropyObjective:
    """Teacher training: next-token cross-entropy, with the shift done here (not by the model)."""

    def __init__(self, *, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(
        self, model: VisionEncoderDecoderModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        decoder_input_ids, labels = shift_for_decoder(batch["input_ids"], pad_token_id=self.pad_token_id)
        logits = model(pixel_values=batch["pixel_values"], decoder_input_ids=decoder_input_ids).logits
        loss = ce_loss(logits, labels)
        return loss, {"ce": float(loss.detach())}


def objective_parameters(objective: Any) -> list[torch.nn.Parameter]:
    """Trainable parameters an objective owns beside the model (a training-only head), if any."""
    params = getattr(objective, "parameters", None)
    return list(params()) if callable(params) else []


def autocast_for(device: torch.device, config: TrainConfig) -> Any:
    """bf16 autocast where the config asks for it and the device has bf16 arithmetic, else a no-op."""
    if device.type == "cuda" and config.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and config.bf16_cpu and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class Pruner(Protocol):
    def step(self, step: int) -> Any: ...

    def apply_(self) -> Any: ...


def score_model(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    samples: Sequence[Sample],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Field F1 / nTED accuracy of the in-memory model on ``samples`` (no save needed)."""
    was_training = model.training
    reader = DonutReader(model, processor, max_new_tokens=max_new_tokens)
    evaluation = evaluate_reader(reader, samples, batch_size=batch_size, progress=False)
    model.train(was_training)
    return {"f1": evaluation.result.f1, "ted_accuracy": evaluation.result.ted_accuracy}


def reached_target(history: Sequence[dict[str, Any]], *, step: int, target_f1: float | None) -> bool:
    """Whether the evaluation made at ``step`` (if any) reached ``target_f1``.

    >>> reached_target([{"step": 5, "f1": 0.96}], step=5, target_f1=0.95)
    True
    """
    if target_f1 is None or not history or history[-1]["step"] != step:
        return False
    return float(history[-1].get("f1", 0.0)) >= target_f1


def make_loader(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    config: TrainConfig,
    train_samples: Sequence[Sample],
    *,
    curriculum: CurriculumConfig | None,
    start: int,
) -> DataLoader:
    """Batches for steps ``start``..``config.steps``: rendered by the curriculum, or read from files."""
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
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        persistent_workers=False,
        worker_init_fn=_ignore_sigterm,
    )


def _ignore_sigterm(_worker_id: int) -> None:
    """Loader processes leave SIGTERM to the trainer: a stop sent to the whole process group (CI, a
    terminal's kill) must reach the trainer's checkpoint, not fail it first with a dead loader."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


READING_VAL_SEED = 1000
"""Seed of the held-out reading pages (the training curriculum's seed is another)."""


def reading_pages(
    curriculum: CurriculumConfig, processor: DonutProcessor, *, count: int
) -> dict[str, list[tuple[Image.Image, str]]]:
    """``count`` held-out (image, text) reading pages per reading level the curriculum uses."""
    height, width = (
        int(v) for v in (processor.image_processor.size["height"], processor.image_processor.size["width"])
    )
    levels = sorted(
        {s.split("/", 1)[1] for stage in curriculum.stages for s in stage.mix if s.startswith("reading/")}
    )
    pages: dict[str, list[tuple[Image.Image, str]]] = {}
    for level in levels:
        rendered = [
            render(f"reading/{level}", seed=READING_VAL_SEED, index=i, size=(width, height))
            for i in range(count)
        ]
        pages[level] = [(r.image, r.target) for r in rendered]
    return pages


def reading_cer(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    pages: Sequence[tuple[Image.Image, str]],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> float:
    """Character error rate (edits / characters of the truth, over all pages) of greedy reading."""
    reader = DonutReader(model, processor, max_new_tokens=max_new_tokens, task_token=READING_TASK_TOKEN)
    edits = chars = 0
    for i in range(0, len(pages), batch_size):
        chunk = pages[i : i + batch_size]
        read = reader.generate(reader.pixel_values([image for image, _ in chunk]))
        for (_, truth), prediction in zip(chunk, read, strict=True):
            edits += levenshtein(prediction.sequence, truth)
            chars += len(truth)
    return round(edits / max(1, chars), 4)


def train(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    *,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    config: TrainConfig,
    out_dir: Path,
    objective: Objective | None = None,
    pruner: Pruner | None = None,
    on_eval: Callable[[int], dict[str, Any]] | None = None,
    resume: bool = False,
    progress: bool = True,
    save: bool = True,
    curriculum: CurriculumConfig | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``config.steps`` steps; return the evaluation history.

    ``out_dir`` receives ``checkpoint.pt`` (resumable), ``history.jsonl`` and, with ``save``, the final
    model in ``out_dir/model``. ``on_eval(step)`` adds fields (e.g. density) to each evaluation record.
    With a ``curriculum`` the training data is rendered on the fly (``train_samples`` is not read) and each
    evaluation also reports the character error rate on held-out reading pages of its levels.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    tokenizer = processor.tokenizer
    objective = objective or CrossEntropyObjective(pad_token_id=tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad] + objective_parameters(objective)
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    history: list[dict[str, Any]] = []
    start, cpu_before = 0, 0.0  # CPU-seconds spent by earlier sessions of this run
    checkpoint_path = out_dir / CHECKPOINT
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if "vocab" in state and state["vocab"] != tokenizer.get_vocab():
            raise CheckpointError(
                f"{checkpoint_path} was trained with another tokenizer ({len(state['vocab'])} tokens, "
                f"now {len(tokenizer)}): resume with the same training data and recipe, or start a new run"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "objective" in state and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(state["objective"])
        start, history = state["step"], state["history"]
        cpu_before = float(state.get("cpu_s", 0.0))
        if pruner is not None:
            pruner.step(start)
        log.info("resumed from %s at step %d", checkpoint_path, start)

    loader = make_loader(model, processor, config, train_samples, curriculum=curriculum, start=start)
    autocast = autocast_for(device, config)
    eval_set = list(val_samples)[: config.eval_samples]
    reading_set = reading_pages(curriculum, processor, count=config.eval_samples) if curriculum else {}

    def evaluate_now(step: int, train_loss: float | None) -> None:
        record: dict[str, Any] = {
            "step": step,
            "images": step * config.batch_size,
            "cpu_hours": round(cpu_seconds() / 3600, 4),
            "train_loss": train_loss,
        }
        if eval_set:
            model.eval()
            record.update(
                score_model(
                    model,
                    processor,
                    eval_set,
                    batch_size=config.batch_size,
                    max_new_tokens=config.max_new_tokens,
                )
            )
            model.train()
        for level, pages in reading_set.items():
            model.eval()
            record[f"cer_{level}"] = reading_cer(
                model, processor, pages, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens
            )
            model.train()
        if on_eval is not None:
            record.update(on_eval(step))
        history.append(record)
        with (out_dir / "history.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.info("eval %s", record)

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "config": config.model_dump(),
            "vocab": tokenizer.get_vocab(),  # the ids the weights mean; checked on resume
            "cpu_s": cpu_seconds(),
        }
        if hasattr(objective, "state_dict"):
            state["objective"] = objective.state_dict()  # a training-only head
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(checkpoint_path)  # atomic: a crash never leaves half a checkpoint

    done = start  # optimizer steps completed: what a checkpoint written now holds

    def train_step(step: int, batch: dict[str, torch.Tensor]) -> None:
        nonlocal done
        schedule_step = step  # where the lr and pruning schedules are
        if config.time_limit_s:
            elapsed = (time.perf_counter() - started) / config.time_limit_s
            schedule_step = max(step, min(config.steps, int(elapsed * config.steps)))
        lr = get_lr(
            schedule_step,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step > start and step % config.eval_every == 0:
            evaluate_now(step, float(np.mean(running[-config.log_every :])) if running else None)
        if step > start and step % config.checkpoint_every == 0:
            checkpoint(step)
        if pruner is not None:
            pruner.step(schedule_step)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss, parts = objective(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if pruner is not None:
            pruner.apply_()
        done = step + 1
        running.append(float(loss.detach()))
        if step % config.log_every == 0:
            rate = (step + 1 - start) / max(1e-9, time.perf_counter() - started) * config.batch_size
            parts_text = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            bar.update(
                task,
                status=f"loss {np.mean(running[-config.log_every :]):.3f} {parts_text} "
                f"lr {lr:.1e} {rate:.1f} img/s",
            )
            with (out_dir / TRAIN_LOG).open("a", encoding="utf-8") as f:
                record = {
                    "step": step,
                    "images": (step + 1) * config.batch_size,
                    "cpu_hours": round(cpu_seconds() / 3600, 4),
                    "loss": running[-1],
                    "lr": lr,
                    "img_s": round(rate, 2),
                }
                f.write(json.dumps(record | {k: float(v) for k, v in parts.items()}) + "\n")
        bar.advance(task)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    running: list[float] = []
    started = time.perf_counter()
    cpu_started = time.process_time()

    def cpu_seconds() -> float:
        """CPU-seconds of this run over all its sessions (this process's threads; loader processes apart)."""
        return cpu_before + time.process_time() - cpu_started

    with (
        Progress(*columns, TextColumn("{task.fields[status]}"), disable=not progress) as bar,
        _stop_on_sigterm(),
    ):
        task = bar.add_task("training", total=config.steps, completed=start, status="")
        try:
            for step, batch in enumerate(loader, start=start):
                train_step(step, batch)
                if reached_target(history, step=step, target_f1=config.target_f1):
                    log.warning("held-out F1 %.4f reached the target at step %d", history[-1]["f1"], step)
                    break
                if config.time_limit_s and time.perf_counter() - started >= config.time_limit_s:
                    log.warning(
                        "time limit of %g s: stopped at step %d of %d (go on with --resume)",
                        config.time_limit_s,
                        done,
                        config.steps,
                    )
                    break
        except KeyboardInterrupt:
            if done > start:
                checkpoint(done)
                log.warning("interrupted: checkpoint at step %d in %s (go on with --resume)", done, out_dir)
            raise
        if done > start:
            evaluate_now(done, float(np.mean(running[-config.log_every :])) if running else None)
            checkpoint(done)
    model.eval()
    if save:
        model.decoder.set_attn_implementation("sdpa")  # guided training may have switched it to eager
        save_model(model, processor, out_dir / "model")
    return history
