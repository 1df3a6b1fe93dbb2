import json

import pytest
from PIL import Image

from donut_hole.compression.curve import (
    _interpolate,
    cpu_axis,
    curve_table,
    plot_curve,
    read_history,
    write_curve_table,
)


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
    # a student's distillation reads no reading pages: one panel, the scans, not an empty one beside it
    for row in rows:
        del row["cer_easy"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Image.open(out) as both, Image.open(plot_curve(path, tmp_path / "student.png")) as scans_only:
        assert scans_only.width < 0.6 * both.width


def test_the_cpu_hours_axis_starts_at_zero_images():
    seen, hours = cpu_axis([8000, 16000], [0.5, 1.0])
    assert (seen[0], hours[0]) == (0, 0.0)
    # a tick at 0.25 CPU-hours lands halfway to the first evaluation, not on it
    assert _interpolate(0.25, hours, seen) == 4000
    assert _interpolate(1.5, hours, seen) == 24000  # past the last point: on the last segment's slope


def test_the_curve_table_is_kept_between_its_markers(tmp_path):
    path = tmp_path / "history.jsonl"
    rows = [
        {"step": 500, "images": 8000, "cpu_hours": 0.5, "f1": 0.02, "ted_accuracy": 0.1},
        {"step": 1000, "images": 16000, "cpu_hours": 1.0, "f1": 0.25, "ted_accuracy": 0.5, "cer_easy": 0.4},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = curve_table(path)
    assert table.splitlines()[0] == "| images | CPU-hours | field F1 | nTED acc | CER easy |"
    assert table.splitlines()[2:] == [
        "| 8,000 | 0.50 | 0.020 | 0.100 | – |",
        "| 16,000 | 1.00 | 0.250 | 0.500 | 0.40 |",
    ]
    readme = tmp_path / "README.md"
    readme.write_text("# run\n<!-- curve:start -->\nold\n<!-- curve:end -->\nafter\n")
    write_curve_table(path, readme)
    write_curve_table(path, readme)  # again: the same file
    assert readme.read_text() == f"# run\n<!-- curve:start -->\n{table}<!-- curve:end -->\nafter\n"
    (tmp_path / "bare.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="no <!-- curve:start -->"):
        write_curve_table(path, tmp_path / "bare.md")
