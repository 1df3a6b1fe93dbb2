"""The ``donut-hole`` command end to end on tiny data (real files, real model, no mocks)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.documents.synth import generate
from donut_hole.model.build import new_model, save_model

runner = CliRunner()
COMMANDS = [
    "synth", "evaluate", "predict", "calibrate", "train", "compress", "train-default", "ship",
    "demo", "worker", "enqueue", "results", "export", "batches", "delete", "purge", "migrate", "api",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "val"
    generate(["shipping_label", "delivery_note"], n=3, out=out, seed=7, progress=False)
    (out / "000002.jpg").write_bytes(b"not a jpeg")  # one corrupt scan
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    from donut_hole.evaluation.dataset import read_dataset

    docs = [s.gt_parse for s in read_dataset(dataset)]
    model, processor = new_model("tiny", documents=docs, image_size=(160, 160))
    return save_model(model, processor, tmp_path_factory.mktemp("m") / "model")


def test_synth_writes_a_dataset(tmp_path):
    result = runner.invoke(app, ["synth", "--kind", "all", "--n", "3", "--out", str(tmp_path), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 3
    assert len(list(tmp_path.glob("*.jpg"))) == 3


def test_synth_writes_reading_pages(tmp_path):
    kinds = ["--kind", "reading/easy", "--kind", "reading/document"]
    result = runner.invoke(
        app, ["synth", *kinds, "--n", "2", "--out", str(tmp_path), "--width", "448", "--height", "448"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    texts = [json.loads(line["ground_truth"])["gt_parse"]["text_sequence"] for line in lines]
    assert len(texts) == 2 and all(texts) and len(texts[1]) > len(texts[0])  # document-like: more text


def test_synth_rejects_unknown_kind(tmp_path):
    result = runner.invoke(app, ["synth", "--kind", "pizza", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown document type 'pizza'" in result.output


def test_evaluate_prints_table_and_writes_json(tmp_path, dataset, model_dir):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(model_dir), "--data", str(dataset), "--out", str(out)]
    result = runner.invoke(app, [*args, "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "field F1" in result.output and "unreadable 1" in result.output
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["errors"] == 1
    corrupt = report["documents"][2]
    assert corrupt["prediction"] == {} and "not a readable image" in corrupt["error"]
    assert 0.0 <= report["f1"] <= 1.0
    by_type = report["by_type"]  # the corrupt scan counts, as an empty prediction, for its own type
    assert sum(scores["n"] for scores in by_type.values()) == 3
    assert set(by_type) <= {"shipping_label", "delivery_note"}


def test_evaluate_without_out_writes_nothing(tmp_path, dataset, model_dir):
    before = sorted(p.name for p in model_dir.iterdir())
    args = ["evaluate", "--model", str(model_dir), "--data", str(dataset), "--max-new-tokens", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "field F1" in result.output and "wrote" not in result.output
    assert sorted(p.name for p in model_dir.iterdir()) == before  # the model folder is left as it was


def test_evaluate_missing_model_is_a_clear_error(tmp_path, dataset):
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path), "--data", str(dataset)])
    assert result.exit_code == 2
    assert "config.json is missing" in result.output


def test_predict_prints_json_lines_and_fails_bad_files(dataset, model_dir):
    images = [str(dataset / "000000.jpg"), str(dataset / "000002.jpg")]
    result = runner.invoke(app, ["predict", "--model", str(model_dir), *images, "--max-new-tokens", "4"])
    assert result.exit_code == 2  # the corrupt scan, after the rest was read
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert "fields" in lines[0] and "error" in lines[1]


def test_predict_reads_a_folder_and_refuses_bad_paths_before_the_model_loads(tmp_path, dataset, model_dir):
    """A folder is its scans, in name order; a path that is missing, not a file, or a folder without scans
    is one line and exit 2, before any reading (no traceback)."""
    base = ["predict", "--model", str(model_dir), "--max-new-tokens", "4"]
    result = runner.invoke(app, [*base, str(dataset)])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(line["file"]).name for line in lines] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert result.exit_code == 2  # the corrupt one
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, message in [
        (tmp_path / "nope.jpg", "does not exist"),
        (Path("/dev/null"), "is not a file"),
        (empty, "holds no scans"),
    ]:
        result = runner.invoke(app, [*base, str(dataset / "000000.jpg"), str(path)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
        assert not [line for line in result.stdout.splitlines() if line.startswith("{")]


def test_evaluate_refuses_an_out_path_it_cannot_write_before_reading(tmp_path, dataset, model_dir):
    args = ["evaluate", "--model", str(model_dir), "--data", str(dataset), "--max-new-tokens", "4"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder" in " ".join(result.output.split()) and "field F1" not in result.output


def test_predict_prints_one_line_per_page_of_a_pdf(tmp_path, dataset, model_dir):
    from multipage import encrypted, pdf_of

    pdf = tmp_path / "bol.pdf"
    pdf.write_bytes(pdf_of([dataset / "000000.jpg", dataset / "000001.jpg", dataset / "000000.jpg"]))
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypted(pdf.read_bytes()))
    image = str(dataset / "000001.jpg")
    args = ["predict", "--model", str(model_dir), str(pdf), str(locked), image, "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "4"])
    assert result.exit_code == 2  # the encrypted PDF
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(line["file"], line.get("page")) for line in lines] == [
        (str(pdf), 1),
        (str(pdf), 2),
        (str(pdf), 3),
        (str(locked), None),
        (image, 1),
    ]
    assert all("fields" in line for line in lines[:3] + lines[4:])
    assert lines[3]["error"] == "encrypted PDF: it cannot be opened without its password"


def test_train_set_overrides_any_recipe_key(tmp_path, dataset):
    configs = Path(__file__).resolve().parents[2] / "configs"
    base = ["train", "--recipe", str(configs / "teacher-small.yaml"), "--train", str(dataset)]
    base += ["--val", str(dataset), "--out", str(tmp_path / "run")]

    bad_value = runner.invoke(app, [*base, "--set", "train.batch_size=many"])
    assert bad_value.exit_code == 2 and "train.batch_size" in bad_value.output

    no_equals = runner.invoke(app, [*base, "--set", "train.batch_size"])
    assert no_equals.exit_code == 2 and "KEY=VALUE" in no_equals.output

    sizes = ["--set", "model.image_size=[224, 224]", "--set", "model.overrides.depths=[2, 2, 2, 2]"]
    ok = runner.invoke(
        app, [*base, "--steps", "0", *sizes, "--set", "train.eval_samples=1", "--set", "train.num_workers=0"]
    )
    assert ok.exit_code == 0, ok.output
    recipe = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "- 224" in recipe and "eval_samples: 1" in recipe


@pytest.mark.parametrize("module", ["donut_hole", "donut_hole.cli"])
def test_python_dash_m_has_every_command(module: str) -> None:
    """``python -m donut_hole`` (and ``-m donut_hole.cli``) where no console script is installed."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert all(f" {name} " in done.stdout for name in COMMANDS), done.stdout


def test_every_command_is_registered_once_in_the_documented_order() -> None:
    from typer.main import get_command

    from donut_hole.cli.main import COMMANDS as functions

    assert list(get_command(app).commands) == COMMANDS  # type: ignore[attr-defined]
    assert [f.__name__.replace("_", "-") for f in functions] == COMMANDS


def test_predict_and_evaluate_read_with_the_configured_model_by_default(dataset, model_dir, monkeypatch):
    from donut_hole.settings import DEFAULT_MODEL_PATH, get_settings

    scan = str(dataset / "000000.jpg")
    monkeypatch.delenv("DONUT_HOLE_MODEL_PATH", raising=False)
    get_settings.cache_clear()
    try:
        shipped = runner.invoke(app, ["predict", scan])  # no --model: the shipped student
        monkeypatch.setenv("DONUT_HOLE_MODEL_PATH", str(model_dir))
        get_settings.cache_clear()
        configured = runner.invoke(app, ["evaluate", "--data", str(dataset), "--max-new-tokens", "4"])
        monkeypatch.setenv("DONUT_HOLE_MODEL_PATH", str(dataset))  # not a model folder
        get_settings.cache_clear()
        refused = runner.invoke(app, ["predict", scan])
    finally:
        get_settings.cache_clear()
    assert shipped.exit_code == 0, shipped.output
    (line,) = [json.loads(text) for text in shipped.stdout.splitlines() if text.startswith("{")]
    assert line["fields"] and line["confidence"] > 0 and DEFAULT_MODEL_PATH.is_dir()
    assert configured.exit_code == 0 and str(model_dir) in "".join(configured.output.split())  # its title
    assert refused.exit_code == 2 and "config.json is missing" in " ".join(refused.output.split())


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_long_commands_show_progress_without_a_terminal(tmp_path, dataset, model_dir):
    """No TTY (a CI log, a pipe): plain progress lines on stderr instead of a bar that draws nothing."""
    args = ["evaluate", "--model", str(model_dir), "--data", str(dataset), "--max-new-tokens", "4"]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    assert "evaluate: 3/3 (100%)" in evaluated.stderr
    synthesized = runner.invoke(
        app, ["synth", "--kind", "shipping_label", "--n", "200", "--out", str(tmp_path)]
    )
    assert synthesized.exit_code == 0, synthesized.output
    assert "synth shipping_label: 200/200 (100%)" in synthesized.stderr


def test_train_default_says_what_it_cannot_do(tmp_path: Path) -> None:
    """The training chain's command: --save with no run to keep, --anneal with no teacher: one line each."""
    run = tmp_path / "run"
    saved = runner.invoke(app, ["train-default", "--save", "--keep", str(tmp_path / "k"), str(run)])
    assert saved.exit_code == 2 and "nothing to keep" in " ".join(saved.output.split())
    from donut_hole.compression.chain import Chain

    chain = Chain(run=run, smoke=True)
    assert chain.renders(Path("configs/teacher-cpu.yaml")) and not chain.renders(Path("configs/tiny.yaml"))
    assert (chain.n_val, chain.anneal_steps, chain.anneal_size, chain.from_kept) == (4, 2, 672, False)
    assert Chain(run=run).from_kept and Chain(run=run).student_keep == Path("checkpoints/donut-hole-cpu")
