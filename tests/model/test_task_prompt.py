"""The task prompt: given, else the config's start id, else the tokenizer's one task token, else an error."""

from __future__ import annotations

import pytest

from donut_hole.model.build import ModelLoadError, load_model, resolve_task_prompt, task_token_of, task_tokens


def _forget_start_id(model) -> None:
    model.config.decoder_start_token_id = None
    model.config.decoder.decoder_start_token_id = None


def test_the_config_start_id_comes_first(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    assert resolve_task_prompt(model, processor) == "<s_logistics>" == task_token_of(model, processor)


def test_the_tokenizer_s_single_task_token_when_the_config_has_none(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    _forget_start_id(model)
    assert task_tokens(processor.tokenizer) == ["<s_logistics>"]  # field tags such as <s_weight> pair up
    assert resolve_task_prompt(model, processor) == "<s_logistics>"
    assert model.config.decoder_start_token_id == processor.tokenizer.convert_tokens_to_ids("<s_logistics>")


def test_a_given_prompt_wins_and_must_be_a_token(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    assert resolve_task_prompt(model, processor, "<s_weight>") == "<s_weight>"
    with pytest.raises(ModelLoadError, match=r"<s_other>.*<s_logistics>"):
        resolve_task_prompt(model, processor, "<s_other>")


def test_no_start_id_and_no_task_token_names_the_option(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    _forget_start_id(model)
    processor.tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<s_two>"]}, replace_extra_special_tokens=False
    )
    with pytest.raises(ModelLoadError, match="--task-prompt"):
        resolve_task_prompt(model, processor)
    with pytest.raises(ModelLoadError, match="--task-prompt"):
        task_token_of(model, processor)
