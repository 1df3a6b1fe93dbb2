"""Student derivation: layer selection, exact weight copy, parameter counts, and the layer map."""

from __future__ import annotations

import pytest
import torch
from transformers import VisionEncoderDecoderModel

from donut_hole.compression.prune import prunable_weights
from donut_hole.compression.recipe import CompressRecipe, StudentConfig
from donut_hole.compression.student import (
    LayerMap,
    StudentError,
    build_student,
    derive_student,
    select_layers,
    teacher_key,
)
from donut_hole.model.build import count_parameters, new_model

DOCS = [{"document_type": "shipping_label", "tracking_number": "1Z999", "weight": "2.5 kg"}]


@pytest.fixture(scope="module")
def tiny() -> VisionEncoderDecoderModel:
    model, _ = new_model("tiny", documents=DOCS, image_size=(160, 160))
    return model


@pytest.fixture(scope="module")
def donut_base() -> VisionEncoderDecoderModel:
    """The donut-base layout with random weights (~200M parameters); built once, never run forward."""
    model, _ = new_model("donut-base", documents=DOCS)
    return model


def swin_block_params(dim: int, heads: int, window: int, mlp_ratio: float = 4.0) -> int:
    hidden = int(mlp_ratio * dim)
    norms = 2 * (2 * dim)
    attention = 4 * (dim * dim + dim) + (2 * window - 1) ** 2 * heads  # q, k, v, out + relative bias table
    ffn = (dim * hidden + hidden) + (hidden * dim + dim)
    return norms + attention + ffn


def decoder_layer_params(d_model: int, ffn: int) -> int:
    attention = 2 * 4 * (d_model * d_model + d_model)  # self- and cross-attention
    return attention + 3 * (2 * d_model) + (d_model * ffn + ffn) + (ffn * d_model + d_model)


def test_select_layers() -> None:
    assert select_layers(14, 6) == [0, 3, 5, 8, 10, 13]
    assert select_layers(4, 2) == [0, 3]
    assert select_layers(2, 2) == [0, 1]
    assert select_layers(5, 1) == [0]
    assert select_layers(14, 6, "first") == [0, 1, 2, 3, 4, 5]
    assert select_layers(4, 1, "last") == [3]
    assert select_layers(14, 3, "last") == [11, 12, 13]
    assert select_layers(7, 7) == list(range(7))
    with pytest.raises(StudentError):
        select_layers(4, 5)
    with pytest.raises(StudentError):
        select_layers(4, 0)
    with pytest.raises(StudentError, match="unknown selection"):
        select_layers(4, 2, "random")  # type: ignore[arg-type]


def test_layer_map_pairs_and_json() -> None:
    m = LayerMap([[0, 1], [0, 1], [0, 3, 5, 8, 10, 13], [0, 1]], [0, 3], [2, 2, 14, 2], 4)
    assert m.hidden_pairs() == {"encoder": [(1, 1), (2, 2), (3, 3), (4, 4)], "decoder": [(1, 1), (4, 2)]}
    assert LayerMap.from_json(m.to_json()) == m
    assert teacher_key("encoder.encoder.layers.2.blocks.3.output.dense.weight", m) == (
        "encoder.encoder.layers.2.blocks.8.output.dense.weight"
    )
    assert teacher_key("decoder.lm_head.weight", m) == "decoder.lm_head.weight"


def test_donut_base_student_params_and_exact_copy(donut_base: VisionEncoderDecoderModel) -> None:
    teacher = donut_base
    student, layer_map = derive_student(teacher, StudentConfig(encoder_depths=[2, 2, 6, 2], decoder_layers=2))

    # 8 Swin blocks of stage 2 (dim 512, 16 heads, window 10) and 2 decoder layers (1024 / 4096) are gone.
    assert swin_block_params(512, 16, 10) == 3_158_160
    assert decoder_layer_params(1024, 4096) == 16_796_672
    expected_drop = 8 * 3_158_160 + 2 * 16_796_672
    assert count_parameters(teacher) - count_parameters(student) == expected_drop == 58_858_624

    assert layer_map.encoder_blocks == [[0, 1], [0, 1], [0, 3, 5, 8, 10, 13], [0, 1]]
    assert layer_map.decoder_layers == [0, 3]
    assert layer_map.hidden_pairs()["decoder"] == [(1, 1), (4, 2)]

    # Config: a copy of the teacher's with only depths and decoder_layers changed.
    expected = teacher.config.to_dict()
    expected["encoder"]["depths"] = [2, 2, 6, 2]
    expected["decoder"]["decoder_layers"] = 2
    assert student.config.to_dict() == expected
    assert list(teacher.config.encoder.depths) == [2, 2, 14, 2]  # the teacher is untouched

    # Every student tensor equals the teacher tensor it was copied from.
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, tensor in s_state.items():
        assert torch.equal(tensor, t_state[teacher_key(key, layer_map)]), key
    prefix = "encoder.encoder.layers.2.blocks."
    assert torch.equal(
        s_state[prefix + "2.attention.self.query.weight"], t_state[prefix + "5.attention.self.query.weight"]
    )
    dec = "decoder.model.decoder.layers."
    assert torch.equal(s_state[dec + "1.fc2.weight"], t_state[dec + "3.fc2.weight"])
    assert not torch.equal(s_state[dec + "1.fc2.weight"], t_state[dec + "1.fc2.weight"])
    # Embeddings and lm_head stay tied, as in the teacher.
    assert (
        student.decoder.lm_head.weight.data_ptr()
        == student.decoder.model.decoder.embed_tokens.weight.data_ptr()
    )


def test_same_depth_student_gives_identical_logits(tiny: VisionEncoderDecoderModel) -> None:
    student, layer_map = derive_student(tiny, StudentConfig(encoder_depths=[2, 2, 2, 2], decoder_layers=2))
    assert layer_map.encoder_blocks == [[0, 1]] * 4 and layer_map.decoder_layers == [0, 1]
    assert student.training == tiny.training
    pixels = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[tiny.config.decoder_start_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        a = tiny(pixel_values=pixels, decoder_input_ids=ids).logits
        b = student(pixel_values=pixels, decoder_input_ids=ids).logits
    assert torch.equal(a, b)


def test_hidden_pairs_index_states_of_equal_shape(tiny: VisionEncoderDecoderModel) -> None:
    student, layer_map = derive_student(tiny, StudentConfig(encoder_depths=[1, 1, 2, 1], decoder_layers=1))
    assert layer_map.decoder_layers == [0]
    assert count_parameters(student) < count_parameters(tiny)
    pixels = torch.randn(1, 3, 160, 160)
    ids = torch.tensor([[tiny.config.decoder_start_token_id, 5, 6]])
    with torch.no_grad():
        t = tiny(pixel_values=pixels, decoder_input_ids=ids, output_hidden_states=True)
        s = student(pixel_values=pixels, decoder_input_ids=ids, output_hidden_states=True)
    pairs = layer_map.hidden_pairs()
    assert pairs["encoder"] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    for ti, si in pairs["encoder"]:
        assert t.encoder_hidden_states[ti].shape == s.encoder_hidden_states[si].shape
    for ti, si in pairs["decoder"]:
        assert t.decoder_hidden_states[ti].shape == s.decoder_hidden_states[si].shape
    # The patch embedding (index 0) is copied, so it is identical on both sides.
    assert torch.equal(t.encoder_hidden_states[0], s.encoder_hidden_states[0])


def test_bad_specs_are_refused(tiny: VisionEncoderDecoderModel) -> None:
    with pytest.raises(StudentError, match="Swin stages"):
        derive_student(tiny, StudentConfig(encoder_depths=[2, 2, 2], decoder_layers=1))
    with pytest.raises(StudentError, match="cannot keep 3 of 2"):
        derive_student(tiny, StudentConfig(encoder_depths=[2, 2, 3, 2], decoder_layers=1))
    with pytest.raises(StudentError, match="cannot keep 3 of 2"):
        derive_student(tiny, StudentConfig(encoder_depths=[2, 2, 2, 2], decoder_layers=3))


def test_a_grown_student_reads_as_the_one_it_grew_from(tiny: VisionEncoderDecoderModel, tmp_path) -> None:
    one, _ = derive_student(
        tiny, StudentConfig(encoder_depths=[1, 1, 2, 1], decoder_layers=1, selection="last")
    )
    with torch.no_grad():  # a "trained" one-layer student: weights of its own, not the teacher's
        for weight in one.parameters():
            weight.add_(0.02 * torch.randn_like(weight))
    one.eval().save_pretrained(tmp_path / "one")
    spec = StudentConfig(
        encoder_depths=[1, 1, 2, 1], decoder_layers=2, selection="last", grow_from=str(tmp_path / "one")
    )
    two, layer_map = derive_student(tiny, spec)
    two.eval().save_pretrained(tmp_path / "two")
    assert layer_map.decoder_layers == [0, 1]  # for distillation it pairs with the teacher's layers as before
    pixels = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[tiny.config.decoder_start_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        assert torch.equal(
            one(pixel_values=pixels, decoder_input_ids=ids).logits,
            two(pixel_values=pixels, decoder_input_ids=ids).logits,
        )
    new = two.decoder.model.decoder.layers[1]
    assert not new.fc2.weight.any() and not new.encoder_attn.out_proj.bias.any()
    assert torch.equal(new.fc1.weight, one.decoder.model.decoder.layers[0].fc1.weight)  # learns from there

    other = spec.model_copy(update={"encoder_depths": [2, 2, 2, 2]})
    with pytest.raises(StudentError, match="this student's encoder"):
        derive_student(tiny, other)
    with pytest.raises(StudentError, match="at most its 1 decoder layers"):
        derive_student(
            tiny, spec.model_copy(update={"decoder_layers": 1, "grow_from": str(tmp_path / "two")})
        )
    same, _ = derive_student(tiny, spec.model_copy(update={"decoder_layers": 1}))  # goes on from it
    assert all(
        torch.equal(a, b) for a, b in zip(same.state_dict().values(), one.state_dict().values(), strict=True)
    )


def test_build_student_derives_removes_ffn_neurons_and_leaves_the_rest_to_magnitude_pruning(
    tiny: VisionEncoderDecoderModel,
) -> None:
    recipe = CompressRecipe.model_validate(
        {
            "student": {"encoder_depths": [1, 1, 2, 1], "decoder_layers": 1},
            "prune": {"ffn_keep_ratio": 0.5, "target_density": 0.2},
        }
    )
    student = build_student(tiny, recipe)
    layers, layer_map = derive_student(tiny, recipe.student)
    assert student.layer_map == layer_map
    assert count_parameters(student.model) < count_parameters(layers)  # FFN neurons removed
    ffn = student.structure["ffn_pruning"]
    assert (
        ffn["params_before"]
        == count_parameters(layers)
        == student.structure["parameters_after_layer_selection"]
    )
    assert ffn["params_after"] == count_parameters(student.model)
    teacher_prunable = sum(w.numel() for w in prunable_weights(tiny).values())
    own = sum(w.numel() for w in prunable_weights(student.model).values())
    assert student.density == pytest.approx(0.2 * teacher_prunable / own)
    assert student.structure["unstructured_density_over_student"] == student.density
    generous = recipe.model_copy(update={"prune": recipe.prune.model_copy(update={"target_density": 1.0})})
    assert build_student(tiny, generous).density == 1.0  # structure alone is below the target
