"""A training run's checkpoint: weights, optimizer and objective state, steps done and the curve so far, as
one plain dict written atomically; refused on resume when it was made with another tokenizer.

It is the run's resumable state and stays beside the run (``checkpoint.pt``, never in git): what is
committed is the weights a run saves (``model/``), its curve and its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import VisionEncoderDecoderModel

from donut_hole.compression.averaging import WeightAverage
from donut_hole.compression.recipe import TrainConfig

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot continue this run (made with another tokenizer)."""


@dataclass
class RunState:
    """What a checkpoint carries besides weights: steps done, evaluations, CPU-seconds so far."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    average: WeightAverage | None = None  # the weights' mean over the schedule's end (train.average_last)


def save_checkpoint(
    path: Path,
    run: RunState,
    *,
    model: VisionEncoderDecoderModel,
    optimizer: torch.optim.Optimizer,
    objective: Any,
    config: TrainConfig,
    vocab: dict[str, int],
) -> None:
    """Write a plain-dict checkpoint atomically (a crash never leaves half of one)."""
    state = {
        "step": run.step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": run.history,
        "config": config.model_dump(),
        "vocab": vocab,  # the ids the weights mean; checked on resume
        "cpu_s": run.cpu_s,
    }
    if hasattr(objective, "state_dict"):
        state["objective"] = objective.state_dict()  # a training-only head
    if run.average is not None:
        state["average"] = run.average.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(
    path: Path,
    *,
    model: VisionEncoderDecoderModel,
    optimizer: torch.optim.Optimizer,
    objective: Any,
    vocab: dict[str, int],
    device: torch.device,
) -> RunState:
    """Restore model, optimizer and objective from ``path``; refuse one made with another tokenizer."""
    state = torch.load(path, map_location=device, weights_only=False)
    if "vocab" in state and state["vocab"] != vocab:
        raise CheckpointError(
            f"{path} was trained with another tokenizer ({len(state['vocab'])} tokens, now {len(vocab)}): "
            "resume with the same training data and recipe, or start a new run"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "objective" in state and hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state["objective"])
    run = RunState(step=state["step"], history=state["history"], cpu_s=float(state.get("cpu_s", 0.0)))
    if "average" in state:
        run.average = WeightAverage()
        run.average.load_state_dict(state["average"])
    return run
