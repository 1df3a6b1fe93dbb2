"""One timed pass of a variant: the encoder, then greedy generation of exactly N tokens per document.

Also the peak memory of a pass (:class:`PeakMemory`) and the percentile used for latencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.students import BenchmarkError, Donut


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one pass above what was resident just before it (all variants' weights included).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (Linux): writing ``5``
    to ``/proc/self/clear_refs`` resets the peak RSS (VmHWM) to the current RSS, so VmHWM after the pass
    minus VmRSS before it is the pass's peak, in one process, between interleaved variants. ``malloc_trim``
    first hands the heap that earlier passes freed back to the system, which would otherwise absorb this
    pass's allocations unseen (glibc's allocation settings stay as in production). ``None`` where neither
    works.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.base, self.libc = device, 0, None
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "none"
        if device.type == "cpu" and self._reset_hwm():
            self.method = "VmHWM - VmRSS with /proc/self/clear_refs"
            with contextlib.suppress(OSError, AttributeError):
                self.libc = ctypes.CDLL("libc.so.6")
                self.libc.malloc_trim(0)
                self.method += ", after malloc_trim(0)"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    @staticmethod
    def _status_bytes(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise BenchmarkError(f"/proc/self/status has no {key}")

    def start(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.method != "none":
            if self.libc is not None:
                self.libc.malloc_trim(0)
            self._reset_hwm()
            self.base = self._status_bytes("VmRSS")

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            sync(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if self.method == "none":
            return None
        return max(0, self._status_bytes("VmHWM") - self.base) / 2**20


def generate_kwargs(
    processor: Any, model: Donut, *, tokens: int, batch: int, device: torch.device
) -> dict[str, Any]:
    """The reader's greedy settings for ``generate``, plus ``min_new_tokens = max_new_tokens``."""
    tokenizer = processor.tokenizer
    start = torch.full((batch, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    return {
        "decoder_input_ids": start,  # (B, 1)
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
        "num_beams": 1,
        "use_cache": True,
        "pad_token_id": model.config.pad_token_id,  # the model's ids: vocabulary pruning renumbers them
        "eos_token_id": model.config.eos_token_id,
        "bad_words_ids": [[tokenizer.unk_token_id]],  # specials are the lowest ids, kept in place
        "return_dict_in_generate": True,
        "output_scores": True,
    }


def run_pass(
    model: Donut,
    pixels: torch.Tensor,
    kwargs: dict[str, Any],
    *,
    memory: PeakMemory,
    no_grad: bool = False,
) -> dict[str, Any]:
    """One batch: the encoder, then greedy generation; wall and CPU seconds, and the peak memory.

    ``inference_mode`` as ``DonutReader`` uses it; ``no_grad`` for weights that are tensor subclasses (2:4).
    """
    device = pixels.device
    memory.start()
    cpu0 = time.process_time()
    with torch.no_grad() if no_grad else torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        encoded = model.encoder(pixel_values=pixels)  # last_hidden_state (B, L, C)
        sync(device)
        t1 = time.perf_counter()
        out = model.generate(encoder_outputs=encoded, **kwargs)  # sequences (B, 1 + tokens)
        sync(device)
        t2 = time.perf_counter()
    cpu_s = time.process_time() - cpu0
    made = out.sequences.shape[1] - 1
    if made != kwargs["max_new_tokens"]:
        raise BenchmarkError(f"generated {made} tokens, not {kwargs['max_new_tokens']}")
    return {"encode_s": t1 - t0, "generate_s": t2 - t1, "cpu_s": cpu_s, "peak_mb": memory.stop()}


def percentile(values: list[float], q: float) -> float:
    """Linearly interpolated percentile, as ``numpy.percentile``.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 95)
    (2.5, 3.85)
    """
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
