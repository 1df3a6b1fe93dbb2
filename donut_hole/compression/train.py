"""The one training loop: fine-tune/train a teacher, or distill (and prune) a student.

Order of each step, fixed and visible (as in nanoGPT): set lr → evaluate/checkpoint every N →
forward + loss → backward → clip → optimizer step → pruning masks → log. The learning rate is the pure
function :func:`get_lr`; a checkpoint is a plain dict; data order depends only on (seed, step), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.compression import parallel
from donut_hole.compression.averaging import WeightAverage
from donut_hole.compression.batches import make_loader
from donut_hole.compression.checkpoint import (
    CHECKPOINT,
    RunState,
    load_checkpoint,
    save_checkpoint,
)
from donut_hole.compression.distill import ce_loss, shift_for_decoder
from donut_hole.compression.monitor import (
    append_jsonl,
    evaluate_run,
    reached_target,
    reading_pages,
)
from donut_hole.compression.recipe import CurriculumConfig, TrainConfig
from donut_hole.evaluation.dataset import Sample
from donut_hole.model.build import save_model
from donut_hole.model.predict import cpu_has_bf16, resolve_device

log = logging.getLogger(__name__)

PLAIN_EVERY_S = 60.0  # without a terminal, a progress line on stderr this often (at a log step)
TRAIN_LOG = "train_log.jsonl"  # one line per log_every steps: step, loss (and its parts), lr, img/s


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


def get_lr(
    step: int,
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    decay_steps: int | None = None,
) -> float:
    """Linear warmup, then cosine decay to ``lr * min_lr_ratio``: over all the steps after the warm-up, or,
    with ``decay_steps`` (warmup-stable-decay), only over the last ``decay_steps`` steps, ``lr`` before them.

    >>> get_lr(0, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    0.1
    >>> get_lr(110, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    0.1
    >>> get_lr(50, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1, decay_steps=20)
    1.0
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return lr * min_lr_ratio
    start = warmup_steps if decay_steps is None else max(warmup_steps, total_steps - decay_steps)
    if step < start:
        return lr
    progress = (step - start) / max(1, total_steps - start)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_device(name: str) -> torch.device:
    """The recipe's ``train.device`` as a torch device (:func:`donut_hole.model.predict.resolve_device`:
    ``auto`` picks a GPU when there is one; ``cuda`` without one is a clear error)."""
    return torch.device(resolve_device(name))


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
    if device.type == "cpu" and config.bf16_cpu and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class Pruner(Protocol):
    def step(self, step: int) -> Any: ...

    def apply_(self) -> Any: ...


def make_optimizer(
    model: VisionEncoderDecoderModel, objective: Any, config: TrainConfig
) -> torch.optim.AdamW:
    """AdamW over the model's trainable weights and the objective's own (a training-only head); no weight
    decay on biases and norms."""
    trainable = [p for p in model.parameters() if p.requires_grad] + objective_parameters(objective)
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


class Clock:
    """Wall time of this session (for the time limit) and CPU-seconds of the whole run (for the curve:
    the training processes' threads; loader processes apart)."""

    def __init__(self, *, cpu_before: float, time_limit_s: float | None):
        self.cpu_before, self.time_limit_s = cpu_before, time_limit_s
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.helpers_s = 0.0  # a data-parallel run's helper processes, this session

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall0

    def own_seconds(self) -> float:
        """This process's CPU-seconds in this session."""
        return time.process_time() - self.cpu0

    def cpu_seconds(self) -> float:
        return self.cpu_before + self.own_seconds() + self.helpers_s

    def schedule_step(self, step: int, total: int) -> int:
        """Where the lr and pruning schedules are: the step, or the elapsed fraction of the time limit
        times ``total``, whichever is further along (so a run cut short still anneals)."""
        if not self.time_limit_s:
            return step
        return max(step, min(total, int(self.elapsed() / self.time_limit_s * total)))

    def out_of_time(self) -> bool:
        return bool(self.time_limit_s) and self.elapsed() >= float(self.time_limit_s or 0)


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
    eval_processor: DonutProcessor | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``config.steps`` steps; return the evaluation history.

    ``processor`` makes the training batches; ``eval_processor`` (default: the same) is the model's own,
    used to evaluate and save it (a student that reads smaller images than its teacher's batches).

    ``out_dir`` receives ``checkpoint.pt`` (resumable), ``history.jsonl``, ``train_log.jsonl`` and, with
    ``save``, the final model in ``out_dir/model``. ``on_eval(step)`` adds fields (e.g. density) to each
    evaluation record. With a ``curriculum`` the training data is rendered on the fly (``train_samples`` is
    not read) and each evaluation also reports the character error rate on held-out reading pages. With
    ``config.processes`` > 1 on a CPU, helper processes train beside this one (:mod:`.parallel`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = training_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device).train()  # type: ignore[arg-type]  # transformers types .to() as a decorated method
    vocab = processor.tokenizer.get_vocab()
    objective = objective or CrossEntropyObjective(pad_token_id=processor.tokenizer.pad_token_id)
    optimizer = make_optimizer(model, objective, config)
    checkpoint_path = out_dir / CHECKPOINT
    run = RunState()
    if resume and checkpoint_path.is_file():
        run = load_checkpoint(
            checkpoint_path, model=model, optimizer=optimizer, objective=objective, vocab=vocab, device=device
        )
        if pruner is not None:
            pruner.step(run.step)
        log.info("resumed from %s at step %d", checkpoint_path, run.step)
    if config.average_last == 0:
        run.average = None
    elif run.average is None:
        run.average = WeightAverage()
    if config.processes > 1 and device.type != "cpu":
        log.warning("train.processes applies to CPU training: one process on %s", device.type)
    group = None
    if config.processes > 1 and device.type == "cpu" and run.step < config.steps:
        group = parallel.start(
            config.processes,
            {
                "model": model,
                "processor": processor,
                "objective": objective,
                "pruner": pruner,
                "train_samples": list(train_samples) if curriculum is None else [],
                "config": config,
                "curriculum": curriculum,
                "optimizer": optimizer.state_dict(),
                "step": run.step,
            },
            entry=train_helper,
        )
    failed = True
    try:
        history = _run(
            model,
            processor,
            objective=objective,
            optimizer=optimizer,
            pruner=pruner,
            run=run,
            group=group,
            config=config,
            train_samples=train_samples,
            curriculum=curriculum,
            device=device,
            main=_Main(
                out_dir=out_dir,
                val_samples=val_samples,
                own_processor=eval_processor or processor,
                on_eval=on_eval,
                progress=progress,
                vocab=vocab,
            ),
        )
        failed = False
    finally:
        if group is not None:
            group.close(failed=failed)
    model.eval()
    if save:
        model.decoder.set_attn_implementation("sdpa")  # guided training may have switched it to eager
        save_model(model, eval_processor or processor, out_dir / "model")
    return history


def train_helper(payload: dict[str, Any], group: parallel.Group) -> None:
    """A helper rank of a data-parallel run: train this rank's slice of every batch until rank 0 stops."""
    config: TrainConfig = payload["config"]
    torch.manual_seed(config.seed + group.rank)
    model, objective = payload["model"], payload["objective"]
    model.train()
    optimizer = make_optimizer(model, objective, config)
    optimizer.load_state_dict(payload["optimizer"])
    _run(
        model,
        payload["processor"],
        objective=objective,
        optimizer=optimizer,
        pruner=payload["pruner"],
        run=RunState(step=payload["step"]),
        group=group,
        config=config,
        train_samples=payload["train_samples"],
        curriculum=payload["curriculum"],
        device=torch.device("cpu"),
        main=None,
    )


@dataclass
class _Main:
    """What only the main process (a lone run, or rank 0) needs: where the run lives, its held-out set."""

    out_dir: Path
    val_samples: Sequence[Sample]
    own_processor: DonutProcessor
    on_eval: Callable[[int], dict[str, Any]] | None
    progress: bool
    vocab: dict[str, int]


class _Duties:
    """Rank 0's duties in one object: evaluate, checkpoint (adding to the weights' mean), log, say why the
    run stopped. On a helper rank (``main`` None) every duty is a no-op, so the loop has no rank branches."""

    def __init__(
        self,
        main: _Main | None,
        *,
        model: VisionEncoderDecoderModel,
        optimizer: torch.optim.Optimizer,
        objective: Any,
        run: RunState,
        config: TrainConfig,
        clock: Clock,
        curriculum: CurriculumConfig | None,
    ) -> None:
        self.main, self.model, self.optimizer, self.objective = main, model, optimizer, objective
        self.run, self.config, self.clock = run, config, clock
        self.start = run.step
        self.eval_set = list(main.val_samples)[: config.eval_samples] if main else []
        self.reading_set = (
            reading_pages(curriculum, main.own_processor, count=config.eval_samples)
            if main and curriculum
            else {}
        )
        self.average_from = math.ceil(config.steps * (1 - config.average_last))
        self.losses: list[float] = []  # training loss per step
        self.plain = bool(main and main.progress and not sys.stderr.isatty())  # no terminal: a line a minute
        self.plain_at = time.monotonic()
        self.bar: Progress | None = None
        self.task: Any = None

    @property
    def active(self) -> bool:
        return self.main is not None

    def recent_loss(self) -> float | None:
        return float(np.mean(self.losses[-self.config.log_every :])) if self.losses else None

    def every_n(self, step: int, at: int) -> None:
        """Evaluate and checkpoint the state before ``step``, every ``eval_every`` / ``checkpoint_every``."""
        if self.main is None or step <= self.start:
            return
        if step % self.config.eval_every == 0:
            self.evaluate(step)
        if step % self.config.checkpoint_every == 0:
            self.checkpoint(at)

    def evaluate(self, step: int, **extra: Any) -> None:
        if self.main is None:
            return
        record = (
            evaluate_run(
                self.model,
                self.main.own_processor,
                step=step,
                config=self.config,
                eval_set=self.eval_set,
                reading_set=self.reading_set,
                train_loss=self.recent_loss(),
                cpu_seconds=self.clock.cpu_seconds(),
                on_eval=self.main.on_eval,
            )
            | extra
        )
        self.run.history.append(record)
        append_jsonl(self.main.out_dir / "history.jsonl", record)
        log.info("eval %s", record)

    def checkpoint(self, at: int | None = None) -> None:
        """Save the run; at schedule step ``at`` in the averaged part of the schedule, add the weights to
        the mean first."""
        if self.main is None:
            return
        run = self.run
        if run.average is not None and at is not None and at >= self.average_from:
            run.average.add(self.model.state_dict(), step=run.step)
        run.cpu_s = self.clock.cpu_seconds()
        save_checkpoint(
            self.main.out_dir / CHECKPOINT,
            run,
            model=self.model,
            optimizer=self.optimizer,
            objective=self.objective,
            config=self.config,
            vocab=self.main.vocab,
        )

    def log_step(self, step: int, lr: float, loss: float, parts: dict[str, float]) -> None:
        """Record the step's loss; every ``log_every`` steps a line in the training log and the progress."""
        self.losses.append(loss)
        if self.main is None or step % self.config.log_every != 0:
            return
        config, run = self.config, self.run
        rate = (run.step - self.start) / max(1e-9, self.clock.elapsed()) * config.batch_size
        record = {
            "step": step,
            "images": run.step * config.batch_size,
            "cpu_hours": round(self.clock.cpu_seconds() / 3600, 4),
            "loss": loss,
            "lr": lr,
            "img_s": round(rate, 2),
        }
        append_jsonl(self.main.out_dir / TRAIN_LOG, record | {k: float(v) for k, v in parts.items()})
        parts_text = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
        status = f"loss {self.recent_loss():.3f} {parts_text} lr {lr:.1e} {rate:.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, status=status)
        if self.plain and time.monotonic() - self.plain_at >= PLAIN_EVERY_S:
            self.plain_at = time.monotonic()
            left = (config.steps - run.step) * config.batch_size / max(rate, 1e-9)
            print(
                f"training: step {run.step}/{config.steps}, {record['images']:,} images, "
                f"{status}, about {left / 60:.0f} min left",
                file=sys.stderr,
                flush=True,
            )

    def should_stop(self, step: int) -> str | None:
        """``target`` or ``time`` when the run should end now (the main process decides), else None."""
        if self.main is None:
            return None
        if reached_target(self.run.history, step=step, target_f1=self.config.target_f1):
            return "target"
        return "time" if self.clock.out_of_time() else None

    def stopped(self, reason: str) -> None:
        _log_stop(reason, self.run, self.config, self.main)

    def save_interrupted(self) -> None:
        """An interrupted run keeps its steps: the model is as the last finished step left it."""
        if self.main is not None and self.run.step > self.start:
            self.checkpoint()
            self.stopped("interrupted")

    def finish(self, pruner: Pruner | None) -> None:
        """The last evaluation and checkpoint; with ``train.average_last``, the run goes on as the mean."""
        run = self.run
        if self.main is None or run.step <= self.start:
            return
        self.evaluate(run.step)
        self.checkpoint(self.clock.schedule_step(run.step, self.config.steps))
        if run.average is not None and run.average.count > 1:
            run.average.apply_to(self.model)
            if pruner is not None:
                pruner.apply_()
            log.info("averaged the weights of steps %s", run.average.steps)
            self.evaluate(run.step, average_of=run.average.steps)
            self.checkpoint()


def _run(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    *,
    objective: Any,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner | None,
    run: RunState,
    group: parallel.Group | None,
    config: TrainConfig,
    train_samples: Sequence[Sample],
    curriculum: CurriculumConfig | None,
    device: torch.device,
    main: _Main | None,
) -> list[dict[str, Any]]:
    """The steps from ``run.step`` to ``config.steps``: the same code on every rank; rank 0's evaluations,
    checkpoints and logs are :class:`_Duties` (no-ops on a helper rank, ``main`` None)."""
    start = run.step
    shard = (group.rank, group.world) if group is not None else (0, 1)
    loader = make_loader(
        model, processor, config, train_samples, curriculum=curriculum, start=start, shard=shard
    )
    autocast = autocast_for(device, config)
    params = [p for p in model.parameters() if p.requires_grad] + objective_parameters(objective)
    clock = Clock(cpu_before=run.cpu_s, time_limit_s=config.time_limit_s)
    duties = _Duties(
        main, model=model, optimizer=optimizer, objective=objective, run=run, config=config, clock=clock,
        curriculum=curriculum,
    )  # fmt: skip
    interrupted = False
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with (
        Progress(*columns, TextColumn("{task.fields[status]}"), disable=not (main and main.progress)) as bar,
        parallel.stop_flag() if group is not None else _stop_on_sigterm() as signalled,
    ):
        duties.bar, duties.task = (
            bar,
            bar.add_task("training", total=config.steps, completed=start, status=""),
        )
        try:
            for step, batch in enumerate(loader, start=start):
                # 1. schedules: learning rate (and the pruner's density) for this step
                at = clock.schedule_step(step, config.steps)
                # 2. evaluate and checkpoint the state before this step, every N steps
                duties.every_n(step, at)
                if group is not None:  # all ranks agree on the schedule and on stopping, before the step
                    reason = duties.should_stop(step)
                    stop = signalled is not None and signalled.is_set()
                    at, stopping, interrupted = group.control(
                        at, stop=stop or reason is not None, interrupt=stop
                    )
                    if stopping:
                        if (
                            not interrupted and reason
                        ):  # an interruption is told once its checkpoint is written
                            duties.stopped(reason)
                        break
                lr = get_lr(
                    at,
                    lr=config.lr,
                    warmup_steps=config.warmup_steps,
                    total_steps=config.steps,
                    min_lr_ratio=config.min_lr_ratio,
                    decay_steps=config.decay_steps,
                )
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
                if pruner is not None:
                    pruner.step(at)
                # 3. forward + loss, backward, (average over ranks), clip, optimizer step, pruning masks
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss, parts = objective(model, batch)
                loss.backward()
                values = {"loss": float(loss.detach()), **parts}
                if group is not None:  # the sums carry each helper's CPU-seconds (rank 0 adds none)
                    own_cpu = 0.0 if duties.active else clock.own_seconds()
                    summed = group.average_gradients(params, [*values.values(), own_cpu])
                    values = {k: v / group.world for k, v in zip(values, summed, strict=False)}
                    clock.helpers_s = summed[-1]  # the helpers' CPU-seconds in this session
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if pruner is not None:
                    pruner.apply_()
                run.step = step + 1
                # 4. log
                duties.log_step(step, lr, values.pop("loss"), values)
                bar.advance(duties.task)
                # 5. stop early (a lone run; a group decides at the start of the next step)
                if group is None and (reason := duties.should_stop(step)) is not None:
                    duties.stopped(reason)
                    break
        except (KeyboardInterrupt, parallel.ParallelError):
            duties.save_interrupted()
            raise
        if interrupted and duties.active:  # a signal stopped the group: keep the steps, no final evaluation
            duties.save_interrupted()
            raise KeyboardInterrupt
        if not interrupted:
            duties.finish(pruner)
    return run.history


def _log_stop(reason: str, run: RunState, config: TrainConfig, main: _Main | None) -> None:
    """Say why the run stopped early: ``interrupted``, ``target`` or ``time``."""
    if main is None:
        return
    if reason == "interrupted":
        log.warning("interrupted: checkpoint at step %d in %s (go on with --resume)", run.step, main.out_dir)
    elif reason == "target":
        log.warning("held-out F1 %.4f reached the target at step %d", run.history[-1]["f1"], run.step)
    else:
        log.warning(
            "time limit of %g s: stopped at step %d of %d (go on with --resume)",
            config.time_limit_s,
            run.step,
            config.steps,
        )
