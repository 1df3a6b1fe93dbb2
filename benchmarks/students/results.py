"""From timed passes to results: medians and speed-ups, the targets, and the markdown tables."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.students import Errors, Samples
from benchmarks.students.passes import percentile
from benchmarks.students.schedule import Config
from benchmarks.students.variants import VARIANTS, Variant
from donut_hole.compression.recipe import CompressRecipe
from donut_hole.model.predict import describe_cpu

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
    """The targets for the recommended student, at every measured configuration: ≥ 2× the teacher's
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
    text = f"{describe_cpu()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return text + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
