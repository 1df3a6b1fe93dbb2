"""Teacher vs DONUT-hole students, side by side in one run: speed, memory, parameters and density.

    .venv/bin/python benchmarks/models.py --device cpu            # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/models.py --device cuda           # about 4-5 minutes on one H200
    .venv/bin/python benchmarks/models.py --quick --preset tiny   # smoke run, seconds

All variants come from one randomly initialised teacher in the published donut-base layout (random weights
are fine for speed) and run on the same DONUT-preprocessed synthetic scans. A pass is one batch: the Swin
encoder, then greedy generation with a KV cache of exactly ``--new-tokens`` tokens per document (EOS is
suppressed until then, so a random decoder does the work a trained one does). Variants are interleaved and
their order rotates every repeat, so load from other processes falls on all of them alike; medians over
repeats, after a warm-up.

Plan: each variant's warm-up pass at the cheapest configuration gives its encoder seconds per pixel and its
generation seconds per token, hence an estimate of every configuration's cost (on CUDA, each configuration's
own warm-up refines it). Configurations run cheapest first; each gets one round (one pass per variant) if it
fits in what is left of ``--budget-s`` (otherwise it is listed as not measured), more from a fair share of
what remains after reserving a round for every later configuration that fits, and what is left at the end
buys more rounds, cheapest first, up to ``--repeats``. ``--budget-s 0`` runs everything ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from donut_hole.compression.compress import unstructured_density  # noqa: E402
from donut_hole.compression.prune import (  # noqa: E402
    MagnitudePruner,
    Scope,
    apply_semi_structured_,
    density_report,
    prunable_weights,
    prune_ffn_,
)
from donut_hole.compression.recipe import CompressRecipe, load_recipe  # noqa: E402
from donut_hole.compression.student import StudentSpec, derive_student  # noqa: E402
from donut_hole.compression.train import target_texts  # noqa: E402
from donut_hole.compression.vocab import prune_model_vocabulary_, tokens_to_keep  # noqa: E402
from donut_hole.documents.synth import sample_scan  # noqa: E402
from donut_hole.model.build import PRESETS, count_parameters, make_processor, new_model  # noqa: E402

log = logging.getLogger("benchmarks.models")
Donut = Any  # a VisionEncoderDecoderModel, possibly quantised or with 2:4 weights (no useful static type)
Samples = dict[tuple[str, str], list[dict[str, Any]]]  # (variant, config key) -> one dict per timed pass
Errors = dict[tuple[str, str], str]

# name: (device it runs on, the variant it is best compared with, what it is)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "teacher": ("any", "", "donut-base layout, fp32: the reference"),
    "layers": ("any", "teacher", "student with fewer Swin blocks and decoder layers only"),
    "structured": (
        "any",
        "teacher",
        "recommended DONUT-hole: layers + FFN neurons removed + magnitude pruning",
    ),
    "unstructured": ("any", "teacher", "teacher architecture magnitude-pruned to the same density"),
    "int8": ("cpu", "structured", "structured + dynamic int8 quantisation of every Linear"),
    "teacher-bf16": ("cuda", "teacher", "teacher in bfloat16 (the reference for bf16 and 2:4)"),
    "bf16": ("cuda", "teacher-bf16", "structured in bfloat16"),
    "2:4": ("cuda", "bf16", "structured in bfloat16, 2:4-masked, weights as to_sparse_semi_structured"),
}
QUICK_RESOLUTIONS = {"tiny": "320x240,256x192", "donut-base": "640x480,448x384"}
KINDS = ("shipping_label", "bill_of_lading", "delivery_note")
NOTES = [
    "Unstructured zeros (`unstructured`, and the magnitude-pruned part of `structured`) give no speed-up on "
    "dense kernels: the weights keep their shapes and a GEMM multiplies stored zeros like any other number. "
    "Only removed blocks, layers and FFN neurons (smaller matrices) cut dense work; the zeros pay off in "
    "compressed storage or with sparse kernels.",
    "2:4 needs sparse tensor cores (NVIDIA Ampere or newer) and pays off only for large GEMMs: generation "
    "multiplies one token per document per step, where it is rarely faster.",
    "int8 dynamic quantisation quantises activations on the fly; it speeds up the Linear layers on CPU, "
    "not the attention matmuls, norms or the patch-embedding convolution.",
    "Latency per document = the wall time of its batch; docs/s = batch size / median batch time; CPU s = "
    "process CPU time of a pass (less sensitive to other processes than wall time).",
]


class BenchmarkError(RuntimeError):
    """A benchmark that cannot run as asked (bad flag, unusable resolution, wrong token count)."""


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


@dataclass
class Variant:
    name: str
    model: Donut | None = None
    info: dict[str, Any] = field(default_factory=dict)  # parameters, density, weights_mb, dtype, notes
    skipped: str | None = None

    @property
    def net(self) -> Donut:
        if self.model is None:
            raise BenchmarkError(f"variant {self.name} was not built: {self.skipped}")
        return self.model


# --- variants ---------------------------------------------------------------------------------------------


def density_fields(model: nn.Module, teacher: nn.Module) -> dict[str, Any]:
    """Parameters, nonzeros and densities (prunable weights and all parameters) relative to ``teacher``."""
    report = density_report(model, teacher=teacher)
    return {
        "parameters": count_parameters(model),
        "nonzero": report["all_nonzero"],
        "prunable_total": report["prunable_total"],
        "prunable_nonzero": report["prunable_nonzero"],
        "density_prunable_vs_teacher": report["prunable_density_vs_teacher"],
        "density_all_vs_teacher": report["all_density_vs_teacher"],
        "density_prunable_own": report["prunable_density"],
    }


def weights_mb(model: nn.Module) -> float:
    """Memory the weights occupy: parameters and buffers, packed int8 weights, 2:4 values + metadata."""
    total = 0
    for tensor in chain(model.parameters(), model.buffers()):
        parts = [getattr(tensor, name, None) for name in ("packed", "meta", "packed_t", "meta_t")]
        if any(isinstance(p, torch.Tensor) for p in parts):  # SparseSemiStructuredTensor
            total += sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))
        else:
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):  # dynamically quantised Linear
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size() + (0 if bias is None else bias.nbytes)
    return total / 2**20


def magnitude_prune_(model: nn.Module, *, density: float, scope: Scope) -> None:
    """One-shot magnitude pruning of the prunable weights to ``density``, as ``compress --steps 0`` does."""
    if density < 1.0:
        pruner = MagnitudePruner(model, final_density=density, start_step=0, end_step=0, scope=scope)
        pruner.step(0)
        pruner.make_permanent_()


def quantize_int8(model: Donut) -> tuple[Donut, list[str]]:
    """``quantize_dynamic`` of every Linear (qint8) on a copy; notes say whether torch warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
        )
    deprecated = any(issubclass(w.category, DeprecationWarning) for w in caught)
    return quantized, [
        "parameters and density are those of the float model it quantises (structured)",
        f"torch.ao.quantization.quantize_dynamic works in torch {torch.__version__}"
        + (" (with a DeprecationWarning pointing to torchao)" if deprecated else ""),
    ]


def semi_structured_(model: nn.Module) -> dict[str, Any]:
    """Swap every prunable Linear weight (already 2:4-masked) for ``to_sparse_semi_structured`` (CUDA only).

    Tries cuSPARSELt (PyTorch's default), then CUTLASS, on the first layer (conversion and one matmul).
    Each converted layer is checked against its dense weight on a random input; layers a backend refuses
    (shape, dtype) stay dense and are listed with the error.
    """
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    def convert(dense: torch.Tensor) -> tuple[torch.Tensor, float]:
        sparse = to_sparse_semi_structured(dense)
        x = torch.randn(16, dense.shape[1], device=dense.device, dtype=dense.dtype)  # (16, in)
        error = (nn.functional.linear(x, sparse) - nn.functional.linear(x, dense)).abs().max().item()
        return sparse, error

    modules = dict(model.named_modules())
    linears = [modules[name.removesuffix(".weight")] for name in prunable_weights(model)]
    names = {id(m): n for n, m in modules.items()}
    report: dict[str, Any] = {"backend": None, "converted": 0, "dense": {}, "max_abs_error": 0.0}
    for backend in ("cusparselt", "cutlass"):
        SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
        try:
            convert(linears[0].weight.detach().contiguous())
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            report[f"{backend}_error"] = _short(exc)
            continue
        report["backend"] = backend
        break
    if report["backend"] is None:
        return report
    for linear in linears:
        dense = linear.weight.detach().contiguous()
        try:
            sparse, error = convert(dense)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            report["dense"][names[id(linear)]] = f"{tuple(dense.shape)}: {_short(exc)}"
            continue
        report["max_abs_error"] = max(report["max_abs_error"], error)
        linear.weight = nn.Parameter(sparse, requires_grad=False)
        # the sparse linear views its input as 2-D, which needs a contiguous input
        linear.register_forward_pre_hook(lambda _module, args: tuple(a.contiguous() for a in args))
        report["converted"] += 1
    return report


def benchmark_vocabulary(
    tokenizer: Any, corpus: list[str], *, rows: int, total: int
) -> tuple[list[int], int]:
    """Rows a vocabulary-pruned student keeps: the tokens ``corpus`` uses, then filler rows up to ``rows``.

    The benchmark's teacher has donut-base's 57,525 embedding rows but a small tokenizer made from the
    scans, so the tokens it really uses are a few hundred. A donut-base student keeps the sentencepiece
    pieces a logistics training set uses, which cannot be counted here without the published tokenizer;
    ``rows`` stands in for that number (the lowest unused ids fill the gap). Returns (kept ids, used).
    """
    used = tokens_to_keep(tokenizer, corpus)
    kept = set(used)
    filler = (i for i in range(total) if i not in kept)
    while len(kept) < min(rows, total):
        kept.add(next(filler))
    return sorted(kept), len(used)


def build_variants(
    teacher: Donut,
    recipe: CompressRecipe,
    *,
    device: torch.device,
    names: list[str],
    vocabulary: tuple[list[int], str] | None = None,
) -> list[Variant]:
    """The variants in ``names``, built as the recipe says; those for another device come back skipped.

    ``vocabulary`` (kept rows, a note) applies the recipe's ``prune.vocabulary`` step to ``structured``."""
    spec = StudentSpec(
        encoder_depths=recipe.student.encoder_depths,
        decoder_layers=recipe.student.decoder_layers,
        selection=recipe.student.selection,
    )
    prune = recipe.prune
    layers, _ = derive_student(teacher, spec)
    structured = copy.deepcopy(layers)
    ffn = prune_ffn_(structured, keep_ratio=prune.ffn_keep_ratio) if prune.ffn_keep_ratio < 1 else {}
    if vocabulary is not None:
        prune_model_vocabulary_(structured, vocabulary[0])
    own = unstructured_density(
        target=prune.target_density,
        teacher_prunable=sum(w.numel() for w in prunable_weights(teacher).values()),
        student_prunable=sum(w.numel() for w in prunable_weights(structured).values()),
    )
    magnitude_prune_(structured, density=own, scope=prune.scope)
    layer_note = f"Swin depths {spec.encoder_depths}, {spec.decoder_layers} decoder layers ({spec.selection})"
    structured_notes = [
        layer_note,
        f"FFN keep ratio {prune.ffn_keep_ratio}: Swin FFN widths {ffn.get('encoder_ffn_dims')}, "
        f"decoder {ffn.get('decoder_ffn_dim')}",
        f"then magnitude-pruned ({prune.scope}) to {own:.3f} of its own prunable weights = "
        f"{prune.target_density} of the teacher's"
        if own < 1
        else f"no magnitude pruning: structure alone is at or below {prune.target_density} of the "
        "teacher's prunable weights",
    ]
    if vocabulary is not None:
        structured_notes.append(vocabulary[1])
    out = []
    for name in names:
        where = VARIANTS[name][0]
        if where not in ("any", device.type):
            out.append(Variant(name, skipped=f"runs on {where} only"))
            continue
        notes: list[str] = []
        if name == "teacher":
            model = teacher
        elif name == "layers":
            model, notes = layers, [layer_note]
        elif name == "structured":
            model, notes = structured, structured_notes
        elif name == "unstructured":
            model = copy.deepcopy(teacher)
            magnitude_prune_(model, density=prune.target_density, scope=prune.scope)
        elif name == "int8":
            try:
                model, notes = quantize_int8(structured)
            except (RuntimeError, AttributeError, NotImplementedError) as exc:
                out.append(Variant(name, skipped=f"quantize_dynamic failed: {_short(exc)}"))
                continue
        elif name == "teacher-bf16":
            model = copy.deepcopy(teacher).to(torch.bfloat16)
        elif name == "bf16":
            model = copy.deepcopy(structured).to(torch.bfloat16)
        else:  # 2:4, following the recipe's `semi_structured` step: after magnitude pruning
            model = copy.deepcopy(structured).to(torch.bfloat16)
            apply_semi_structured_(model)
        info = density_fields(structured if name == "int8" else model, teacher)
        if name == "2:4":
            conversion = semi_structured_(model)
            info["semi_structured"] = conversion
            if conversion["backend"] is None:
                errors = (
                    f"cuSPARSELt: {conversion['cusparselt_error']}; CUTLASS: {conversion['cutlass_error']}"
                )
                out.append(Variant(name, info=info, skipped=f"to_sparse_semi_structured failed ({errors})"))
                continue
            notes = [
                f"{conversion['converted']} Linear weights 2:4 via {conversion['backend']}, "
                f"{len(conversion['dense'])} left dense; max |sparse - dense| on a random input "
                f"{conversion['max_abs_error']:.2e}"
            ]
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        dtype = "qint8 Linear, float32 rest" if name == "int8" else dtype
        info.update(weights_mb=weights_mb(model), dtype=dtype, notes=notes)
        out.append(Variant(name, model=model.eval(), info=info))
    return out


def check_resolutions(model: Donut, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    """One set of weights serves every input size: checked by building the model at each size on the meta
    device and comparing parameter and buffer shapes (Swin's relative position tables depend on the window
    size only; the patch embedding is a convolution).

    Also refuses sizes whose last Swin stage is not wider than the window: transformers then turns that
    block's window shift off for good, which would change every later run of the same model.
    """
    from transformers import VisionEncoderDecoderModel

    def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in chain(m.named_parameters(), m.named_buffers())}

    encoder = model.config.encoder
    stride = 4 * 2 ** (len(encoder.depths) - 1)
    reference, differences = shapes(model), {}
    for h, w in sizes:
        if min(h, w) // stride <= encoder.window_size:
            raise BenchmarkError(
                f"{h}x{w}: the last Swin stage is {min(h, w) // stride} patches wide, not more than the "
                f"window {encoder.window_size}; use a short side of at least "
                f"{stride * (encoder.window_size + 1)} pixels"
            )
        config = copy.deepcopy(model.config)
        config.encoder.image_size = [h, w]
        with torch.device("meta"):
            other = shapes(VisionEncoderDecoderModel(config=config))
        differ = sorted(k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k))
        if differ:
            differences[f"{h}x{w}"] = differ[:10]
    if differences:
        raise BenchmarkError(f"weight shapes differ between input sizes: {differences}")
    return {"identical_shapes": True, "checked": [f"{h}x{w}" for h, w in sizes]}


def set_image_size(model: Donut, size: tuple[int, int]) -> None:
    """Reconfigure for an input size: the config only, since the weights are the same at every size."""
    for config in {id(c): c for c in (model.config.encoder, model.encoder.config)}.values():
        config.image_size = list(size)


# --- measuring --------------------------------------------------------------------------------------------


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
    """What ``DonutReader.generate`` passes to ``generate``, plus ``min_new_tokens = max_new_tokens``."""
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


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"2560x1920,1280x960"`` → ``[(2560, 1920), (1280, 960)]``: height x width, as DONUT's configs."""
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError as exc:
            raise BenchmarkError(f"bad resolution {item!r}: use HEIGHTxWIDTH, e.g. 2560x1920") from exc
        sizes.append((h, w))
    return sizes


def scans(n: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """``n`` seeded synthetic scans (ground truths, images), cycling through the document kinds."""
    pairs = [sample_scan(KINDS[i % len(KINDS)], random.Random(i)) for i in range(n)]
    return [gt for gt, _ in pairs], [image for _, image in pairs]


@contextlib.contextmanager
def catch(errors: Errors, at: tuple[str, str], device: torch.device) -> Iterator[None]:
    """Record an out-of-memory or backend error of one variant at one configuration; the run goes on."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        errors[at] = _short(exc)
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
            v.model, v.skipped = None, f"warm-up failed: {_short(exc)}"
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


def summarise(
    variants: list[Variant],
    configs: list[Config],
    samples: Samples,
    errors: Errors,
) -> list[dict[str, Any]]:
    """Medians per variant and configuration; speed-ups against every other variant of the configuration."""
    rows = []
    for config in configs:
        block = []
        for v in variants:
            runs = samples.get((v.name, config.key), [])
            row: dict[str, Any] = {
                "variant": v.name,
                "config": config.key,
                "resolution": f"{config.size[0]}x{config.size[1]}",
                "batch_size": config.batch,
            }
            if not runs:
                if (v.name, config.key) in errors:
                    row.update(status="error", error=errors[(v.name, config.key)])
                    block.append(row)
                continue
            total = [r["encode_s"] + r["generate_s"] for r in runs]
            peaks = [r["peak_mb"] for r in runs if r["peak_mb"] is not None]
            median = statistics.median(total)
            row.update(
                status="ok",
                repeats=len(runs),
                encode_s=statistics.median(r["encode_s"] for r in runs),
                generate_s=statistics.median(r["generate_s"] for r in runs),
                total_s=median,
                cpu_s=statistics.median(r["cpu_s"] for r in runs),
                docs_per_s=config.batch / median,
                ms_per_doc=1000 * median / config.batch,
                latency_p50_ms=1000 * percentile(total, 50),
                latency_p95_ms=1000 * percentile(total, 95),
                activation_peak_mb=max(peaks) if peaks else None,
                peak_mb=max(peaks) + v.info["weights_mb"] if peaks else None,
                samples_s=[round(x, 4) for x in total],
            )
            block.append(row)
        ok = [row for row in block if row["status"] == "ok"]
        for row in ok:
            row["speedup"] = {o["variant"]: row["docs_per_s"] / o["docs_per_s"] for o in ok if o is not row}
            row["speedup_cpu_time"] = {o["variant"]: o["cpu_s"] / row["cpu_s"] for o in ok if o is not row}
        rows.extend(block)
    return rows


TARGET_PAIRS = (("structured", "teacher"), ("bf16", "teacher-bf16"))  # recommended student vs teacher


def targets(
    rows: list[dict[str, Any]], variants: list[Variant], recipe: CompressRecipe
) -> list[dict[str, Any]]:
    """The issue's targets for the recommended student, at every measured configuration: ≥ 2× the teacher's
    documents/second at equal batch size and dtype, with density ≤ the recipe's target over the teacher's
    prunable weights."""
    target = recipe.prune.target_density
    density: dict[str, float] = {v.name: v.info["density_prunable_vs_teacher"] for v in variants}
    out = []
    for student, teacher in TARGET_PAIRS:
        for row in rows:
            if row["variant"] == student and row["status"] == "ok":
                speedup = row["speedup"].get(teacher)
                out.append(
                    {
                        "config": row["config"],
                        "student": student,
                        "teacher": teacher,
                        "speedup": speedup,
                        "speedup_ok": bool(speedup is not None and speedup >= 2.0),
                        "density": density[student],
                        "target_density": target,
                        "density_ok": density[student] <= target + 1e-3,  # keep counts round half up
                    }
                )
    return out


# --- report -----------------------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 240 else text[:237] + "..."


def _f(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render_markdown(result: dict[str, Any]) -> str:
    """The side-by-side tables (models, then speed), the targets and the notes."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"# Teacher vs DONUT-hole students ({s['device']})",
        "",
        f"`{result['command']}`",
        "",
        f"{m['description']}. Load average {m['load_average_start']} at the start, "
        f"{m['load_average_end']} at the end: other processes may share the machine; variants run "
        "interleaved, so their ratios still compare like with like, while absolute times are upper bounds. "
        f"{result['created_at']}, {result['wall_s']:.0f} s"
        + ("" if result["complete"] else ", incomplete")
        + ".",
        "",
        "| variant | dtype | params (M) | nonzero (M) | density, prunable vs teacher "
        "| density, all vs teacher | weights MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in result["variants"].items():
        if v["status"] != "ok":
            lines.append(f"| {name} | skipped: {v['reason']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {v['dtype']} | {v['parameters'] / 1e6:.1f} | {v['nonzero'] / 1e6:.1f} "
            f"| {v['density_prunable_vs_teacher']:.3f} | {v['density_all_vs_teacher']:.3f} "
            f"| {v['weights_mb']:.0f} |"
        )
    lines += [
        "",
        f"A pass = one batch through the encoder + {s['new_tokens']} generated tokens per document. "
        "× = documents/second against the teacher, and against the variant's closest reference, in this "
        "run; × teacher, CPU s = the teacher's CPU seconds per pass over the variant's.",
        "",
        "| input | batch | variant | passes | encoder s | generate s | docs/s | latency p50 ms | p95 ms "
        "| CPU s | × teacher | × teacher, CPU s | × ref | peak MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        head = f"| {r['resolution']} | {r['batch_size']} | {r['variant']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['error']} |" + " |" * 10)
            continue
        ref = VARIANTS[r["variant"]][1]
        vs_ref = f"{r['speedup'][ref]:.2f} ({ref})" if ref in r["speedup"] else "–"
        lines.append(
            f"{head} {r['repeats']} | {r['encode_s']:.2f} | {r['generate_s']:.2f} | {r['docs_per_s']:.3f} | "
            f"{r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | {r['cpu_s']:.1f} | "
            f"{_f(r['speedup'].get('teacher'), '.2f')} | {_f(r['speedup_cpu_time'].get('teacher'), '.2f')} | "
            f"{vs_ref} | {_f(r['peak_mb'], '.0f')} |"
        )
    skipped = [p for p in result["plan"] if not p["repeats"]]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"{p['config']}: {p['reason']}" for p in skipped) + "."]
    if result["targets"]:
        lines += ["", "Targets for the recommended student (`structured`; on GPU also `bf16`):", ""]
    for t in result["targets"]:
        speed, dense = ("met" if t[k] else "not met" for k in ("speedup_ok", "density_ok"))
        lines.append(
            f"- {t['config']}, {t['student']}: {_f(t['speedup'], '.2f')}× the {t['teacher']}'s "
            f"documents/second (target ≥ 2: {speed}); density {t['density']:.3f} of the teacher's prunable "
            f"weights (target ≤ {t['target_density']}: {dense})"
        )
    lines += ["", "Notes:", "", *[f"- {note}" for note in result["notes"]]]
    for name, v in result["variants"].items():
        lines += [f"- {name}: {note}" for note in v.get("notes", [])]
    return "\n".join(lines) + "\n"


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    text = f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return text + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")


# --- main -------------------------------------------------------------------------------------------------


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default="donut-base", help="teacher layout")
    p.add_argument("--recipe", type=Path, help="compression recipe (default configs/<preset>.yaml)")
    p.add_argument("--resolutions", help="HEIGHTxWIDTH list (default 2560x1920,1280x960)")
    p.add_argument("--batch-sizes", help="default 1,8 on cpu; 1,8,64 on cuda")
    p.add_argument("--repeats", type=int, help="timed passes per configuration, at most (cpu 3, cuda 5)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per document (128)")
    p.add_argument("--warmup-tokens", type=int, help="tokens generated in warm-up passes (16)")
    p.add_argument("--budget-s", type=float, help="seconds for timed passes (cpu 540, cuda 200; 0: no limit)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (teacher needed)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--vocab-rows",
        type=int,
        default=16000,
        help="rows a vocabulary-pruned student keeps (recipe prune.vocabulary; default 16000)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run of this script")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/models-<device>.json)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    defaults: dict[str, Any] = {
        "resolutions": "2560x1920,1280x960",
        "batch_sizes": "1,8,64" if cuda else "1,8",
        "repeats": 5 if cuda else 3,
        "new_tokens": 128,
        "warmup_tokens": 16,
        "budget_s": 200.0 if cuda else 540.0,
    }
    if args.quick:
        defaults.update(
            resolutions=QUICK_RESOLUTIONS[args.preset],
            batch_sizes="1,2",
            repeats=1,
            new_tokens=4,
            warmup_tokens=2,
            budget_s=0.0,
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"models-{args.device}{suffix}.json"
    args.recipe = args.recipe or ROOT / "configs" / f"{args.preset}.yaml"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    began, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda, but torch.cuda.is_available() is false")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = parse_sizes(args.resolutions)
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    names = [n.strip() for n in args.variants.split(",")]
    if "teacher" not in names or not set(names) <= set(VARIANTS):
        raise BenchmarkError(f"--variants: name teacher and any of {list(VARIANTS)}; got {names}")
    recipe = load_recipe(args.recipe, CompressRecipe)
    memory = PeakMemory(device)

    docs, images = scans(min(8, max(batch_sizes)))
    teacher, processor = new_model(args.preset, documents=docs, image_size=sizes[0])
    shared = check_resolutions(teacher, sizes)
    log.info("building %s on %s", names, device)
    vocabulary = None
    if recipe.prune.vocabulary:
        total = teacher.config.decoder.vocab_size
        corpus = target_texts(docs, teacher, processor)
        kept, used = benchmark_vocabulary(processor.tokenizer, corpus, rows=args.vocab_rows, total=total)
        note = (
            f"vocabulary: {len(kept)} of {total} embedding/lm_head rows kept (recipe prune.vocabulary): the "
            f"{used} tokens the scans' targets use with this benchmark's small tokenizer, filled up to "
            f"--vocab-rows {args.vocab_rows}, a stand-in for the donut-base pieces a logistics training "
            "set uses"
        )
        vocabulary = (kept, note)
    variants = build_variants(teacher.to(device), recipe, device=device, names=names, vocabulary=vocabulary)
    inputs = {}  # size -> (max batch, 3, H, W): the same documents for every variant
    for size in sizes:
        values = make_processor(processor.tokenizer, size).image_processor(images, return_tensors="pt")
        values = values["pixel_values"]  # (n, 3, H, W)
        if tuple(values.shape[-2:]) != size:
            raise BenchmarkError(f"preprocessing gave {tuple(values.shape[-2:])}, not {size}")
        repeat = math.ceil(max(batch_sizes) / len(values))
        inputs[size] = values.repeat(repeat, 1, 1, 1)[: max(batch_sizes)].to(device)

    configs = [Config(size, b) for size in sizes for b in batch_sizes]
    cheapest = min(configs, key=lambda c: c.pixels)
    rates = warm_up(variants, cheapest, inputs=inputs, processor=processor, args=args, memory=memory)
    active = [v for v in variants if v.model is not None]
    # a generation step costs about the same at any batch on a GPU (launch-bound), grows slower than the
    # batch on a CPU; the encoder grows with the pixels
    growth = (lambda b: 1.0) if device.type == "cuda" else math.sqrt
    estimates = {
        c.key: sum(enc * c.pixels + tok * args.new_tokens * growth(c.batch) for enc, tok in rates.values())
        for c in configs
    }
    configs.sort(key=lambda c: estimates[c.key])
    header = {
        "benchmark": "models",
        "command": "python benchmarks/models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "device": args.device,
            "preset": args.preset,
            "recipe": str(args.recipe),
            "resolutions": [f"{h}x{w}" for h, w in sizes],
            "batch_sizes": batch_sizes,
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "warmup_tokens": args.warmup_tokens,
            "budget_s": args.budget_s,
            "warmup": "each configuration"
            if device.type == "cuda"
            else f"once per variant, at {cheapest.key}",
            "memory_method": memory.method,
            "target_density": recipe.prune.target_density,
            "vocab_rows": args.vocab_rows if recipe.prune.vocabulary else None,
        },
        "weights_shared_across_resolutions": shared,
        "variants": {
            v.name: {"status": "ok" if v.skipped is None else "skipped", "reason": v.skipped or "", **v.info}
            | {"what": VARIANTS[v.name][2]}
            for v in variants
        },
        "notes": NOTES,
    }

    def write(
        samples: Samples, errors: Errors, plan: list[dict[str, Any]], *, complete: bool
    ) -> dict[str, Any]:
        rows = summarise(active, configs, samples, errors)
        result = {
            **header,
            "complete": complete,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "description": machine_description(device),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "load_average_start": load_start,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            },
            "plan": plan,
            "results": rows,
            "targets": targets(rows, active, recipe),
            "wall_s": time.perf_counter() - began,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(render_markdown(result), encoding="utf-8")
        return result

    samples, errors, plan = measure(
        active,
        configs,
        inputs=inputs,
        processor=processor,
        estimates=estimates,
        args=args,
        memory=memory,
        progress=lambda samples, errors, plan: write(samples, errors, plan, complete=False),
    )
    result = write(samples, errors, plan, complete=True)
    print(render_markdown(result))
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return result


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
