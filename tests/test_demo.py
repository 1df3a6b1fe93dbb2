"""``donut-hole demo`` on the embedded defaults (SQLite, SQLite broker, local store) in a fresh folder."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.documents.synth import generate
from donut_hole.settings import get_settings


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Only the demo's variables: no server URL from the caller's environment may leak in."""
    for name in list(os.environ):
        if name.startswith("DONUT_HOLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DONUT_HOLE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DONUT_HOLE_MODEL_PATH", str(tmp_path / "no-model"))  # → the untrained tiny model
    monkeypatch.setenv("DONUT_HOLE_MAX_NEW_TOKENS", "24")
    get_settings.cache_clear()
    yield dict(os.environ)
    get_settings.cache_clear()


@pytest.mark.slow
def test_demo_reads_a_batch_with_real_workers_and_leaves_the_results(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "donut_hole", "demo", "--n", "5", "--timeout", "150"],
        env={**embedded_env, "COLUMNS": "160"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "untrained model: accuracy will be ~0" in run.stdout
    assert "field F1" in run.stdout and "docs/s" in run.stdout
    batch_id = re.search(r"results --batch ([0-9a-f-]{36})", run.stdout).group(1)
    assert "sqlite3 var/donut_hole.sqlite3" in run.stdout
    with sqlite3.connect(tmp_path / "var" / "donut_hole.sqlite3") as db:
        statuses = db.execute(
            "SELECT status, count(*) FROM documents WHERE batch_id = ? GROUP BY status", [batch_id]
        )
        assert dict(statuses.fetchall()) == {"done": 8}  # 5 scans and the 3 pages of the demo's PDF
        pages = db.execute(
            "SELECT page, page_count FROM documents WHERE batch_id = ? AND uri LIKE '%delivery-bundle.pdf%' "
            "ORDER BY page",
            [batch_id],
        )
        assert pages.fetchall() == [(1, 3), (2, 3), (3, 3)]
        assert db.execute("SELECT count(*) FROM extractions").fetchone() == (8,)
    assert "starting 2 worker processes" in run.stdout

    runner = CliRunner()
    as_json = runner.invoke(app, ["results", "--batch", batch_id, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["counts"]["done"] == 8 and len(report["documents"]) == 8
    as_csv = runner.invoke(app, ["results", "--batch", batch_id, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [row["status"] for row in rows] == ["done"] * 8 and "confidence" in rows[0]
    assert [row["page"] for row in rows if "delivery-bundle" in row["uri"]] == ["1", "2", "3"]
    assert all(row["error"] == "" and "schema: " in row["note"] for row in rows)  # untrained model
    missing = runner.invoke(app, ["results", "--batch", "nope"])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_enqueue_and_migrate_commands_on_the_embedded_defaults(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    scan = tmp_path / "label.jpg"
    scan.write_bytes(b"\xff\xd8 not really a jpeg")
    unmigrated = runner.invoke(app, ["enqueue", str(scan)])
    assert unmigrated.exit_code == 2 and "(donut-hole migrate)" in " ".join(unmigrated.output.split())
    assert runner.invoke(app, ["migrate"]).exit_code == 0

    queued = runner.invoke(app, ["enqueue", str(scan)])

    assert queued.exit_code == 0, queued.output
    batch_id = queued.output.splitlines()[0].strip()
    shown = runner.invoke(app, ["results", "--batch", batch_id])
    assert shown.exit_code == 0 and "label.jpg" in shown.output and "queued" in shown.output
    dataset = generate(["delivery_note"], n=2, out=tmp_path / "dataset", seed=1, progress=False)
    from_dataset = runner.invoke(app, ["enqueue", str(dataset)])
    assert from_dataset.exit_code == 0, from_dataset.output
    listed = runner.invoke(app, ["results", "--batch", from_dataset.output.split()[0], "--format", "json"])
    assert [d["uri"].rsplit("/", 1)[-1] for d in json.loads(listed.output)["documents"]] == [
        "000000.jpg",
        "000001.jpg",
    ]
    bad = runner.invoke(app, ["enqueue", "s3://scans/a.jpg"])
    assert bad.exit_code == 2 and "local directory" in bad.output
    assert runner.invoke(app, ["enqueue", str(tmp_path / "missing")]).exit_code == 2
    recovered = runner.invoke(app, ["enqueue", "--recover", "--older-than", "0"])
    assert recovered.exit_code == 0 and "sent 0 stalled documents again" in recovered.output  # all queued
    assert runner.invoke(app, ["enqueue", "--older-than", "5", str(scan)]).exit_code == 2


def test_the_demo_reads_with_the_teacher_in_training_while_nothing_is_shipped(
    embedded_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from donut_hole import demo

    assert (demo.IN_TRAINING / "config.json").is_file()  # committed with the repository
    shipped = tmp_path / "models" / "donut-hole-small"
    monkeypatch.setattr(demo, "DEFAULT_MODEL_PATH", shipped)
    settings = get_settings().model_copy(update={"model_path": shipped})
    assert demo.demo_model(settings, tmp_path, {}) == (demo.IN_TRAINING, True)
    shipped.mkdir(parents=True)
    (shipped / "config.json").write_text("{}")  # once a model is shipped, it is the one
    assert demo.demo_model(settings, tmp_path, {}) == (shipped, True)
    assert "held-out scans: field F1 0." in demo._scores_of(demo.IN_TRAINING)
