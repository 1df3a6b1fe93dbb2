"""`donut-hole compress` end to end: tiny teacher with training, donut-base layout without (--steps 0)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.compression.compress import DistillObjective, compress
from donut_hole.compression.recipe import CompressRecipe, RecipeError, load_recipe
from donut_hole.compression.student import (
    LayerMap,
    StudentError,
    processor_size,
    resize_pixels,
    student_processor,
    unstructured_density,
)
from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import density_of, load_model, new_model, save_model
from donut_hole.model.predict import DonutReader

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_unstructured_density_covers_what_layer_removal_did_not():
    assert unstructured_density(target=0.46, teacher_prunable=1000, student_prunable=460) == 1.0
    assert unstructured_density(target=0.46, teacher_prunable=1000, student_prunable=920) == pytest.approx(
        0.5
    )
    assert unstructured_density(target=0.5, teacher_prunable=1000, student_prunable=400) == 1.0


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compress")
    train_dir = generate(["shipping_label", "delivery_note"], n=8, out=root / "train", seed=0, progress=False)
    val_dir = generate(["shipping_label", "delivery_note"], n=4, out=root / "val", seed=1, progress=False)
    docs = [s.gt_parse for s in read_dataset(train_dir)]
    model, processor = new_model("tiny", documents=docs, image_size=(160, 160))
    return {
        "root": root,
        "train": train_dir,
        "val": val_dir,
        "teacher": save_model(model, processor, root / "t"),
    }


def test_compress_tiny_end_to_end(tiny_setup):
    recipe = load_recipe(
        CONFIGS / "tiny.yaml",
        CompressRecipe,
        overrides={
            "train.steps": 10,
            "train.eval_every": 5,
            "train.eval_samples": 2,
            "train.max_new_tokens": 8,
            "report.cka_samples": 4,
            "report.latency_samples": 2,
            "report.latency_repeats": 1,
        },
    )
    out = tiny_setup["root"] / "run"
    report = compress(
        recipe,
        teacher_path=tiny_setup["teacher"],
        train_dir=tiny_setup["train"],
        val_dir=tiny_setup["val"],
        out_dir=out,
        progress=False,
    )

    student, density = report.student, report.student.density
    assert abs(density["prunable_density_vs_teacher"] - recipe.prune.target_density) < 0.01
    assert density["all_density_vs_teacher"] < 1.0
    assert student.parameters < report.teacher.parameters  # fewer blocks, FFN neurons removed
    ffn = report.student_structure["ffn_pruning"]
    assert ffn["params_after"] < ffn["params_before"]
    for side in (report.teacher, report.student):
        assert {"f1", "ted_accuracy", "field_exact_match", "n"} <= set(side.eval)
        assert side.latency["ms_per_doc_batch1_p50"] > 0
        assert side.file_bytes > 0
    assert 0.0 <= report.cka["global"] <= 1.0
    # latencies name the CPU's vector unit: the same model runs about 5x slower on AVX2 than on AVX512-BF16
    assert torch.backends.cpu.get_cpu_capability() in report.machine and "cores" in report.machine
    assert len(report.cka["matrix"]) == 6 and len(report.cka["matrix"][0]) == 5  # 4+2 × 4+1 layers
    assert [h["step"] for h in report.history] == [5, 10]
    assert all(h["density"] is not None for h in report.history)
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict())) and set(saved["plots"]) == set(report.plots)
    for name in (
        "report.json",
        "report.md",
        "cka_heatmap.png",
        "density_per_layer.png",
        "accuracy_vs_density.png",
        "recipe.yaml",
        "layer_map.json",
    ):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(report.comparison()) and "Global CKA" in markdown

    # The student's folder says what it was made from and how dense it is (the worker's model-info metric).
    assert density_of(out / "model") == pytest.approx(density["prunable_density_vs_teacher"])
    assert json.loads((out / "model" / "compression.json").read_text())["teacher"] == "t"
    assert density_of(tiny_setup["teacher"]) is None

    # The saved student reloads with from_pretrained, has no pruning hooks or masks, and predicts.
    model, processor = load_model(out / "model")
    assert not any("mask" in key or "orig" in key for key in model.state_dict())
    assert model.config.decoder.decoder_layers == 1 and list(model.config.encoder.depths) == [2, 1, 1, 2]
    reader = DonutReader(model, processor, max_new_tokens=4)
    assert len(reader.predict([s.image_path for s in read_dataset(tiny_setup["val"])[:2]])) == 2


def test_compress_cli_reports_clear_errors(tiny_setup, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {encoder_depths: [1, 1, 1, 1], decoder_layers: 1}\ntrain: {stepz: 3}\n")
    result = CliRunner().invoke(
        app,
        [
            "compress",
            "--teacher",
            str(tiny_setup["teacher"]),
            "--recipe",
            str(bad),
            "--val",
            str(tiny_setup["val"]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "train.stepz" in result.output
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("student: {encoder_depths: [1, 1, 1], decoder_layers: 1}\n")
    result = CliRunner().invoke(
        app,
        [
            "compress",
            "--teacher",
            str(tiny_setup["teacher"]),
            "--recipe",
            str(wrong),
            "--val",
            str(tiny_setup["val"]),
            "--out",
            str(tmp_path / "o"),
            "--steps",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert "Swin stages" in result.output


SMALL_REPORT = ["report.cka_samples=4", "report.latency_samples=1", "report.latency_repeats=1"]


def _compress_tiny(tiny_setup, out: Path, *, steps: int, sets: list[str], train: bool = False):
    """``donut-hole compress`` of the tiny teacher with ``configs/tiny.yaml``, through the CLI."""
    args = ["compress", "--teacher", str(tiny_setup["teacher"]), "--recipe", str(CONFIGS / "tiny.yaml")]
    if train:
        args += ["--train", str(tiny_setup["train"])]
    args += ["--val", str(tiny_setup["val"]), "--out", str(out), "--steps", str(steps)]
    return CliRunner().invoke(app, [*args, *[arg for item in sets for arg in ("--set", item)]])


def test_compress_cli_prints_the_report_it_returns(tiny_setup, tmp_path):
    out = tmp_path / "run"
    result = _compress_tiny(tiny_setup, out, steps=0, sets=[*SMALL_REPORT, "train.max_new_tokens=4"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    printed = " ".join(result.stdout.split())  # the console wraps long lines
    assert "# DONUT-hole compression report: tiny Teacher " in printed
    assert "| parameters |" in printed and "Global CKA" not in printed  # the table, then the summary
    assert f"global CKA {report['cka']['global']:.4f}" in printed
    assert f"wrote {out / 'report.md'} and {out / 'model'}" in printed


@pytest.mark.slow
def test_donut_base_layout_steps_zero(tmp_path):
    """The published layout (random weights): derive, prune one-shot, save, report — no training."""
    val_dir = generate("shipping_label", n=4, out=tmp_path / "val", seed=2, progress=False)
    docs = [s.gt_parse for s in read_dataset(val_dir)]
    model, processor = new_model("donut-base", documents=docs, image_size=(1280, 960))
    teacher_dir = save_model(model, processor, tmp_path / "teacher")
    del model
    recipe = load_recipe(
        CONFIGS / "donut-base.yaml",
        CompressRecipe,
        overrides={
            "train.steps": 0,
            "train.max_new_tokens": 4,
            "report.cka_samples": 4,
            "report.latency_samples": 1,
            "report.latency_repeats": 1,
            "report.eval_samples": 2,
        },
    )
    report = compress(
        recipe,
        teacher_path=teacher_dir,
        train_dir=val_dir,  # with --steps 0 the training set only sets the vocabulary kept
        val_dir=val_dir,
        out_dir=tmp_path / "run",
        progress=False,
    )
    t, s = report.teacher, report.student
    vocab = report.student_structure["vocabulary"]
    assert vocab["vocab_before"] == 57525 and vocab["vocab_after"] < 1000
    assert s.parameters < 0.75 * t.parameters
    assert 0.43 < s.density["prunable_density_vs_teacher"] <= 0.46  # structure alone: 0.446
    assert s.latency["ms_per_doc_batch1_p50"] < t.latency["ms_per_doc_batch1_p50"]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["history"] == []
    reloaded, _ = load_model(tmp_path / "run" / "model")
    assert list(reloaded.config.encoder.depths) == [1, 1, 4, 2]
    assert reloaded.config.decoder.decoder_layers == 2
    assert reloaded.config.decoder.vocab_size == vocab["vocab_after"]


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_a_student_can_read_smaller_images_than_its_teacher(tiny_setup, tmp_path):
    docs = [s.gt_parse for s in read_dataset(tiny_setup["train"])]
    teacher = save_model(*new_model("tiny", documents=docs, image_size=(320, 320)), tmp_path / "teacher")
    overrides = {"distill.hidden_encoder": 0.0, "train.steps": 0}
    with pytest.raises(StudentError, match="too small"):  # Swin's last stage would hold less than a window
        compress(
            load_recipe(
                CONFIGS / "tiny.yaml", CompressRecipe, overrides={**overrides, "student.image_size": [96, 96]}
            ),
            teacher_path=teacher,
            train_dir=None,
            val_dir=tiny_setup["val"],
            out_dir=tmp_path / "small",
            progress=False,
        )
    recipe = load_recipe(
        CONFIGS / "tiny.yaml",
        CompressRecipe,
        overrides={
            "student.image_size": [160, 160],  # teacher: 320 x 320
            "distill.hidden_encoder": 0.0,
            "train.steps": 4,
            "train.eval_every": 4,
            "train.eval_samples": 2,
            "train.max_new_tokens": 8,
            "train.processes": 2,  # distillation in two processes: teacher, pruner and resizing go along
            "report.cka_samples": 4,
            "report.latency_samples": 2,
            "report.latency_repeats": 1,
            "report.eval_samples": 2,
        },
    )
    report = compress(
        recipe,
        teacher_path=teacher,
        train_dir=tiny_setup["train"],
        val_dir=tiny_setup["val"],
        out_dir=tmp_path / "run",
        progress=False,
    )
    model, processor = load_model(tmp_path / "run" / "model")
    assert list(model.config.encoder.image_size) == [160, 160]
    assert processor_size(processor) == (160, 160)
    assert report.student_structure["image_size"] == [160, 160]
    assert 0.0 <= report.cka["global"] <= 1.0 and [h["step"] for h in report.history] == [4]
    image = read_dataset(tiny_setup["val"])[0].image_path
    pixels = processor(Image.open(image).convert("RGB"), return_tensors="pt").pixel_values
    assert tuple(pixels.shape[-2:]) == (160, 160)


def test_the_teacher_batch_resized_is_what_the_student_processor_makes(tiny_setup):
    _, teacher_processor = load_model(tiny_setup["teacher"])
    small = student_processor(teacher_processor, [80, 80])
    image = Image.open(read_dataset(tiny_setup["val"])[0].image_path).convert("RGB")
    direct = small(image, return_tensors="pt").pixel_values
    resized = resize_pixels(teacher_processor(image, return_tensors="pt").pixel_values, (80, 80))
    assert direct.shape == resized.shape == (1, 3, 80, 80)
    assert (direct - resized).abs().mean() < 0.1  # pixel values span [-1, 1]: the same picture
    assert student_processor(teacher_processor, None) is teacher_processor
    with pytest.raises(StudentError, match="aspect ratio"):
        student_processor(teacher_processor, [80, 120])


def test_a_resized_student_recipe_needs_no_encoder_mse():
    with pytest.raises(RecipeError, match="hidden_encoder"):
        load_recipe(CONFIGS / "tiny.yaml", CompressRecipe, overrides={"student.image_size": [128, 128]})
    with pytest.raises(RecipeError, match="height, width"):
        load_recipe(
            CONFIGS / "tiny.yaml",
            CompressRecipe,
            overrides={"student.image_size": [128], "distill.hidden_encoder": 0.0},
        )


def test_a_student_learns_from_scans_rendered_by_its_recipe(tiny_setup, tmp_path):
    """A 'data' curriculum renders the student's training scans (here in their own page shapes, fitted to
    the tiny input as a reader fits them): no training folder, the same distillation, report and model."""
    curriculum = {
        "seed": 3,
        "stages": [{"mix": {"shipping_label": 1, "delivery_note": 1}, "page_shapes": 1.0}],
    }
    overrides = {
        "data": curriculum,
        "train.steps": 4,
        "train.eval_every": 4,
        "train.eval_samples": 2,
        "train.max_new_tokens": 8,
        "train.log_every": 1,
        "report.cka_samples": 4,
        "report.latency_samples": 2,
        "report.latency_repeats": 1,
        "report.eval_samples": 2,
    }
    recipe = load_recipe(CONFIGS / "tiny.yaml", CompressRecipe, overrides=overrides)
    with pytest.raises(ValueError, match="drop --train"):  # one source of training scans, not two
        compress(
            recipe,
            teacher_path=tiny_setup["teacher"],
            train_dir=tiny_setup["train"],
            val_dir=tiny_setup["val"],
            out_dir=tmp_path / "both",
            progress=False,
        )
    report = compress(
        recipe,
        teacher_path=tiny_setup["teacher"],
        train_dir=None,
        val_dir=tiny_setup["val"],
        out_dir=tmp_path / "run",
        progress=False,
    )
    assert [h["step"] for h in report.history] == [4]
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and all(e["kd"] >= 0 for e in logged)
    assert load_recipe(tmp_path / "run" / "recipe.yaml", CompressRecipe).data == recipe.data
    assert (
        len(
            DonutReader.from_path(tmp_path / "run" / "model", max_new_tokens=4).predict(
                [s.image_path for s in read_dataset(tiny_setup["val"])[:1]]
            )
        )
        == 1
    )
    with pytest.raises(RecipeError, match=r"prune\.vocabulary"):
        load_recipe(CONFIGS / "tiny.yaml", CompressRecipe, overrides={**overrides, "prune.vocabulary": True})


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_a_one_layer_student_learns_where_its_teacher_looks(tiny_setup, tmp_path):
    """distill.attention with a shallow student (its one layer: the teacher's last), in two processes: the
    term is logged, the student keeps one layer, and both decoders read as before once training ends."""
    overrides = {
        "student.decoder_layers": 1,
        "student.selection": "last",
        "distill.attention": 1.0,
        "train.steps": 3,
        "train.eval_every": 3,
        "train.eval_samples": 2,
        "train.max_new_tokens": 8,
        "train.log_every": 1,
        "train.processes": 2,
        "report.cka_samples": 4,
        "report.latency_samples": 2,
        "report.latency_repeats": 1,
        "report.eval_samples": 2,
    }
    recipe = load_recipe(CONFIGS / "tiny.yaml", CompressRecipe, overrides=overrides)
    report = compress(
        recipe,
        teacher_path=tiny_setup["teacher"],
        train_dir=tiny_setup["train"],
        val_dir=tiny_setup["val"],
        out_dir=tmp_path / "run",
        progress=False,
    )
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all(record["attention"] > 0 for record in logged)
    assert json.loads((tmp_path / "run" / "layer_map.json").read_text())["decoder_layers"] == [1]
    assert report.student_structure["decoder_layers"] == [1]  # the teacher layer kept
    student, _ = load_model(tmp_path / "run" / "model")
    assert student.config.decoder.decoder_layers == 1

    teacher, _ = load_model(tiny_setup["teacher"])
    own = teacher.decoder.config._attn_implementation
    objective = DistillObjective(
        teacher, weights=recipe.distill, layer_map=LayerMap([[0]], [1], [1], 2), pad_token_id=1
    )
    assert teacher.decoder.config._attn_implementation == "eager"
    objective.restore(student)
    assert teacher.decoder.config._attn_implementation == student.decoder.config._attn_implementation == own


def test_compress_without_a_terminal_prints_progress_lines(tiny_setup, tmp_path, monkeypatch):
    from donut_hole.compression import train as training

    monkeypatch.setattr(training, "PLAIN_EVERY_S", 0.0)  # a line at every log step, not once a minute
    sets = [*SMALL_REPORT, "train.max_new_tokens=4", "train.log_every=1", "train.eval_every=100"]
    result = _compress_tiny(tiny_setup, tmp_path / "run", steps=2, sets=sets, train=True)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("training: step ")]
    assert [line.split(",")[0] for line in lines] == ["training: step 1/2", "training: step 2/2"]
    assert "loss " in lines[-1] and "min left" in lines[-1]
