"""Pruning: schedules, exact masks, gradual magnitude pruning, FFN removal, 2:4, and density accounting."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import VisionEncoderDecoderModel

from donut_hole.compression.prune import (
    MagnitudePruner,
    apply_semi_structured_,
    compute_masks,
    cubic_density,
    default_filter,
    density_report,
    density_schedule,
    ffn_neuron_scores,
    keep_count,
    magnitude_scores,
    make_permanent_,
    prunable_weights,
    prune_ffn_,
    semi_structured_masks,
    swin_ffn_plan,
    top_k_mask,
    top_neurons,
)
from donut_hole.compression.recipe import StudentConfig
from donut_hole.compression.student import derive_student
from donut_hole.model.build import count_parameters, load_model, new_model, save_model

DOCS = [{"document_type": "shipping_label", "tracking_number": "1Z999", "weight": "2.5 kg"}]

# tiny preset: Swin widths 32, 64, 128, 256 (2 blocks each, mlp_ratio 4); decoder 2 layers, d_model 256,
# ffn 1024.
# A Swin block has 4 dim² attention weights + 2 · 4 dim² FFN weights = 12 dim²; a decoder layer
# 8 d² attention weights (self + cross) + 2 · d · ffn.
TINY_PRUNABLE = 2 * 12 * (32**2 + 64**2 + 128**2 + 256**2) + 2 * (8 * 256**2 + 2 * 256 * 1024)


@pytest.fixture(scope="module")
def tiny_pair():
    return new_model("tiny", documents=DOCS, image_size=(160, 160))


@pytest.fixture
def tiny(tiny_pair) -> VisionEncoderDecoderModel:
    """A fresh copy per test (pruning changes models in place)."""
    return copy.deepcopy(tiny_pair[0])


def logits_of(model: VisionEncoderDecoderModel, seed: int = 0) -> torch.Tensor:
    pixels = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(seed))
    ids = torch.tensor([[model.config.decoder_start_token_id, 5, 6, 7]] * 2)
    with torch.no_grad():
        return model(pixel_values=pixels, decoder_input_ids=ids).logits


# --- schedules --------------------------------------------------------------------------------------------


def test_cubic_density_values() -> None:
    kw = {"start": 10, "end": 20, "final_density": 0.2}
    assert cubic_density(0, **kw) == 1.0 and cubic_density(10, **kw) == 1.0
    assert cubic_density(15, **kw) == pytest.approx(0.2 + 0.8 * 0.5**3)
    assert cubic_density(12, **kw) == pytest.approx(0.2 + 0.8 * 0.8**3)
    assert cubic_density(20, **kw) == 0.2 and cubic_density(1000, **kw) == 0.2
    assert cubic_density(15, **kw, initial_density=0.6) == pytest.approx(0.2 + 0.4 * 0.125)
    assert cubic_density(5, start=5, end=5, final_density=0.3) == 0.3  # a one-shot prune
    with pytest.raises(ValueError, match="end after"):
        cubic_density(0, start=5, end=4, final_density=0.3)
    with pytest.raises(ValueError, match="final_density"):
        cubic_density(0, start=0, end=4, final_density=1.5)


def test_density_schedule_is_monotone() -> None:
    schedule = density_schedule(30, start=5, end=25, final_density=0.1)
    assert len(schedule) == 30
    assert schedule[:6] == [1.0] * 6 and schedule[25:] == [0.1] * 5
    assert all(a >= b for a, b in itertools.pairwise(schedule))
    assert schedule == [cubic_density(s, start=5, end=25, final_density=0.1) for s in range(30)]


# --- masks ------------------------------------------------------------------------------------------------


def test_magnitude_scores_and_keep_count() -> None:
    w = torch.tensor([[-2.0, 0.5]], dtype=torch.float16, requires_grad=True)
    scores = magnitude_scores(w)
    assert scores.dtype == torch.float32 and not scores.requires_grad
    assert scores.tolist() == [[2.0, 0.5]]
    assert keep_count(10, 0.25) == 3 and keep_count(10, 0.24) == 2
    assert keep_count(7, 0.0) == 0 and keep_count(7, 1.0) == 7
    with pytest.raises(ValueError):
        keep_count(7, 1.1)


def test_top_k_mask_is_exact_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200,), generator=g).float()  # many ties
    for k in (0, 1, 37, 100, 199, 200):
        mask = top_k_mask(scores, k)
        assert int(mask.sum()) == k
        # Same as a stable descending sort: ties go to the lower index.
        expected = torch.zeros(200, dtype=torch.bool)
        expected[torch.argsort(scores, descending=True, stable=True)[:k]] = True
        assert torch.equal(mask, expected)


def test_compute_masks_layer_and_global() -> None:
    g = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(10, 7, generator=g), "b": 10 * torch.randn(3, 5, generator=g)}
    layer = compute_masks(params, density=0.3, scope="layer")
    assert int(layer["a"].sum()) == keep_count(70, 0.3) == 21 and int(layer["b"].sum()) == 5  # 4.5 → 5
    assert layer["a"].shape == (10, 7) and layer["a"].dtype == torch.bool
    kept = params["a"].abs()[layer["a"]]
    assert kept.min() >= params["a"].abs()[~layer["a"]].max()  # the largest magnitudes are kept

    glob = compute_masks(params, density=0.3, scope="global")
    assert sum(int(m.sum()) for m in glob.values()) == keep_count(85, 0.3) == 26
    assert int(glob["b"].sum()) > 5  # the ten-times larger tensor keeps more than its share
    assert all(torch.equal(glob[k], compute_masks(params, density=0.3, scope="global")[k]) for k in params)

    tied = {"x": torch.ones(2, 2), "y": torch.ones(2, 2)}
    masks = compute_masks(tied, density=0.5, scope="global")
    assert masks["x"].all() and not masks["y"].any()
    assert compute_masks(tied, density=0.5, scope="layer")["y"].tolist() == [[True, True], [False, False]]
    with pytest.raises(ValueError, match="scope"):
        compute_masks(params, density=0.3, scope="row")  # type: ignore[arg-type]


def test_default_filter_picks_linear_layers_of_blocks_and_decoder_layers(tiny) -> None:
    weights = prunable_weights(tiny)
    assert len(weights) == 8 * 6 + 2 * 10  # Swin block: q, k, v, out, fc1, fc2; decoder: 8 attention + 2 FFN
    assert sum(w.numel() for w in weights.values()) == TINY_PRUNABLE == 4_186_112
    names = " ".join(weights)
    for excluded in ("embed", "lm_head", "downsample", "norm", "patch"):
        assert excluded not in names
    assert default_filter(nn.Linear(2, 2), "decoder.model.decoder.layers.0.fc1")
    assert not default_filter(nn.LayerNorm(2), "decoder.model.decoder.layers.0.final_layer_norm")
    assert not default_filter(nn.Linear(2, 2), "decoder.lm_head")


# --- gradual magnitude pruning ----------------------------------------------------------------------------


def test_magnitude_pruner_follows_the_schedule(tiny) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    prunable = set(prunable_weights(tiny))
    pruner = MagnitudePruner(tiny, final_density=0.2, start_step=0, end_step=4, scope="global", every=2)

    assert pruner.step(0) == {"step": 0, "density": 1.0, "updated": False}
    assert pruner.step(2)["updated"] and pruner.density == pytest.approx(0.2 + 0.8 * 0.125)
    assert not pruner.step(3)["updated"]  # not an update step: masks stay
    report = density_report(tiny)
    assert report["prunable_nonzero"] == keep_count(TINY_PRUNABLE, 0.3)
    assert pruner.step(4)["updated"] and pruner.density == 0.2
    report = density_report(tiny)
    assert report["prunable_nonzero"] == keep_count(TINY_PRUNABLE, 0.2) == 837_222
    assert report["prunable_total"] == TINY_PRUNABLE

    # Weights outside the filter are untouched.
    state = tiny.state_dict()
    for key, value in state.items():
        if key not in prunable:
            assert torch.equal(value, before[key]), key

    # An optimizer step moves zeros; apply_ puts them back.
    with torch.no_grad():
        for p in tiny.parameters():
            p.add_(0.01)
    assert density_report(tiny)["prunable_nonzero"] == TINY_PRUNABLE
    pruner.apply_()
    assert density_report(tiny)["prunable_nonzero"] == 837_222


def test_magnitude_pruner_reaches_the_final_density_when_steps_skip(tiny) -> None:
    """A schedule that follows elapsed time jumps over steps, end_step included."""
    pruner = MagnitudePruner(tiny, final_density=0.2, start_step=0, end_step=10, scope="global", every=4)

    assert not pruner.step(0)["updated"]  # density 1.0 at the start
    assert pruner.step(3)["updated"]  # the first step that lowers the density: masks made
    assert not pruner.step(3)["updated"] and not pruner.step(1)["updated"]
    assert pruner.step(5)["updated"]  # a new window of 4 steps (4 itself was skipped)
    assert pruner.step(13)["updated"] and pruner.density == 0.2  # past end_step, never seen
    assert not pruner.step(14)["updated"]
    assert density_report(tiny)["prunable_nonzero"] == keep_count(TINY_PRUNABLE, 0.2)


def test_magnitude_pruner_layer_scope(tiny) -> None:
    pruner = MagnitudePruner(tiny, final_density=0.25, start_step=0, end_step=0, scope="layer")
    pruner.step(0)
    for name, density in density_report(tiny)["layers"].items():
        n = tiny.get_parameter(name).numel()
        assert density == keep_count(n, 0.25) / n, name


def test_make_permanent_keeps_keys_and_zeros_through_save(tiny, tiny_pair, tmp_path) -> None:
    keys = list(tiny.state_dict())
    pruner = MagnitudePruner(tiny, final_density=0.1, start_step=0, end_step=0)
    pruner.step(0)
    report = pruner.make_permanent_()
    assert report["nonzero_after"] == keep_count(TINY_PRUNABLE, 0.1) and report["prune_hooks_removed"] == 0
    assert pruner.masks is None
    assert list(tiny.state_dict()) == keys
    assert not any(m._forward_pre_hooks for m in tiny.modules())
    assert not any("mask" in name or "orig" in name for name, _ in tiny.named_buffers())

    save_model(tiny, tiny_pair[1], tmp_path / "pruned")
    again, _ = load_model(tmp_path / "pruned")
    assert density_report(again)["prunable_nonzero"] == keep_count(TINY_PRUNABLE, 0.1)
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert torch.equal(logits_of(tiny), logits_of(again))


def test_make_permanent_removes_torch_prune_reparametrisation(tiny) -> None:
    keys = list(tiny.state_dict())
    fc1 = tiny.decoder.model.decoder.layers[0].fc1
    torch_prune.l1_unstructured(fc1, "weight", amount=0.5)
    assert "decoder.model.decoder.layers.0.fc1.weight_orig" in tiny.state_dict()
    report = make_permanent_(tiny)
    assert report["prune_hooks_removed"] == 1
    assert sorted(tiny.state_dict()) == sorted(keys)  # the same keys (weight is re-registered last)
    assert int(torch.count_nonzero(fc1.weight)) == fc1.weight.numel() // 2


# --- structured FFN removal -------------------------------------------------------------------------------


def test_swin_ffn_plan_gives_exact_counts() -> None:
    assert swin_ffn_plan(embed_dim=32, num_stages=4, mlp_ratio=4.0, keep_ratio=0.5) == (
        2.0,
        [64, 128, 256, 512],
    )
    assert swin_ffn_plan(embed_dim=128, num_stages=4, mlp_ratio=4.0, keep_ratio=1.0) == (
        4.0,
        [512, 1024, 2048, 4096],
    )
    for embed_dim in (32, 96, 128, 192):
        for keep in (0.05, 0.1, 0.3, 0.37, 0.5, 0.61, 0.9, 1.0):
            ratio, kept = swin_ffn_plan(embed_dim=embed_dim, num_stages=4, mlp_ratio=4.0, keep_ratio=keep)
            assert [int(ratio * embed_dim * 2**i) for i in range(4)] == kept
            assert kept[0] == max(1, math.floor(keep * 4 * embed_dim + 0.5))
    with pytest.raises(ValueError):
        swin_ffn_plan(embed_dim=32, num_stages=4, mlp_ratio=4.0, keep_ratio=0.0)


def test_ffn_neuron_scores_and_selection() -> None:
    fc1, fc2 = nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]]))
        fc2.weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, -1.0]]))
    assert ffn_neuron_scores(fc1, fc2).tolist() == pytest.approx([5.0, 2.0, 2.0 * math.sqrt(2)])
    assert ffn_neuron_scores(fc1, fc2, "magnitude").tolist() == [7.0, 2.0, 4.0]
    assert top_neurons(ffn_neuron_scores(fc1, fc2), 2).tolist() == [0, 2]
    with pytest.raises(ValueError, match="importance"):
        ffn_neuron_scores(fc1, fc2, "taylor")


def test_prune_ffn_counts_config_and_reload(tiny, tiny_pair, tmp_path) -> None:
    reference = copy.deepcopy(tiny)
    before = count_parameters(tiny)
    report = prune_ffn_(tiny, keep_ratio=0.5)
    # Each removed neuron takes a row of fc1 (width + 1 bias) and a column of fc2 (width).
    encoder_drop = sum(2 * (64 * 2**i) * (2 * 32 * 2**i + 1) for i in range(4))
    decoder_drop = 2 * 512 * (2 * 256 + 1)
    assert encoder_drop + decoder_drop == 1_223_552
    assert report["params_before"] == before
    assert report["params_after"] == count_parameters(tiny) == before - 1_223_552
    assert tiny.config.encoder.mlp_ratio == 2.0 and tiny.config.decoder.decoder_ffn_dim == 512
    assert tiny.encoder.encoder.layers[3].blocks[1].intermediate.dense.weight.shape == (512, 256)
    assert tiny.decoder.model.decoder.layers[1].fc2.weight.shape == (256, 512)

    # The pruned model computes what the original computes with the dropped neurons silenced.
    with torch.no_grad():
        for block in (b for stage in reference.encoder.encoder.layers for b in stage.blocks):
            fc_in, fc_out = block.intermediate.dense, block.output.dense
            keep = top_neurons(ffn_neuron_scores(fc_in, fc_out), fc_in.out_features // 2)
            drop = torch.ones(fc_in.out_features, dtype=torch.bool)
            drop[keep] = False
            fc_out.weight[:, drop] = 0
        for layer in reference.decoder.model.decoder.layers:
            keep = top_neurons(ffn_neuron_scores(layer.fc1, layer.fc2), 512)
            drop = torch.ones(1024, dtype=torch.bool)
            drop[keep] = False
            layer.fc2.weight[:, drop] = 0
    assert torch.allclose(logits_of(tiny), logits_of(reference), atol=1e-5)

    save_model(tiny, tiny_pair[1], tmp_path / "ffn")
    again, _ = load_model(tmp_path / "ffn")
    assert count_parameters(again) == count_parameters(tiny)
    assert torch.equal(logits_of(again), logits_of(tiny))


def test_prune_ffn_keep_all_changes_nothing(tiny) -> None:
    expected = logits_of(tiny)
    report = prune_ffn_(tiny, keep_ratio=1.0, importance="magnitude")
    assert report["params_after"] == report["params_before"]
    assert tiny.config.encoder.mlp_ratio == 4.0 and tiny.config.decoder.decoder_ffn_dim == 1024
    assert torch.equal(logits_of(tiny), expected)


def test_prune_ffn_then_magnitude_on_a_student(tiny) -> None:
    student, _ = derive_student(tiny, StudentConfig(encoder_depths=[1, 1, 1, 1], decoder_layers=1))
    prune_ffn_(student, keep_ratio=0.25)
    MagnitudePruner(student, final_density=0.5, start_step=0, end_step=0, scope="layer").step(0)
    report = density_report(student, teacher=tiny)
    # One block per stage with FFN width = dim (6 dim² weights); one decoder layer with ffn 256.
    prunable = 6 * (32**2 + 64**2 + 128**2 + 256**2) + 8 * 256**2 + 2 * 256 * 256
    assert report["prunable_total"] == prunable == 1_177_600
    assert report["prunable_nonzero"] == prunable // 2 and report["prunable_density"] == 0.5
    assert report["prunable_density_vs_teacher"] == 588_800 / TINY_PRUNABLE
    assert report["all_density_vs_teacher"] == report["all_nonzero"] / count_parameters(tiny)


# --- 2:4 ----------------------------------------------------------------------------------------------------


def test_semi_structured_masks() -> None:
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0]])
    assert semi_structured_masks({"w": w})["w"].tolist() == [
        [False, True, True, False, True, True, False, False]
    ]
    g = torch.Generator().manual_seed(0)
    masks = semi_structured_masks({"a": torch.randn(6, 16, generator=g)})
    assert (masks["a"].reshape(-1, 4).sum(dim=1) == 2).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        semi_structured_masks({"w": torch.randn(2, 6)})


def test_apply_semi_structured_halves_prunable_weights(tiny) -> None:
    report = apply_semi_structured_(tiny)
    assert report["nonzero_before"] == report["total"] == TINY_PRUNABLE
    assert report["nonzero_after"] == TINY_PRUNABLE // 2
    assert report["layers"] == 68 and report["skipped"] == []
    for name, w in prunable_weights(tiny).items():
        assert (torch.count_nonzero(w.reshape(-1, 4), dim=1) == 2).all(), name


# --- accounting -------------------------------------------------------------------------------------------


def test_density_report_counts(tiny) -> None:
    total = count_parameters(tiny)
    dense = density_report(tiny)
    assert dense["prunable_total"] == dense["prunable_nonzero"] == TINY_PRUNABLE
    assert dense["all_total"] == total
    assert dense["teacher_all_total"] is None and dense["all_density_vs_teacher"] is None
    assert len(dense["layers"]) == 68 and set(dense["layers"].values()) == {1.0}

    teacher = copy.deepcopy(tiny)
    with torch.no_grad():
        tiny.decoder.model.decoder.layers[0].fc1.weight[:128] = 0  # 128 rows of 256
    report = density_report(tiny, teacher=teacher)
    removed = 128 * 256
    assert report["prunable_nonzero"] == TINY_PRUNABLE - removed
    assert report["prunable_density"] == (TINY_PRUNABLE - removed) / TINY_PRUNABLE
    assert report["all_nonzero"] == dense["all_nonzero"] - removed
    assert report["all_density"] == report["all_nonzero"] / total
    assert report["teacher_prunable_total"] == TINY_PRUNABLE and report["teacher_all_total"] == total
    assert report["prunable_density_vs_teacher"] == report["prunable_nonzero"] / TINY_PRUNABLE
    assert report["all_density_vs_teacher"] == report["all_nonzero"] / total
    assert report["layers"]["decoder.model.decoder.layers.0.fc1.weight"] == 0.875

    only_fc = density_report(tiny, filter_fn=lambda m, n: isinstance(m, nn.Linear) and n.endswith("fc1"))
    assert only_fc["prunable_total"] == 2 * 256 * 1024
