"""`donut-hole ship`: a finished (tiny) run becomes models/<name> folders with cards whose held-out numbers
`donut-hole evaluate` reproduces; missed targets stop it unless forced."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.compression.compress import compress
from donut_hole.compression.recipe import CompressRecipe, TeacherRecipe, load_recipe
from donut_hole.compression.teacher import train_teacher
from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.evaluation.evaluate import evaluate_reader
from donut_hole.model.build import load_model
from donut_hole.model.card import (
    END,
    START,
    STUDENT_NAME,
    TEACHER_NAME,
    ShipError,
    _data_line,
    _student_training,
    _synth_command,
    _teacher_training,
    ship,
)
from donut_hole.model.predict import DonutReader

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOKENS = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layout scripts/train_default_model.sh leaves, made with a tiny teacher and a few steps."""
    run = tmp_path_factory.mktemp("run")
    kinds = ["shipping_label", "delivery_note"]
    generate(kinds, n=6, out=run / "train", seed=0, progress=False)
    generate(kinds, n=4, out=run / "val", seed=1000, progress=False)
    teacher_recipe = TeacherRecipe.model_validate(
        {
            "model": {"preset": "tiny", "image_size": [160, 160]},
            "train": {
                "steps": 2,
                "batch_size": 2,
                "eval_every": 2,
                "eval_samples": 2,
                "max_new_tokens": TOKENS,
            },
        }
    )
    train_teacher(teacher_recipe, train_dir=run / "train", val_dir=run / "val", out_dir=run / "teacher")
    recipe = load_recipe(
        CONFIGS / "tiny.yaml",
        CompressRecipe,
        overrides={
            "train.steps": 2,
            "train.eval_every": 2,
            "train.eval_samples": 2,
            "train.max_new_tokens": TOKENS,
            "report.cka_samples": 4,
            "report.latency_samples": 1,
            "report.latency_repeats": 1,
        },
    )
    compress(
        recipe,
        teacher_path=run / "teacher" / "model",
        train_dir=run / "train",
        val_dir=run / "val",
        out_dir=run / "student",
        progress=False,
    )
    val = read_dataset(run / "val")
    for side in ("teacher", "student"):
        reader = DonutReader.from_path(run / side / "model", max_new_tokens=TOKENS)
        evaluate_reader(reader, val, batch_size=2, progress=False).write_json(run / side / "evaluation.json")
    (run / "run.json").write_text(
        json.dumps(
            {
                "started": "2026-11-29T05:00:00+00:00",
                "finished": "2026-11-29T05:10:00+00:00",
                "hardware": "test machine, 2 cores (no GPU)",
                "train": {"n": 6, "seed": 0, "width": 160, "height": 160},
                "val": {"n": 4, "seed": 1000, "width": 160, "height": 160},
                "max_new_tokens": TOKENS,
                "commands": ["SMOKE=1 scripts/train_default_model.sh /tmp/run"],
            }
        ),
        encoding="utf-8",
    )
    return run


def test_untrained_models_miss_their_targets_and_are_not_shipped(run, tmp_path):
    with pytest.raises(ShipError, match="teacher field F1"):
        ship(run, tmp_path / "models")
    assert not (tmp_path / "models").exists()

    result = CliRunner().invoke(app, ["ship", "--run", str(run), "--models", str(tmp_path / "models")])
    assert result.exit_code == 1
    assert "targets not met" in result.output and "--force" in result.output


def test_forced_ship_writes_lean_folders_cards_and_the_readme_table(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")

    done = ship(run, tmp_path / "models", readme=readme, force=True)

    assert done["readme_updated"] and done["missed"]
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "before" in text and "after" in text
    assert f"`{TEACHER_NAME}`" in text and f"`{STUDENT_NAME}`" in text
    for name in (TEACHER_NAME, STUDENT_NAME):
        folder = tmp_path / "models" / name
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
        assert not {"checkpoint.pt", "history.jsonl", "optimizer.pt"} & files
        card = (folder / "README.md").read_text(encoding="utf-8")
        for expected in (
            "--seed 1000",
            "test machine",
            "SMOKE=1 scripts/train_default_model.sh",
            "**not met**",
            f'DonutProcessor.from_pretrained("models/{name}")',  # the stock-transformers snippet
        ):
            assert expected in card, expected
        assert "pipeline_tag" not in card  # no transformers pipeline reads DONUT's fields
        load_model(folder)  # a complete checkpoint

    # the card's held-out F1 is what `donut-hole evaluate` gives on the same set
    student_eval = json.loads((run / "student" / "evaluation.json").read_text(encoding="utf-8"))
    reader = DonutReader.from_path(tmp_path / "models" / STUDENT_NAME, max_new_tokens=TOKENS)
    again = evaluate_reader(reader, read_dataset(run / "val"), batch_size=2, progress=False).result
    assert again.f1 == pytest.approx(student_eval["f1"]) and again.ted_accuracy == pytest.approx(
        student_eval["ted_accuracy"]
    )
    shipped_scores = json.loads((tmp_path / "models" / STUDENT_NAME / "evaluation.json").read_text())
    assert (
        shipped_scores["f1"] == student_eval["f1"] and "documents" not in shipped_scores
    )  # what the demo quotes
    card = (tmp_path / "models" / STUDENT_NAME / "README.md").read_text(encoding="utf-8")
    assert f"| `{STUDENT_NAME}` | {student_eval['f1']:.4f} | {student_eval['ted_accuracy']:.4f} |" in card


def test_incomplete_run_is_a_clear_error(run, tmp_path):
    partial = tmp_path / "partial"
    (partial / "teacher" / "model").mkdir(parents=True)
    with pytest.raises(ShipError, match="holds no model"):
        ship(partial, tmp_path / "models")


def test_a_run_without_the_teachers_recipe_is_a_clear_error(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "teacher" / "recipe.yaml").unlink()
    with pytest.raises(ShipError, match=r"recipe\.yaml is missing"):
        ship(copy, tmp_path / "models", force=True)
    assert not (tmp_path / "models").exists()  # nothing half-shipped


def test_the_card_names_sets_in_their_page_shapes_and_rendered_training_data():
    assert _synth_command({"n": 500, "seed": 1000}) == "donut-hole synth --kind all --n 500 --seed 1000"
    assert _data_line({"n": 500, "seed": 1000}).endswith(", in each type's own page shape")
    square = {"n": 500, "seed": 1000, "width": 448, "height": 448}
    assert _data_line(square) == "`donut-hole synth --kind all --n 500 --seed 1000 --width 448 --height 448`"
    assert "rendered on the fly" in _data_line({"rendered": True})
    assert _data_line({}) == "see run.json"


def test_the_card_tells_how_each_model_was_trained():
    history = [
        {"step": 500, "images": 8000, "cpu_hours": 0.3, "f1": 0.5, "ted_accuracy": 0.7},
        {"step": 1000, "images": 16000, "cpu_hours": 0.6, "f1": 0.8, "ted_accuracy": 0.9},
        {"step": 1500, "images": 24000, "cpu_hours": 0.9, "f1": 0.7, "ted_accuracy": 0.85},  # went on after
    ]
    annealed = _teacher_training(history, {"from_step": 1200, "steps": 100})
    assert "step 1,200, annealed over 100 more steps" in annealed
    assert "at 16,000 images, 0.6 CPU-hours: held-out field F1 0.800, nTED 0.900" in annealed
    sharper = _teacher_training(history, {"from_step": 1200, "steps": 100, "image_size": [672, 672]})
    assert "annealed over 100 more steps at a 672x672 input while" in sharper
    assert _teacher_training(history, None).startswith(
        "24,000 images, 0.9 CPU-hours in 1,500 optimizer steps"
    )
    assert _teacher_training([], None) == "no training history recorded."
    student = _student_training([{**history[0], "density": 0.46}])
    assert "500 steps, 8,000 images" in student and "to density 0.460" in student and "F1 0.500" in student
    assert _student_training([]).startswith("no distillation steps")
    averaged = _student_training([{**history[2], "density": 0.46, "average_of": [1200, 1500]}])
    assert "to density 0.460; it is the mean of its weights at steps 1,200, 1,500; at the end" in averaged
    kept = _student_training([{**history[0], "density": 0.378}], {"unstructured_density_over_student": 1.0})
    assert "500 steps, 8,000 images, 0.30 CPU-hours, at density 0.378 by the layers it kept alone;" in kept


def test_the_speed_target_is_measured_at_the_workers_batch_size():
    from donut_hole.model.card import speed_batch

    timed = {"ms_per_doc_batch1_p50": 300.0, "ms_per_doc_batch4_p50": 200.0}
    assert speed_batch({"teacher": {"latency": timed}}) == 4  # DONUT_HOLE_BATCH_SIZE's default
    assert speed_batch({"teacher": {"latency": {"ms_per_doc_batch1_p50": 300.0}}}) == 1  # an older report
