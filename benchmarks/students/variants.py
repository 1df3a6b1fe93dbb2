"""The variants the benchmark compares, built from one teacher as ``donut-hole compress`` builds students.

The recommended student (``structured``) comes from :func:`~donut_hole.compression.student.build_student`,
the function ``compress`` uses; the other variants show what each step alone gives (fewer layers, zeros
in the teacher's shapes, int8, bfloat16, 2:4). Also here: the weight counts and sizes each variant reports,
and the check that one set of weights serves every input size.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn

from benchmarks.students import BenchmarkError, Donut, short_error
from donut_hole.compression.prune import (
    apply_semi_structured_,
    density_report,
    magnitude_prune_,
    prunable_weights,
)
from donut_hole.compression.recipe import CompressRecipe
from donut_hole.compression.student import build_student, derive_student
from donut_hole.compression.vocab import prune_model_vocabulary_, tokens_to_keep
from donut_hole.model.build import count_parameters

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
            report[f"{backend}_error"] = short_error(exc)
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
            report["dense"][names[id(linear)]] = f"{tuple(dense.shape)}: {short_error(exc)}"
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

    ``structured`` is :func:`~donut_hole.compression.student.build_student`'s student, magnitude-pruned
    in one shot; ``vocabulary`` (kept rows, a note) applies the recipe's ``prune.vocabulary`` step to it."""
    spec, prune = recipe.student, recipe.prune
    layers, _ = derive_student(teacher, spec)  # the layer step of build_student alone
    student = build_student(teacher, recipe)  # the student `donut-hole compress` builds
    structured, own = student.model, student.density
    ffn = student.structure.get("ffn_pruning", {})
    if vocabulary is not None:
        prune_model_vocabulary_(structured, vocabulary[0])
    magnitude_prune_(structured, density=own, scope=prune.scope)  # as compress does without training
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
                out.append(Variant(name, skipped=f"quantize_dynamic failed: {short_error(exc)}"))
                continue
        elif name == "teacher-bf16":
            model = copy.deepcopy(teacher).to(torch.bfloat16)  # type: ignore[arg-type]  # .to() typed as decorated
        elif name == "bf16":
            model = copy.deepcopy(structured).to(torch.bfloat16)  # type: ignore[arg-type]  # .to() typed as decorated
        else:  # 2:4, following the recipe's `semi_structured` step: after magnitude pruning
            model = copy.deepcopy(structured).to(torch.bfloat16)  # type: ignore[arg-type]  # .to() typed as decorated
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
