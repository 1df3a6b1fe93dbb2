"""The plan of a run: configurations cheapest first, rounds of interleaved passes within ``--budget-s``.

Each variant's warm-up pass gives its encoder seconds per pixel and generation seconds per token, hence
an estimate of every configuration's cost; :func:`repeats_for` shares the budget out and :func:`measure`
follows the plan, rotating the order of the variants every round.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.students import Errors, Samples, short_error
from benchmarks.students.passes import PeakMemory, generate_kwargs, run_pass
from benchmarks.students.variants import Variant, set_image_size

log = logging.getLogger("benchmarks.models")


@dataclass(frozen=True)
class Config:
    size: tuple[int, int]  # (height, width)
    batch: int

    @property
    def key(self) -> str:
        return f"{self.size[0]}x{self.size[1]} b{self.batch}"

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1] * self.batch


def repeats_for(cost_s: float, *, left_s: float, later_s: list[float], repeats: int) -> int:
    """Timed passes for the next configuration (they run cheapest first): one if a pass fits in ``left_s``
    (else 0: skipped); more, up to ``repeats``, from a fair share of what is left after reserving one pass
    for each later configuration that would still fit (estimated costs ``later_s``).

    >>> repeats_for(10, left_s=100, later_s=[50], repeats=3)  # 40 spare: 20 each, 2 more passes
    3
    >>> repeats_for(10, left_s=100, later_s=[50, 500], repeats=3)  # the 500 s pass is not reserved for
    2
    >>> repeats_for(200, left_s=100, later_s=[], repeats=3)
    0
    """
    if cost_s > left_s:
        return 0
    reserve = 0.0
    for later in sorted(later_s):
        if cost_s + reserve + later <= left_s:
            reserve += later
    spare = left_s - cost_s - reserve
    return min(repeats, 1 + math.floor(spare / (len(later_s) + 1) / max(cost_s, 1e-9)))


@contextlib.contextmanager
def catch(errors: Errors, at: tuple[str, str], device: torch.device) -> Iterator[None]:
    """Record an out-of-memory or backend error of one variant at one configuration; the run goes on."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        errors[at] = short_error(exc)
        log.warning("%s %s failed: %s", at[1], at[0], errors[at])
        if device.type == "cuda":
            torch.cuda.empty_cache()


def warm_up(
    variants: list[Variant],
    config: Config,
    *,
    inputs: dict[tuple[int, int], torch.Tensor],
    processor: Any,
    args: argparse.Namespace,
    memory: PeakMemory,
) -> dict[str, tuple[float, float]]:
    """A warm-up pass of every variant at ``config``: (encoder s per pixel, generation s per token) of each.

    A variant whose warm-up fails (a backend error, out of memory) is dropped with the reason.
    """
    rates = {}
    for v in variants:
        if v.model is None:
            continue
        set_image_size(v.model, config.size)
        pixels = inputs[config.size][: config.batch].to(next(v.model.parameters()).dtype)
        kwargs = generate_kwargs(
            processor, v.model, tokens=args.warmup_tokens, batch=config.batch, device=pixels.device
        )
        try:
            t = run_pass(v.model, pixels, kwargs, memory=memory, no_grad=v.name == "2:4")
        except (RuntimeError, NotImplementedError) as exc:
            v.model, v.skipped = None, f"warm-up failed: {short_error(exc)}"
            log.warning("%s: %s", v.name, v.skipped)
            continue
        rates[v.name] = (t["encode_s"] / config.pixels, t["generate_s"] / args.warmup_tokens)
        log.info("warm-up %-12s at %s: %.2f + %.2f s", v.name, config.key, t["encode_s"], t["generate_s"])
    return rates


def measure(
    variants: list[Variant],
    configs: list[Config],
    *,
    inputs: dict[tuple[int, int], torch.Tensor],
    processor: Any,
    estimates: dict[str, float],
    args: argparse.Namespace,
    memory: PeakMemory,
    progress: Callable[[Samples, Errors, list[dict[str, Any]]], Any],
) -> tuple[Samples, Errors, list[dict[str, Any]]]:
    """Timed passes, configuration by configuration (cheapest first), variants interleaved in an order that
    rotates every round; then, while the budget allows, one more round at a time for configurations with
    fewer than ``--repeats`` (cheapest first). Returns samples, errors and the plan as it was followed.

    On CUDA each configuration starts with a short warm-up pass per variant (kernels are picked per shape)
    whose timings also estimate the configuration's cost; on CPU the estimate comes from ``estimates``.
    ``progress(samples, errors, plan)`` runs after every configuration, so an interrupted run leaves results.
    """
    samples: Samples = {}
    errors: Errors = {}
    plan: dict[str, dict[str, Any]] = {}
    spent = 0.0

    def batches(config: Config, *, tokens: int) -> Iterator[tuple[Variant, torch.Tensor, dict[str, Any]]]:
        by_dtype: dict[torch.dtype, torch.Tensor] = {}  # one copy of the batch per dtype
        for v in variants:
            set_image_size(v.net, config.size)
            dtype = next(v.net.parameters()).dtype
            pixels = by_dtype.setdefault(dtype, inputs[config.size][: config.batch].to(dtype))
            yield (
                v,
                pixels,
                generate_kwargs(processor, v.net, tokens=tokens, batch=config.batch, device=pixels.device),
            )

    def warm_up_here(config: Config) -> float:
        """A short pass per variant; returns the estimated seconds of one full round."""
        nonlocal spent
        cost = 0.0
        for v, pixels, kwargs in list(batches(config, tokens=args.warmup_tokens)):
            with catch(errors, (v.name, config.key), pixels.device):
                t = run_pass(v.net, pixels, kwargs, memory=memory, no_grad=v.name == "2:4")
                spent += t["encode_s"] + t["generate_s"]
                cost += t["encode_s"] + t["generate_s"] * args.new_tokens / args.warmup_tokens
        return cost

    def timed_rounds(config: Config, rounds: range) -> float:
        """Timed rounds (one pass per variant each); returns the seconds of the last round."""
        nonlocal spent
        prepared = list(batches(config, tokens=args.new_tokens))
        last = 0.0
        for r in rounds:
            last = 0.0
            for v, pixels, kwargs in prepared[r % len(prepared) :] + prepared[: r % len(prepared)]:
                if (v.name, config.key) in errors:
                    continue
                with catch(errors, (v.name, config.key), pixels.device):
                    t = run_pass(v.net, pixels, kwargs, memory=memory, no_grad=v.name == "2:4")
                    samples.setdefault((v.name, config.key), []).append(t)
                    spent += t["encode_s"] + t["generate_s"]
                    last += t["encode_s"] + t["generate_s"]
                    log.info(
                        "%s %-12s #%d: %.2f + %.2f s", config.key, v.name, r, t["encode_s"], t["generate_s"]
                    )
        return last

    for i, config in enumerate(configs):
        cuda = inputs[config.size].device.type == "cuda"
        cost = warm_up_here(config) if cuda else estimates[config.key]
        left = args.budget_s - spent
        repeats = args.repeats
        if args.budget_s > 0:
            later = [estimates[c.key] for c in configs[i + 1 :]]
            repeats = repeats_for(cost, left_s=left, later_s=later, repeats=args.repeats)
        entry = plan[config.key] = {
            "config": config.key,
            "repeats": repeats,
            "estimated_pass_s": round(cost, 2),
        }
        entry["reason"] = (
            "" if repeats else f"one pass ~{cost:.0f} s, {max(0.0, left):.0f} s of --budget-s left"
        )
        budget = f"{left:.0f} s of --budget-s left" if args.budget_s > 0 else "no --budget-s"
        log.info("%s: %d rounds (a round ~%.0f s, %s)", config.key, repeats, cost, budget)
        if repeats:
            entry["measured_pass_s"] = round(timed_rounds(config, range(repeats)), 2)
        progress(samples, errors, list(plan.values()))

    grew = args.budget_s > 0
    while grew:  # what the estimates left over: more rounds, cheapest configuration first
        grew = False
        for config in configs:
            entry = plan[config.key]
            if 0 < entry["repeats"] < args.repeats and entry["measured_pass_s"] <= args.budget_s - spent:
                entry["measured_pass_s"] = round(
                    timed_rounds(config, range(entry["repeats"], entry["repeats"] + 1)), 2
                )
                entry["repeats"] += 1
                grew = True
        if grew:
            progress(samples, errors, list(plan.values()))
    return samples, errors, list(plan.values())
