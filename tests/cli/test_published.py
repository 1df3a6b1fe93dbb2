"""Published DONUT folders as they are (tests/published.py): every command reads them, and says why not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from published import write_published
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.documents.synth import generate

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CORD = "<s_cord-v2>"


@pytest.fixture(scope="module")
def cord(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """donut-base-finetuned-cord-v2 as published: pytorch_model.bin only, no start id anywhere."""
    return write_published(tmp_path_factory.mktemp("pub") / "donut-base-finetuned-cord-v2")


@pytest.fixture(scope="module")
def base_safetensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_published(tmp_path_factory.mktemp("pub") / "donut-base", kind="base", weights="safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        ["shipping_label"], n=4, out=tmp_path_factory.mktemp("data") / "d", seed=5, progress=False
    )


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    return text


def test_the_published_files_are_there(cord, base_safetensors):
    assert {"pytorch_model.bin", "preprocessor_config.json", "tokenizer.json", "added_tokens.json"} <= {
        p.name for p in cord.iterdir()
    }
    assert not (cord / "model.safetensors").exists() and (base_safetensors / "model.safetensors").exists()
    config = json.loads((cord / "config.json").read_text())
    assert "decoder_start_token_id" not in config and config["decoder"]["decoder_start_token_id"] is None
    pre = json.loads((cord / "preprocessor_config.json").read_text())
    assert pre["size"] == [96, 128] and pre["do_align_long_axis"] is False  # [width, height]


def test_evaluate_names_the_task_prompt_option_when_it_cannot_tell(cord, data):
    text = _one_line_error(runner.invoke(app, ["evaluate", "--model", str(cord), "--data", str(data)]))
    assert "--task-prompt" in text and CORD in text


def test_evaluate_with_the_task_prompt(cord, data, tmp_path):
    args = ["evaluate", "--model", str(cord), "--data", str(data), "--task-prompt", CORD]
    result = runner.invoke(app, [*args, "--max-new-tokens", "4", "--out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 4


def test_an_unknown_task_prompt_is_a_clear_error(cord, data):
    args = ["evaluate", "--model", str(cord), "--data", str(data), "--task-prompt", "<s_nope>"]
    text = _one_line_error(runner.invoke(app, args))
    assert "<s_nope>" in text and CORD in text


def test_predict_batches_the_published_model_in_int8(cord, data):
    images = [str(p) for p in sorted(data.glob("*.jpg"))]
    args = ["predict", "--model", str(cord), *images, "--task-prompt", CORD, "--batch-size", "3"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "3", "--precision", "int8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["file"] for line in lines] == images and all("fields" in line for line in lines)


@pytest.mark.parametrize(
    ("option", "value", "says"), [("--precision", "fp8", "fp8"), ("--device", "tpu", "tpu")]
)
def test_bad_reading_options_are_clear_errors(cord, data, option, value, says):
    args = ["predict", "--model", str(cord), str(next(data.glob("*.jpg"))), "--task-prompt", CORD]
    assert says in _one_line_error(runner.invoke(app, [*args, option, value]))


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        ("no-weights", "has no weights"),
        ("bad-config", "cannot load a DONUT checkpoint"),
        ("bad-weights", "cannot load a DONUT checkpoint"),
        ("missing", "not a model folder"),
    ],
)
def test_broken_folders_are_one_line_errors(cord, data, tmp_path, broken, says):
    import shutil

    folder = tmp_path / "m"
    if broken != "missing":
        shutil.copytree(cord, folder)
    if broken == "no-weights":
        (folder / "pytorch_model.bin").unlink()
    elif broken == "bad-config":
        (folder / "config.json").write_text("{not json")
    elif broken == "bad-weights":
        (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)
    result = runner.invoke(
        app, ["evaluate", "--model", str(folder), "--data", str(data), "--task-prompt", CORD]
    )
    assert says in _one_line_error(result)


def test_compress_reads_the_published_model_and_saves_what_4x_and_5x_read(cord, data, tmp_path):
    out = tmp_path / "run"
    args = ["compress", "--teacher", str(cord), "--recipe", str(CONFIGS / "tiny.yaml"), "--val", str(data)]
    settings = ["--set", "train.max_new_tokens=3", "--set", "report.cka_samples=4"]
    settings += ["--set", "report.latency_samples=1", "--set", "report.latency_repeats=1"]
    result = runner.invoke(app, [*args, "--out", str(out), "--steps", "0", "--task-prompt", CORD, *settings])
    assert result.exit_code == 0, result.output
    model = out / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "preprocessor_config.json"} <= names
    legacy = json.loads((model / "preprocessor_config.json").read_text())
    assert legacy["image_processor_type"] == "DonutImageProcessor"
    assert legacy["size"] == {"height": 128, "width": 96}
    config = json.loads((model / "config.json").read_text())
    start = config["decoder_start_token_id"]
    assert (
        start
        == config["decoder"]["decoder_start_token_id"]
        == json.loads((cord / "added_tokens.json").read_text())[CORD]
    )
    # the student needs no option any more: its config carries the start id
    result = runner.invoke(app, ["predict", "--model", str(model), str(next(data.glob("*.jpg")))])
    assert result.exit_code == 0, result.output


def test_train_fine_tunes_a_published_folder_with_init_path(base_safetensors, data, tmp_path):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "init": str(base_safetensors),
                "task_prompt": "<s_synthdog>",
                "train": {
                    "steps": 2,
                    "batch_size": 2,
                    "eval_every": 2,
                    "eval_samples": 2,
                    "checkpoint_every": 2,
                    "max_new_tokens": 3,
                    "max_length": 64,
                    "warmup_steps": 1,
                },
            }
        )
    )
    args = [
        "train",
        "--recipe",
        str(recipe),
        "--train",
        str(data),
        "--val",
        str(data),
        "--out",
        str(tmp_path / "t"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "t" / "model" / "config.json").read_text())
    assert (
        config["decoder_start_token_id"]
        == json.loads((base_safetensors / "added_tokens.json").read_text())["<s_synthdog>"]
    )
    # fine-tuned at another input size (as DONUT is after pre-training): the saved model reads that size
    spec = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**spec, "model": {"image_size": [192, 144]}}))
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "larger")])
    assert result.exit_code == 0, result.output
    larger = tmp_path / "larger" / "model"
    assert json.loads((larger / "config.json").read_text())["encoder"]["image_size"] == [192, 144]
    assert json.loads((larger / "preprocessor_config.json").read_text())["size"] == {
        "height": 192,
        "width": 144,
    }
    result = runner.invoke(app, ["predict", "--model", str(larger), str(next(data.glob("*.jpg")))])
    assert result.exit_code == 0, result.output
    recipe.write_text(yaml.safe_dump({**spec, "model": {"image_size": [64, 64]}}))
    text = _one_line_error(runner.invoke(app, [*args[:-1], str(tmp_path / "small")]))
    assert "model.image_size" in text and "too small" in text
    # without a task prompt a published donut-base (two task tokens) is refused with the option named
    recipe.write_text(yaml.safe_dump({"init": str(base_safetensors), "train": {"steps": 1}}))
    text = _one_line_error(runner.invoke(app, args))
    assert "task_prompt" in text
