"""Data-parallel training on one machine's CPU cores (``train.processes``).

A small DONUT uses a second CPU core poorly through torch's own threads: on a 2-core AMD EPYC (AVX2, fp32)
the CPU teacher trained 2.8 images/s on one thread, 3.5 on two, and 5.5 as two one-thread processes of
this module. So the training loop can run as a group of processes:

- rank 0 is the caller's process: it evaluates, checkpoints, logs and saves, as a lone run does;
- helper ranks are spawned with a by-value copy of the model, objective, pruner and optimizer state, and
  only train;
- every rank takes an equal slice of every batch, dealt out so that each gets a like mix of sources (the
  same batches as one process: data order still depends only on (seed, step), so a run may resume with
  another number of processes; dealing instead of cutting took the pair from 4.3 to 5.5 images/s);
- gloo sums the gradients and each rank divides by the group size, so all ranks take the same optimizer
  step and the copies stay identical (the loss is the mean of the ranks' slice means);
- a small exchange at the start of each step carries rank 0's schedule position and any rank's stop
  request (SIGTERM or Ctrl-C, the target reached, the time spent), so that all ranks stop at one step.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT = timedelta(hours=1)
"""How long a rank waits for the others in one exchange (rank 0 evaluates while the helpers wait)."""
START_TIMEOUT_S = 300.0


class ParallelError(RuntimeError):
    """A helper process could not start, or the group lost one (a crashed or killed process)."""


def _exchange(values: torch.Tensor) -> None:
    """Sum ``values`` over the group in place; a lost process becomes a :class:`ParallelError`."""
    try:
        dist.all_reduce(values)
    except RuntimeError as exc:  # gloo: "Connection closed by peer", a timeout ...
        raise ParallelError(
            "a training process of this run stopped (crashed or was killed); see its messages above"
        ) from exc


@dataclass
class Group:
    """This process's place in a training group; rank 0 also holds the helper processes."""

    rank: int
    world: int
    helpers: list[BaseProcess] = field(default_factory=list)
    threads: int = 0
    """Rank 0: its torch threads before the group took a share of them, given back by :meth:`close` (what
    runs after training, such as the compression report's latency, runs as it would without a group)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def control(self, at: int, *, stop: bool, interrupt: bool) -> tuple[int, bool, bool]:
        """Agree on this step: rank 0's schedule position, whether any rank stops, and whether a stop
        came from a signal (then the run checkpoints without a final evaluation)."""
        values = torch.tensor([float(at) if self.main else 0.0, float(stop), float(interrupt)])
        _exchange(values)
        return int(values[0]), bool(values[1] > 0), bool(values[2] > 0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter], stats: Sequence[float]) -> list[float]:
        """Replace each parameter's gradient by the mean over ranks (None where no rank has one); return
        ``stats`` summed over ranks. One all-reduce of one flat buffer."""
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params])
        flat = torch.cat([*(t.float() for t in parts), flags, torch.tensor(list(stats), dtype=torch.float32)])
        _exchange(flat)
        offset = 0
        counts = flat[sum(p.numel() for p in params) : sum(p.numel() for p in params) + len(params)]
        for p, count in zip(params, counts.tolist(), strict=True):
            n = p.numel()
            if count > 0:
                p.grad = (flat[offset : offset + n] / self.world).view_as(p).to(p.dtype)
            offset += n
        return flat[offset + len(params) :].tolist()

    def close(self, *, failed: bool) -> None:
        """Wait for the helpers, which stop at the step rank 0 stops at. When rank 0 failed, leave the
        group first: a helper waiting in an exchange then fails and exits (else it is ended)."""
        if failed and dist.is_initialized():
            dist.destroy_process_group()
        for process in self.helpers:
            process.join(timeout=30 if failed else 120)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            if not failed and process.exitcode != 0:  # the run is saved; say that a helper did not end well
                log.warning("training helper %s ended with exit code %s", process.name, process.exitcode)
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.threads:
            torch.set_num_threads(self.threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(world: int, payload: dict[str, Any], *, entry: Callable[[dict[str, Any], Group], None]) -> Group:
    """Spawn ``world - 1`` helpers that each run ``entry(copy of payload, their Group)`` (see
    :func:`_helper_main`) and join them as rank 0. Each rank gets an equal share of this process's torch
    threads (at least one). ``entry`` is a module-level function (a helper imports it by name), so this
    module knows nothing of what the processes do."""
    buffer = io.BytesIO()
    _portable(_modules(payload))
    try:
        torch.save(payload, buffer)  # by value: a helper must never share a tensor with rank 0
    except (TypeError, AttributeError, RuntimeError) as exc:  # pickle's errors for a lambda, a lock ...
        raise ParallelError(
            f"train.processes > 1: the training state cannot be copied to a helper ({exc})"
        ) from exc
    threads = max(1, torch.get_num_threads() // world)
    port = _free_port()
    ctx = mp.get_context("spawn")  # a fresh interpreter: no fork of torch's thread pools
    ready: Any = ctx.Queue()
    group = Group(rank=0, world=world, threads=torch.get_num_threads())
    for rank in range(1, world):
        process = ctx.Process(
            target=_helper_main,
            args=(rank, world, port, threads, os.getpid(), buffer.getvalue(), ready, entry),
            name=f"donut-hole-train-rank{rank}",
        )
        process.start()
        group.helpers.append(process)
    try:
        _wait_ready(group, ready)
        torch.set_num_threads(threads)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=world, timeout=TIMEOUT
        )
    except BaseException:
        group.close(failed=True)
        raise
    log.info("training with %d processes of %d torch thread(s) each", world, threads)
    return group


def _wait_ready(group: Group, ready: Any) -> None:
    waiting = set(range(1, group.world))
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting:
        try:
            rank, error = ready.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in group.helpers if not p.is_alive()]
            if dead:
                raise ParallelError(
                    f"a training helper exited at start (exit code {dead[0].exitcode})"
                ) from None
            if time.monotonic() > deadline:
                raise ParallelError(f"training helpers did not start within {START_TIMEOUT_S:g} s") from None
            continue
        if error:
            raise ParallelError(f"training helper {rank} could not start: {error}")
        waiting.discard(rank)


@contextmanager
def stop_flag() -> Iterator[threading.Event]:
    """SIGTERM and Ctrl-C set an event instead of raising, so every rank finishes the step it is in and
    the group stops together (main thread only; elsewhere the event is never set)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(_signum: int, _frame: Any) -> None:
        event.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _modules(payload: dict[str, Any]) -> list[torch.nn.Module]:
    """The modules a payload holds: its values, and their attributes (an objective's teacher or head)."""
    found = []
    for value in payload.values():
        inner = [] if isinstance(value, torch.nn.Module) else list(getattr(value, "__dict__", {}).values())
        found += [v for v in [value, *inner] if isinstance(v, torch.nn.Module)]
    return found


def _portable(modules: list[torch.nn.Module]) -> None:
    """Drop transformers' output-capturing hooks (local functions: they cannot be pickled) and the flag
    that says they are installed; a model installs them again at its next forward pass."""
    for top in modules:
        for module in top.modules():
            for key, hook in list(module._forward_hooks.items()):
                if "output_capturing_hook" in getattr(hook, "__qualname__", ""):
                    del module._forward_hooks[key]
                    module._forward_hooks_with_kwargs.pop(key, None)
                    module._forward_hooks_always_called.pop(key, None)
            module.__dict__.pop("_output_capturing_hooks_installed", None)


def _register(modules: list[torch.nn.Module]) -> None:
    """Give a fresh process transformers' registry of what each model class can record (attentions,
    hidden states), which a model fills only when it is built, not when it is unpickled."""
    from transformers import PreTrainedModel
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    for top in modules:
        for module in top.modules():
            if isinstance(module, PreTrainedModel):
                _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


def _watch_parent(parent: int) -> None:
    """A helper ends itself when rank 0's process is gone (killed without a chance to stop it)."""
    while os.getppid() == parent:
        time.sleep(2.0)
    os._exit(1)


def _helper_main(
    rank: int,
    world: int,
    port: int,
    threads: int,
    parent: int,
    blob: bytes,
    ready: Any,
    entry: Callable[[dict[str, Any], Group], None],
) -> None:
    """A helper rank: load the copied state, join the group, run ``entry`` (its slice of every batch)."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    try:
        payload = torch.load(io.BytesIO(blob), weights_only=False)
        _register(_modules(payload))
    except Exception as exc:  # reported to rank 0, which raises it
        ready.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    ready.put((rank, None))
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=TIMEOUT
        )
        entry(payload, Group(rank=rank, world=world))
    except BaseException:
        # Leave at once: the closed connection fails rank 0's next exchange, which then reports it (a
        # clean shutdown could wait on the group for the whole timeout).
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    dist.destroy_process_group()
    # Leave without the interpreter's teardown, as on failure: a helper has nothing left to save, and at a
    # stop its C++ static destructors were seen to abort ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
