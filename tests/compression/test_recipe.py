from pathlib import Path

import pytest

from donut_hole.compression.recipe import CompressRecipe, RecipeError, TeacherRecipe, load_recipe, save_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "donut-base.yaml", "donut-hole-small.yaml"])
def test_shipped_compression_recipes_validate(name):
    recipe = load_recipe(CONFIGS / name, CompressRecipe)
    assert 0 < recipe.prune.target_density <= 0.46


def test_overrides_and_round_trip(tmp_path):
    recipe = load_recipe(
        CONFIGS / "tiny.yaml", CompressRecipe, overrides={"train.steps": 0, "train.device": "cpu"}
    )
    assert recipe.train.steps == 0 and recipe.train.device == "cpu"
    again = load_recipe(save_recipe(recipe, tmp_path / "r.yaml"), CompressRecipe)
    assert again == recipe


def test_errors_name_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {preset: huge}\n")
    with pytest.raises(RecipeError, match=r"model\.preset"):
        load_recipe(path, TeacherRecipe)
    path.write_text("train: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path, TeacherRecipe)
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.yaml", TeacherRecipe)
    path.write_text("student: {encoder_depths: [1], decoder_layers: 0}\n")
    with pytest.raises(RecipeError, match=r"student\.decoder_layers"):
        load_recipe(path, CompressRecipe)
    path.write_text(
        "student: {encoder_depths: [1], decoder_layers: 1, image_size: [64, 64]}\n"
        "distill: {hidden_encoder: 0, attention: 1.0}\n"
    )
    with pytest.raises(RecipeError, match=r"distill\.attention to 0"):
        load_recipe(path, CompressRecipe)


def test_default_model_recipes_fit_together():
    """teacher-small builds (window fits the image) and donut-hole-small derives a student from it."""
    from donut_hole.compression.student import derive_student
    from donut_hole.compression.teacher import teacher_preset
    from donut_hole.model.build import count_parameters, new_model

    teacher_recipe = load_recipe(CONFIGS / "teacher-small.yaml", TeacherRecipe)
    student_recipe = load_recipe(CONFIGS / "donut-hole-small.yaml", CompressRecipe)
    spec = teacher_preset(teacher_recipe)
    teacher, _ = new_model(spec, documents=[{"a": "1"}], image_size=teacher_recipe.model.image_size)
    assert 5_000_000 < count_parameters(teacher) < 12_000_000  # a few tens of MB at most in models/
    student, _ = derive_student(teacher, student_recipe.student)
    assert count_parameters(student) < 0.7 * count_parameters(teacher)


def test_an_unknown_preset_override_is_an_error_not_ignored():
    from donut_hole.compression.teacher import teacher_preset

    recipe = TeacherRecipe.model_validate({"model": {"overrides": {"depths": [2, 2, 4, 2], "extra": {}}}})
    with pytest.raises(RecipeError, match=r"model\.overrides: unknown preset field\(s\) extra; known: "):
        teacher_preset(recipe)
    recipe = TeacherRecipe.model_validate({"model": {"overrides": {"depths": [2, 2, 4, 2]}}})
    assert teacher_preset(recipe).depths == (2, 2, 4, 2)
