"""The learning curve of a training run: held-out scores by images seen and CPU-hours, as a PNG.

``history.jsonl`` (one evaluation per line, written by the training loop) →
``plot_curve(run_dir / "history.jsonl", out_png)``: character error rate on held-out reading pages per level
and field F1 / nTED accuracy on held-out scans, against images seen (bottom axis) with CPU-hours on top;
``curve_table`` the same numbers as a markdown table, which ``write_curve_table`` keeps in a README between
``<!-- curve:start -->`` and ``<!-- curve:end -->``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_history(path: Path) -> list[dict[str, Any]]:
    """The evaluations of ``history.jsonl``, one per step (a step evaluated twice keeps its last line)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


TABLE_START, TABLE_END = "<!-- curve:start -->", "<!-- curve:end -->"
_COLUMNS = (
    ("f1", "field F1", "{:.3f}"),
    ("ted_accuracy", "nTED acc", "{:.3f}"),
    ("f1_shipping_label", "labels F1", "{:.3f}"),
    ("cer_document", "CER document", "{:.2f}"),
    ("cer_medium", "CER medium", "{:.2f}"),
    ("cer_easy", "CER easy", "{:.2f}"),
)


def curve_table(history_path: Path) -> str:
    """The held-out evaluations of ``history_path`` as a markdown table, one row per evaluation."""
    history = read_history(history_path)
    columns = [c for c in _COLUMNS if any(c[0] in h for h in history)]
    lines = [
        "| images | CPU-hours | " + " | ".join(label for _, label, _ in columns) + " |",
        "| ---: | ---: |" + " ---: |" * len(columns),
    ]
    for h in history:
        hours = h.get("cpu_hours")
        cells = [f"{h.get('images', 0):,}", "–" if hours is None else f"{hours:.2f}"]
        cells += ["–" if h.get(key) is None else form.format(h[key]) for key, _, form in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_curve_table(history_path: Path, readme: Path) -> None:
    """Replace the table between the curve markers of ``readme`` with :func:`curve_table`."""
    text = Path(readme).read_text(encoding="utf-8")
    head, start, rest = text.partition(TABLE_START)
    _old, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"{readme} has no {TABLE_START} ... {TABLE_END} section")
    table = curve_table(history_path)
    Path(readme).write_text(f"{head}{TABLE_START}\n{table}{TABLE_END}{tail}", encoding="utf-8")


def plot_curve(history_path: Path, out: Path, *, title: str = "learning curve") -> Path:
    """Write the curve of ``history_path`` to ``out`` (PNG) and return ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    history = read_history(history_path)
    if not history:
        raise ValueError(f"{history_path} holds no evaluation yet")
    images = [h.get("images", 0) for h in history]
    levels = sorted({k for h in history for k in h if k.startswith("cer_")})
    if levels:  # a run that also read reading pages (a teacher's): their CER on the left
        fig, (reading, fields) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        axes = [reading, fields]
    else:  # a student's distillation: the scans alone
        fig, fields = plt.subplots(1, 1, figsize=(5.5, 3.8), constrained_layout=True)
        axes = [fields]
    for key in levels:
        # CER above 1 (more characters written than printed) is drawn at 1
        points = [(x, min(1.0, h[key])) for x, h in zip(images, history, strict=True) if key in h]
        reading.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("cer_"))
    if levels:
        reading.set(xlabel="images seen", ylabel="CER, held-out reading pages (capped at 1)", ylim=(0, 1.05))
        reading.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        reading.legend(title="level")
    for key, label in (
        ("f1", "field F1"),
        ("ted_accuracy", "nTED accuracy"),
        ("f1_shipping_label", "field F1, shipping labels"),
    ):
        points = [(x, h[key]) for x, h in zip(images, history, strict=True) if key in h]
        if points:
            fields.plot(*zip(*points, strict=True), marker=".", label=label)
    fields.set(xlabel="images seen", ylabel="held-out scans", ylim=(0, 1))
    fields.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    fields.legend()
    for axis in axes:  # 150k, not 150000: long tick labels run into each other
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / 1000:g}k"))
    if all(h.get("cpu_hours") is not None for h in history) and images[-1] > images[0]:
        seen, hours = cpu_axis(images, [float(h["cpu_hours"]) for h in history])
        for axis in axes:
            top = axis.secondary_xaxis(
                "top",
                functions=(
                    lambda x: _interpolate(x, seen, hours),  # type: ignore[arg-type]
                    lambda c: _interpolate(c, hours, seen),  # type: ignore[arg-type]
                ),
            )
            top.set_xlabel("CPU-hours")
    fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cpu_axis(images: list[int], cpu_hours: list[float]) -> tuple[list[int], list[float]]:
    """The points that map images seen to CPU-hours, from (0, 0): every run starts there, and without that
    point the ticks below the first evaluation would all be drawn on it."""
    return [0, *images], [0.0, *cpu_hours]


def _interpolate(x: Any, xs: list[float], ys: list[float]) -> Any:
    """``ys`` at ``x`` between the points, on the last segment's slope past the last one (so that a tick
    beyond the data falls off the axis, rather than onto its end)."""
    import numpy as np

    inside = np.interp(x, xs, ys)
    if len(xs) < 2 or xs[-1] == xs[-2]:
        return inside
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return np.where(np.asarray(x) > xs[-1], ys[-1] + (np.asarray(x) - xs[-1]) * slope, inside)
