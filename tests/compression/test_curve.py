import json

import pytest

from donut_hole.compression.curve import _interpolate, cpu_axis, plot_curve, read_history


def test_read_history_keeps_the_last_line_per_step(tmp_path):
    path = tmp_path / "history.jsonl"
    rows = [{"step": 2, "f1": 0.1}, {"step": 1, "f1": 0.0}, {"step": 2, "f1": 0.2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_history(path) == [{"step": 1, "f1": 0.0}, {"step": 2, "f1": 0.2}]


def test_plot_curve_writes_a_png(tmp_path):
    path = tmp_path / "history.jsonl"
    rows = [
        {
            "step": s,
            "images": 16 * s,
            "cpu_hours": s / 100,
            "f1": s / 10,
            "ted_accuracy": s / 9,
            "cer_easy": 1 / s,
        }
        for s in range(1, 5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_curve(path, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no evaluation"):
        plot_curve(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_the_cpu_hours_axis_starts_at_zero_images():
    seen, hours = cpu_axis([8000, 16000], [0.5, 1.0])
    assert (seen[0], hours[0]) == (0, 0.0)
    # a tick at 0.25 CPU-hours lands halfway to the first evaluation, not on it
    assert _interpolate(0.25, hours, seen) == 4000
