"""Teacher vs student, side by side on the same validation set: ``report.json``, ``report.md`` and plots.

Every figure is measured in the run that writes the report: parameters, density (over prunable weights
and over all parameters, relative to the teacher), file size, field F1, nTED accuracy, per-field exact
match, CKA (per layer pair and global), latency per document (CPU, and GPU when present).
:class:`CompressReport` holds them; ``report.json`` is its :meth:`~CompressReport.to_dict`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.compression.batches import DonutDataset, collate
from donut_hole.compression.cka import cka_matrix, global_cka, pool_tokens
from donut_hole.compression.distill import shift_for_decoder
from donut_hole.compression.student import resize_pixels
from donut_hole.evaluation.dataset import Sample
from donut_hole.model.build import task_token_of
from donut_hole.model.predict import DonutReader


@dataclass
class ModelSide:
    """One model of the comparison: size, density (``prune.density_report``), accuracy, latency."""

    parameters: int
    density: dict[str, Any]
    file_bytes: int
    eval: dict[str, Any]  # EvalResult.to_dict(): f1, ted_accuracy, field_exact_match, n
    latency: dict[str, float]


@dataclass
class CompressReport:
    """What ``donut-hole compress`` measured; ``report.json`` is :meth:`to_dict`, ``report.md`` renders it."""

    name: str
    created_at: str
    machine: str
    latency_device: str
    teacher_path: str
    student_path: str
    val_dir: str
    recipe: dict[str, Any]
    teacher: ModelSide
    student: ModelSide
    cka: dict[str, Any]
    history: list[dict[str, Any]]
    student_structure: dict[str, Any]
    target_density: float
    plots: dict[str, str] = field(default_factory=dict)  # title -> PNG file name, once written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def comparison(self) -> str:
        """The title and the side-by-side table of teacher and student (the head of ``report.md``)."""
        t, s = self.teacher, self.student
        rows = [
            ("parameters", t.parameters, s.parameters),
            ("nonzero parameters", t.density["all_nonzero"], s.density["all_nonzero"]),
            ("density, prunable weights (vs teacher)", 1.0, s.density["prunable_density_vs_teacher"]),
            (
                "density, all parameters (vs teacher)",
                t.density["all_density"],
                s.density["all_density_vs_teacher"],
            ),
            ("weights file (MB)", t.file_bytes / 1e6, s.file_bytes / 1e6),
            ("field F1", t.eval["f1"], s.eval["f1"]),
            ("nTED accuracy", t.eval["ted_accuracy"], s.eval["ted_accuracy"]),
        ]
        for key in t.latency:
            rows.append((f"{key} ({self.latency_device})", t.latency[key], s.latency.get(key)))
        lines = [
            f"# DONUT-hole compression report: {self.name}",
            "",
            f"Teacher `{self.teacher_path}` → student `{self.student_path}`, measured on "
            f"{t.eval['n']} validation documents of `{self.val_dir}` in one run "
            f"({self.created_at}, {self.machine}).",
            "",
            "| | teacher | DONUT-hole student | student / teacher |",
            "|---|---:|---:|---:|",
        ]
        for name, tv, sv in rows:
            ratio = sv / tv if isinstance(tv, int | float) and isinstance(sv, int | float) and tv else None
            lines.append(f"| {name} | {_fmt(tv)} | {_fmt(sv)} | {_fmt(ratio, '.3f')} |")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the student's density against the target, global CKA, F1 from teacher to student."""
        return (
            f"student density {self.student.density['prunable_density_vs_teacher']:.4f} of the teacher's "
            f"prunable weights (target {self.target_density}), global CKA {self.cka['global']:.4f}, "
            f"F1 {self.teacher.eval['f1']:.4f} → {self.student.eval['f1']:.4f}"
        )


def folder_size(path: Path) -> int:
    """Bytes of the weight files (safetensors / bin) in a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*") if f.suffix in (".safetensors", ".bin"))


@torch.inference_mode()
def layer_features(
    model: VisionEncoderDecoderModel,
    items: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    token_map: torch.Tensor | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pooled (N, D) features of every Swin stage output and decoder layer output, teacher-forced on the
    ground-truth sequences of ``items`` (:class:`DonutDataset` pairs): encoder tokens are mean-pooled over
    the image, decoder tokens over the valid (non-pad) positions. Index ``i`` of each list is hidden-state
    index ``i + 1`` (0 = embeddings, left out). ``token_map`` (old id → model id) feeds a model whose
    vocabulary was pruned the same sequences; ``image_size`` resizes the images for a model that reads
    smaller ones (:func:`~donut_hole.compression.student.resize_pixels`).
    """
    device = next(model.parameters()).device
    enc: list[list[torch.Tensor]] = []
    dec: list[list[torch.Tensor]] = []
    for start in range(0, len(items), batch_size):
        batch = collate(list(items[start : start + batch_size]), pad_token_id=pad_token_id)
        decoder_input_ids, _ = shift_for_decoder(batch["input_ids"], pad_token_id=pad_token_id)
        model_ids = decoder_input_ids if token_map is None else token_map[decoder_input_ids]
        pixels = (
            batch["pixel_values"] if image_size is None else resize_pixels(batch["pixel_values"], image_size)
        )
        out = model(
            pixel_values=pixels.to(device, dtype=model.dtype),
            decoder_input_ids=model_ids.to(device),
            output_hidden_states=True,
        )
        mask = (decoder_input_ids != pad_token_id).to(device)  # (B, T)
        if not enc:
            enc = [[] for _ in out.encoder_hidden_states[1:]]
            dec = [[] for _ in out.decoder_hidden_states[1:]]
        for i, h in enumerate(out.encoder_hidden_states[1:]):
            enc[i].append(pool_tokens(h.float()).cpu())  # (B, C_stage)
        for i, h in enumerate(out.decoder_hidden_states[1:]):
            dec[i].append(pool_tokens(h.float(), mask).cpu())  # (B, d_model)
    return [torch.cat(x).numpy() for x in enc], [torch.cat(x).numpy() for x in dec]


def cka_analysis(
    teacher: VisionEncoderDecoderModel,
    student: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    samples: Sequence[Sample],
    *,
    pairs: dict[str, list[tuple[int, int]]],
    batch_size: int = 8,
    max_length: int = 256,
    student_token_map: torch.Tensor | None = None,
    student_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The teacher×student linear-CKA matrix over all layers (encoder stages, then decoder layers) and the
    global CKA index: the mean CKA over the mapped pairs (``LayerMap.hidden_pairs()``). ``processor`` is the
    teacher's; ``student_token_map`` renumbers its token ids for a student with a pruned vocabulary, and
    ``student_size`` (height, width) resizes the images for a student that reads smaller ones (encoder
    token maps are mean-pooled, so the two sides' maps need not have the same number of tokens)."""
    # no longer than the decoders' learned positions (a published cord-v2 has 768)
    positions = [getattr(m.config.decoder, "max_position_embeddings", None) for m in (teacher, student)]
    max_length = min([max_length, *(int(p) for p in positions if p)])
    dataset = DonutDataset(
        samples, processor, task_token=task_token_of(teacher, processor), max_length=max_length
    )
    items = [dataset[i] for i in range(len(dataset))]  # decoded once, fed to both models
    pad = processor.tokenizer.pad_token_id
    t_enc, t_dec = layer_features(teacher, items, pad_token_id=pad, batch_size=batch_size)
    s_enc, s_dec = layer_features(
        student,
        items,
        pad_token_id=pad,
        batch_size=batch_size,
        token_map=student_token_map,
        image_size=student_size,
    )
    matrix = cka_matrix(t_enc + t_dec, s_enc + s_dec)
    mapped = [(t - 1, s - 1) for t, s in pairs["encoder"]]
    mapped += [(len(t_enc) + t - 1, len(s_enc) + s - 1) for t, s in pairs["decoder"]]
    names_t = [f"enc.stage{i}" for i in range(len(t_enc))] + [f"dec.layer{i}" for i in range(len(t_dec))]
    names_s = [f"enc.stage{i}" for i in range(len(s_enc))] + [f"dec.layer{i}" for i in range(len(s_dec))]
    return {
        "global": global_cka(matrix, mapped),
        "global_encoder": global_cka(matrix, mapped[: len(pairs["encoder"])]),
        "global_decoder": global_cka(matrix, mapped[len(pairs["encoder"]) :]),
        "matrix": matrix.tolist(),
        "teacher_layers": names_t,
        "student_layers": names_s,
        "pairs": [(names_t[t], names_s[s], float(matrix[t, s])) for t, s in mapped],
        "samples": len(samples),
        "definition": "mean linear CKA (Kornblith et al. 2019) over the mapped teacher/student layer pairs; "
        "token maps mean-pooled per example",
    }


def measure_latency(
    readers: Mapping[str, DonutReader], samples: Sequence[Sample], *, repeats: int, batch_size: int
) -> dict[str, dict[str, float]]:
    """Milliseconds per document of each reader (by name) at batch 1 (p50, p95) and at ``batch_size``
    (p50), side by side: every image is read by each reader in turn, the order reversed on every other
    repeat, so a change in the machine's load while it runs falls on all of them alike. Images are decoded
    once, beforehand, by each reader for its own input size.
    """
    images = {name: [reader.load(s.image_path) for s in samples] for name, reader in readers.items()}
    for name, reader in readers.items():
        reader.predict_detailed(images[name][:1], batch_size=1)  # warm-up
    single: dict[str, list[float]] = {name: [] for name in readers}
    batched: dict[str, list[float]] = {name: [] for name in readers}
    names = list(readers)
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for index in range(len(samples)):
            for name in order:
                t0 = time.perf_counter()
                readers[name].predict_detailed([images[name][index]], batch_size=1)
                single[name].append(time.perf_counter() - t0)
        for name in order if batch_size > 1 else ():
            t0 = time.perf_counter()
            readers[name].predict_detailed(images[name], batch_size=batch_size)
            batched[name].append((time.perf_counter() - t0) / len(samples))
    # p50 and p95 of the same batch-1 samples, by the same method; the batched figure only when it is
    # another batch size (at batch 1 its key used to overwrite the p50 with a mean of whole passes).
    latency: dict[str, dict[str, float]] = {}
    for name in names:
        latency[name] = {
            "ms_per_doc_batch1_p50": 1000 * float(np.percentile(single[name], 50)),
            "ms_per_doc_batch1_p95": 1000 * float(np.percentile(single[name], 95)),
        }
        if batch_size > 1:
            latency[name][f"ms_per_doc_batch{batch_size}_p50"] = 1000 * statistics.median(batched[name])
    return latency


def write_report(report: CompressReport, out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` (everything) and ``report.md`` (the side-by-side tables), plus the PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots = write_plots(report, out_dir)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(report: CompressReport) -> str:
    t, s, cka = report.teacher, report.student, report.cka
    lines = [
        report.comparison(),
        "",
        f"**Global CKA** {cka['global']:.4f} (encoder {cka['global_encoder']:.4f}, decoder "
        f"{cka['global_decoder']:.4f}) over {cka['samples']} documents: {cka['definition']}.",
        "",
        "| teacher layer | student layer | linear CKA |",
        "|---|---|---:|",
        *[f"| {a} | {b} | {v:.4f} |" for a, b, v in cka["pairs"]],
        "",
        "## Per-field exact match",
        "",
        "| field | teacher | student |",
        "|---|---:|---:|",
    ]
    t_match, s_match = t.eval["field_exact_match"], s.eval["field_exact_match"]
    fields = sorted(set(t_match) | set(s_match))
    lines += [f"| {f} | {_fmt(t_match.get(f))} | {_fmt(s_match.get(f))} |" for f in fields]
    lines += ["", "## Student", "", "```json", json.dumps(report.student_structure, indent=2), "```", ""]
    for title, file in report.plots.items():
        lines += [f"![{title}]({file})", ""]
    return "\n".join(lines)


def write_plots(report: CompressReport, out_dir: Path) -> dict[str, str]:
    """CKA heatmap, density per layer, accuracy vs density over the pruning schedule (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, str] = {}
    cka = report.cka
    fig, ax = plt.subplots(
        figsize=(1 + 0.6 * len(cka["student_layers"]), 1 + 0.45 * len(cka["teacher_layers"]))
    )
    image = ax.imshow(np.array(cka["matrix"]), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(
        range(len(cka["student_layers"])), cka["student_layers"], rotation=60, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(cka["teacher_layers"])), cka["teacher_layers"], fontsize=7)
    ax.set_xlabel("student")
    ax.set_ylabel("teacher")
    ax.set_title(f"linear CKA (global {cka['global']:.3f})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(out_dir / "cka_heatmap.png", dpi=110)
    plt.close(fig)
    written["CKA heatmap"] = "cka_heatmap.png"

    layers = report.student.density["layers"]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(range(len(layers)), list(layers.values()), color="tab:blue")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("density")
    ax.set_xlabel(f"prunable layer (0..{len(layers) - 1}: encoder stages, then decoder)")
    ax.set_title("student density per layer (nonzero / weights)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "density_per_layer.png", dpi=110)
    plt.close(fig)
    written["density per layer"] = "density_per_layer.png"

    history = [h for h in report.history if h.get("density") is not None and "f1" in h]
    if history:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        dens = [h["density"] for h in history]
        ax.plot(dens, [h["f1"] for h in history], "o-", label="field F1")
        ax.plot(dens, [h["ted_accuracy"] for h in history], "s--", label="nTED accuracy")
        for h in history:
            ax.annotate(str(h["step"]), (h["density"], h["f1"]), fontsize=6)
        ax.invert_xaxis()
        ax.set_xlabel("density vs teacher (prunable weights)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        ax.set_title("accuracy over the pruning schedule (labels: step)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy_vs_density.png", dpi=110)
        plt.close(fig)
        written["accuracy vs density"] = "accuracy_vs_density.png"
    return written
