from pathlib import Path

import pytest

from donut_hole.compression.recipe import CompressRecipe, RecipeError, TeacherRecipe, load_recipe, save_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "donut-base.yaml"])
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
