"""Distillation losses on explicit tensors with hand-computed values, and once on a real tiny DONUT."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from donut_hole.compression.distill import (
    attention_kd_loss,
    ce_loss,
    distillation_loss,
    hidden_loss,
    kd_loss,
    shift_for_decoder,
)
from donut_hole.compression.recipe import DistillConfig, StudentConfig
from donut_hole.compression.student import LayerMap, derive_student
from donut_hole.model.build import new_model

LN3 = math.log(3.0)

# --- shift ------------------------------------------------------------------------------------------------


def test_shift_for_decoder_explicit() -> None:
    ids = torch.tensor([[5, 7, 8, 2, 0, 0], [5, 9, 2, 0, 0, 0]])  # <task> ... </s>(2) <pad>(0)
    inputs, labels = shift_for_decoder(ids, pad_token_id=0)
    assert inputs.tolist() == [[5, 7, 8, 2, 0], [5, 9, 2, 0, 0]]
    assert labels.tolist() == [[7, 8, 2, -100, -100], [9, 2, -100, -100, -100]]
    assert ids.tolist()[0] == [5, 7, 8, 2, 0, 0]  # the input is not modified


def test_shift_for_decoder_masks_prompt_tokens() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 2, 1]])  # a 3-token prompt, pad id 1
    inputs, labels = shift_for_decoder(ids, pad_token_id=1, prompt_length=3)
    assert inputs.tolist() == [[5, 6, 7, 8, 2]]
    assert labels.tolist() == [[-100, -100, 8, 2, -100]]


def test_shift_for_decoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        shift_for_decoder(torch.tensor([[5]]), pad_token_id=0)
    with pytest.raises(ValueError, match="prompt_length"):
        shift_for_decoder(torch.tensor([[5, 6]]), pad_token_id=0, prompt_length=0)


# --- cross-entropy ----------------------------------------------------------------------------------------


def test_ce_loss_known_values_and_masking() -> None:
    assert ce_loss(torch.zeros(1, 1, 4), torch.tensor([[3]])).item() == pytest.approx(math.log(4))
    logits = torch.tensor([[[2.0, 0.0, 0.0], [50.0, -50.0, 9.0]]])  # the second position is ignored
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert ce_loss(logits, torch.tensor([[0, -100]])).item() == pytest.approx(expected)


def test_ce_loss_matches_torch_and_handles_all_ignored() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, 3:] = -100
    reference = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(ce_loss(logits, labels), reference)
    logits.requires_grad_(True)
    empty = ce_loss(logits, torch.full((2, 5), -100))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
    with pytest.raises(ValueError, match="do not match"):
        ce_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))


# --- KL on logits -----------------------------------------------------------------------------------------


def test_kd_loss_of_identical_logits_is_zero() -> None:
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))
    assert kd_loss(logits, logits.clone(), torch.ones(2, 3, dtype=torch.bool), 2.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_kd_loss_hand_computed_two_tokens() -> None:
    student = torch.tensor([[[0.0, 0.0], [0.0, LN3]]])  # q = (1/2, 1/2), then (1/4, 3/4)
    teacher = torch.tensor([[[0.0, LN3], [0.0, 0.0]]])  # p = (1/4, 3/4), then (1/2, 1/2)
    kl_1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_2 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    value = kd_loss(student, teacher, torch.tensor([[True, True]]), temperature=1.0)
    assert value.item() == pytest.approx((kl_1 + kl_2) / 2, rel=1e-6)
    assert value.item() == pytest.approx(0.1373265, rel=1e-5)


def test_kd_loss_temperature_squared_scaling() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    # softmax(T*x / T) = softmax(x): scaling the logits by T leaves only the T² factor.
    for temperature in (2.0, 4.0):
        scaled = kd_loss(s * temperature, t * temperature, mask, temperature)
        assert scaled.item() == pytest.approx(temperature**2 * kd_loss(s, t, mask, 1.0).item(), rel=1e-5)


def test_kd_loss_ignores_masked_positions() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 3, 5, generator=g), torch.randn(1, 3, 5, generator=g)
    mask = torch.tensor([[True, False, True]])
    t_garbage = t.clone()
    t_garbage[0, 1] = 1000.0 * torch.randn(5, generator=g)
    expected = kd_loss(s[:, [0, 2]], t[:, [0, 2]], torch.ones(1, 2, dtype=torch.bool), 2.0)
    assert kd_loss(s, t_garbage, mask, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_loss_gradient_reaches_only_the_student() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(1, 2, 4, generator=g, requires_grad=True)
    t = torch.randn(1, 2, 4, generator=g, requires_grad=True)
    kd_loss(s, t, torch.ones(1, 2, dtype=torch.bool), 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_loss_errors() -> None:
    with pytest.raises(ValueError, match="share the tokenizer"):
        kd_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.ones(1, 1, dtype=torch.bool), 0.0)


# --- hidden states ----------------------------------------------------------------------------------------


def test_hidden_loss_known_value_pairs_and_mask() -> None:
    student = [torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]
    teacher = [torch.ones(1, 2, 2), torch.full((1, 2, 2), 3.0), torch.ones(1, 2, 2)]
    assert hidden_loss(student, teacher, [(0, 0)]).item() == 1.0
    assert hidden_loss(student, teacher, [(0, 0), (1, 0)]).item() == 5.0  # (1 + 9) / 2
    assert hidden_loss(student, teacher, [(2, 1)]).item() == 0.0
    teacher_masked = [torch.tensor([[[1.0, 1.0], [100.0, 100.0]]])]
    mask = torch.tensor([[True, False]])
    assert hidden_loss(student[:1], teacher_masked, [(0, 0)], mask).item() == 1.0


def test_hidden_loss_errors_and_gradient() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        hidden_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 4)], [(0, 0)])
    with pytest.raises(IndexError, match="outside"):
        hidden_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], [(1, 0)])
    with pytest.raises(ValueError, match="at least one"):
        hidden_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], [])
    s = torch.zeros(1, 2, 3, requires_grad=True)
    t = torch.ones(1, 2, 3, requires_grad=True)
    hidden_loss([s], [t], [(0, 0)]).backward()
    assert s.grad is not None and t.grad is None


# --- the combined objective -------------------------------------------------------------------------------


def _outputs(seed: int, *, requires_grad: bool) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    return SimpleNamespace(
        logits=r(2, 3, 5),
        encoder_hidden_states=tuple(r(2, 4, 8) for _ in range(3)),
        decoder_hidden_states=tuple(r(2, 3, 6) for _ in range(3)),
    )


def test_distillation_loss_is_the_weighted_sum() -> None:
    student, teacher = _outputs(0, requires_grad=True), _outputs(1, requires_grad=True)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    layer_map = LayerMap([[0], [0]], [1], [1, 1], 2)  # encoder pairs (1, 1), (2, 2); decoder (2, 1)
    weights = DistillConfig(ce=0.5, kd=2.0, hidden_encoder=0.25, hidden_decoder=4.0, temperature=3.0)
    total, parts = distillation_loss(student, teacher, labels, weights=weights, layer_map=layer_map)

    mask = labels != -100
    ce = ce_loss(student.logits, labels)
    kd = kd_loss(student.logits, teacher.logits, mask, 3.0)
    he = hidden_loss(student.encoder_hidden_states, teacher.encoder_hidden_states, [(1, 1), (2, 2)])
    hd = hidden_loss(student.decoder_hidden_states, teacher.decoder_hidden_states, [(2, 1)], mask)
    expected = 0.5 * ce + 2.0 * kd + 0.25 * he + 4.0 * hd
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["ce"] == pytest.approx(ce.item()) and parts["kd"] == pytest.approx(kd.item())
    assert parts["hidden_encoder"] == pytest.approx(he.item())
    assert parts["hidden_decoder"] == pytest.approx(hd.item())
    assert parts["total"] == pytest.approx(total.item())

    total.backward()
    assert student.logits.grad is not None and student.encoder_hidden_states[1].grad is not None
    assert teacher.logits.grad is None
    assert all(h.grad is None for h in teacher.encoder_hidden_states + teacher.decoder_hidden_states)


def test_distillation_loss_skips_zero_weights_and_needs_hidden_states() -> None:
    student, teacher = _outputs(0, requires_grad=False), _outputs(1, requires_grad=False)
    labels = torch.tensor([[1, 2, 3], [3, 4, -100]])
    layer_map = LayerMap([[0], [0]], [0, 1], [1, 1], 2)
    total, parts = distillation_loss(
        student, teacher, labels, weights=DistillConfig(kd=0.0), layer_map=layer_map
    )
    assert set(parts) == {"ce", "total"} and total.item() == pytest.approx(parts["ce"])
    no_states = SimpleNamespace(logits=student.logits, encoder_hidden_states=None, decoder_hidden_states=None)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        distillation_loss(
            no_states, teacher, labels, weights=DistillConfig(hidden_encoder=1.0), layer_map=layer_map
        )
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        DistillConfig(kd=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0.0)


def test_distillation_on_a_tiny_donut() -> None:
    """A student identical to its teacher has zero KL and hidden loss; only the student gets gradients."""
    teacher, processor = new_model("tiny", documents=[{"a": "1"}], image_size=(160, 160))
    student, layer_map = derive_student(teacher, StudentConfig(encoder_depths=[2, 2, 2, 2], decoder_layers=2))
    pad = processor.tokenizer.pad_token_id
    start = teacher.config.decoder_start_token_id
    ids = torch.tensor([[start, 10, 11, 12, 2], [start, 13, 2, pad, pad]])
    decoder_input_ids, labels = shift_for_decoder(ids, pad_token_id=pad)
    pixels = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_out = teacher(pixel_values=pixels, decoder_input_ids=decoder_input_ids, output_hidden_states=True)
    s_out = student(pixel_values=pixels, decoder_input_ids=decoder_input_ids, output_hidden_states=True)
    weights = DistillConfig(ce=1.0, kd=1.0, hidden_encoder=1.0, hidden_decoder=1.0)
    total, parts = distillation_loss(s_out, t_out, labels, weights=weights, layer_map=layer_map)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-6)
    assert parts["hidden_encoder"] == pytest.approx(0.0, abs=1e-10)
    assert parts["hidden_decoder"] == pytest.approx(0.0, abs=1e-10)
    assert parts["ce"] == pytest.approx(ce_loss(t_out.logits, labels).item(), rel=1e-6)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.decoder.model.decoder.layers[0].fc1.weight.grad is not None


def test_attention_kd_loss_values_mask_and_shapes() -> None:
    """KL(teacher || student) per counted position over the encoder cells; equal maps give zero."""
    teacher = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])  # (B=1, T=2, S=4)
    student = torch.full((1, 2, 4), 0.25, requires_grad=True)
    mask = torch.tensor([[True, False]])
    loss = attention_kd_loss(student, teacher, mask)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-4)  # 2 x 0.5 log(0.5 / 0.25); masked row skipped
    assert attention_kd_loss(teacher, teacher, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(0)
    loss.backward()
    assert student.grad is not None
    with pytest.raises(ValueError, match="teacher's input size"):
        attention_kd_loss(torch.full((1, 2, 8), 0.125), teacher, mask)


def test_shallow_student_learns_where_the_teacher_looks() -> None:
    """A one-layer student kept from the teacher's last layer: the attention term is computed from eager
    cross-attention maps, needs them, and its gradient reaches the student's cross-attention."""
    teacher, processor = new_model("tiny", documents=[{"a": "1"}], image_size=(160, 160))
    student, layer_map = derive_student(
        teacher, StudentConfig(encoder_depths=[2, 2, 2, 2], decoder_layers=1, selection="last")
    )
    assert layer_map.decoder_layers == [teacher.config.decoder.decoder_layers - 1]
    for model in (teacher, student):
        model.decoder.set_attn_implementation("eager")
    pad = processor.tokenizer.pad_token_id
    ids = torch.tensor([[teacher.config.decoder_start_token_id, 10, 11, 2]])
    decoder_input_ids, labels = shift_for_decoder(ids, pad_token_id=pad)
    pixels = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    inputs = {"pixel_values": pixels, "decoder_input_ids": decoder_input_ids}
    with torch.no_grad():
        t_out = teacher(**inputs, output_attentions=True)
    s_out = student(**inputs, output_attentions=True)
    weights = DistillConfig(ce=0.0, kd=0.0, attention=1.0)
    total, parts = distillation_loss(s_out, t_out, labels, weights=weights, layer_map=layer_map)
    assert parts["attention"] > 0
    total.backward()
    assert student.decoder.model.decoder.layers[0].encoder_attn.q_proj.weight.grad is not None
    with pytest.raises(ValueError, match="cross_attentions"):
        distillation_loss(student(**inputs), t_out, labels, weights=weights, layer_map=layer_map)
