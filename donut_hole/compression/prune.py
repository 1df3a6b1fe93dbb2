"""Pruning: importance scores, density schedules, masks, structured FFN removal, 2:4 sparsity, accounting.

Scoring is kept apart from removal (Torch-Pruning / torchao style): ``magnitude_scores`` and
``ffn_neuron_scores`` say what matters, ``compute_masks`` / ``semi_structured_masks`` / ``prune_ffn_`` act
on it. Transforms that change a model in place end in ``_`` and return a small report. Layers are chosen
by ``filter_fn(module, name) -> bool``; :func:`default_filter` takes every ``nn.Linear`` inside a Swin block
or an mBART decoder layer, and leaves out embeddings, ``lm_head``, the patch embedding, patch merging and
all norms.

Masks are plain boolean tensors that we multiply into the weights, never ``torch.nn.utils.prune`` hooks,
so a pruned model saves with the usual state-dict keys and reloads with its zeros and nothing else.

Unstructured and 2:4 sparsity keep tensor shapes (zeros are stored); only :func:`prune_ffn_` makes dense
kernels smaller. Attention heads are not removed: DonutSwin and mBART derive ``head_dim`` as
``dim / num_heads``, so a model with fewer heads of the same width cannot be written as their config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune
from transformers import DonutSwinConfig, MBartConfig, VisionEncoderDecoderModel

FilterFn = Callable[[nn.Module, str], bool]
ScoreFn = Callable[[Tensor], Tensor]
Scope = Literal["global", "layer"]

_IN_BLOCK_OR_LAYER = re.compile(r"(\.blocks\.\d+\.|decoder\.layers\.\d+\.)")


def default_filter(module: nn.Module, name: str) -> bool:
    """Every ``nn.Linear`` in a Swin block (``...blocks.N.``) or decoder layer (``...decoder.layers.N.``)."""
    return isinstance(module, nn.Linear) and _IN_BLOCK_OR_LAYER.search(name) is not None


def prunable_weights(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, Tensor]:
    """``{"<module name>.weight": weight}`` of the modules ``filter_fn`` picks, in module order."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if filter_fn(m, name)}


def count_nonzero(tensors: Mapping[str, Tensor] | list[Tensor]) -> tuple[int, int]:
    """(nonzero entries, total entries) over the tensors."""
    values = list(tensors.values()) if isinstance(tensors, Mapping) else tensors
    return sum(int(torch.count_nonzero(t)) for t in values), sum(t.numel() for t in values)


# --- schedules --------------------------------------------------------------------------------------------


def cubic_density(
    step: int, *, start: int, end: int, final_density: float, initial_density: float = 1.0
) -> float:
    """Density at ``step`` of Zhu & Gupta's gradual pruning (2017), ``d_f + (d_i - d_f)(1 - progress)³``.

    Constant ``initial_density`` up to ``start``, ``final_density`` from ``end`` on.

    >>> round(cubic_density(5, start=0, end=10, final_density=0.1), 6)  # 0.1 + 0.9 * 0.5**3
    0.2125
    >>> [cubic_density(s, start=2, end=10, final_density=0.1) for s in (0, 2, 10, 99)]
    [1.0, 1.0, 0.1, 0.1]
    """
    if end < start:
        raise ValueError(f"pruning must end after it starts: start {start}, end {end}")
    if not 0.0 <= final_density <= initial_density <= 1.0:
        raise ValueError(
            f"need 0 <= final_density <= initial_density <= 1, got {final_density}, {initial_density}"
        )
    if step >= end:
        return final_density
    if step <= start:
        return initial_density
    progress = (step - start) / (end - start)
    return final_density + (initial_density - final_density) * (1.0 - progress) ** 3


def density_schedule(
    steps: int, *, start: int, end: int, final_density: float, initial_density: float = 1.0
) -> list[float]:
    """:func:`cubic_density` for steps ``0 .. steps - 1`` (for plots and recipe checks).

    >>> density_schedule(4, start=1, end=3, final_density=0.5)  # 0.5 + 0.5 * 0.5**3 at step 2
    [1.0, 1.0, 0.5625, 0.5]
    """
    return [
        cubic_density(
            step, start=start, end=end, final_density=final_density, initial_density=initial_density
        )
        for step in range(steps)
    ]


# --- unstructured masks -----------------------------------------------------------------------------------


def magnitude_scores(weights: Tensor) -> Tensor:
    """``|w|`` in float32, detached: the larger, the more important.

    >>> magnitude_scores(torch.tensor([-3.0, 0.5]))
    tensor([3.0000, 0.5000])
    """
    return weights.detach().abs().float()


def keep_count(total: int, density: float) -> int:
    """Entries kept at ``density``: ``density * total`` rounded half up.

    >>> keep_count(10, 0.25), keep_count(10, 0.24)
    (3, 2)
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return min(total, math.floor(density * total + 0.5))


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly ``k`` largest entries of a 1-D tensor; ties go to the lower index.

    >>> top_k_mask(torch.tensor([1.0, 3.0, 1.0, 1.0]), 2)
    tensor([ True,  True, False, False])
    """
    n = scores.numel()
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - k + 1).values  # the k-th largest
    mask = scores > threshold
    ties = torch.nonzero(scores == threshold).flatten()
    mask[ties[: k - int(mask.sum())]] = True
    return mask


def compute_masks(
    params: Mapping[str, Tensor], *, density: float, scope: Scope, score_fn: ScoreFn = magnitude_scores
) -> dict[str, Tensor]:
    """Keep masks (True = keep) with exactly :func:`keep_count` entries kept.

    ``scope="layer"`` keeps ``density`` of every tensor; ``"global"`` ranks all entries together, so layers
    end up with different densities. Scores come from ``score_fn`` (default ``|w|``).

    >>> params = {"a": torch.tensor([1.0, -4.0]), "b": torch.tensor([3.0, 2.0])}
    >>> compute_masks(params, density=0.5, scope="global")
    {'a': tensor([False,  True]), 'b': tensor([ True, False])}
    """
    if scope == "layer":
        out = {}
        for name, p in params.items():
            scores = score_fn(p).flatten()
            out[name] = top_k_mask(scores, keep_count(p.numel(), density)).view(p.shape)
        return out
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}; use 'global' or 'layer'")
    if not params:
        return {}
    device = next(iter(params.values())).device
    flat = torch.cat([score_fn(p).flatten().to(device) for p in params.values()])  # (N,)
    keep = top_k_mask(flat, keep_count(flat.numel(), density))
    pieces = keep.split([p.numel() for p in params.values()])
    return {name: m.view(p.shape).to(p.device) for (name, p), m in zip(params.items(), pieces, strict=True)}


def apply_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, int]:
    """Zero the weights where ``masks`` (keyed by parameter name) is False; report nonzeros before/after."""
    weights = {name: model.get_parameter(name) for name in masks}
    before, total = count_nonzero(weights)
    with torch.no_grad():
        for name, w in weights.items():
            w.masked_fill_(~masks[name].to(w.device), 0)
    after, _ = count_nonzero(weights)
    return {"nonzero_before": before, "nonzero_after": after, "total": total}


def make_permanent_(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> dict[str, int]:
    """Bake sparsity into plain weights: multiply ``masks`` in, and remove any ``torch.nn.utils.prune``
    re-parametrisation a checkpoint may carry from other tools, so ``state_dict`` has only the usual keys.
    """
    removed = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                removed += 1
    report = apply_masks_(model, masks or {})
    return {**report, "prune_hooks_removed": removed}


class MagnitudePruner:
    """Gradual magnitude pruning of the ``filter_fn`` layers to ``final_density`` (cubic schedule).

    Call :meth:`step` before each forward pass (masks are recomputed from ``|w|`` every ``every`` steps
    between ``start_step`` and ``end_step``, and at ``end_step``) and :meth:`apply_` after each optimizer
    step, which may have moved pruned weights off zero. Create it after any structural change
    (:func:`prune_ffn_`), since it holds the modules it prunes. Resuming works: the first ``step(k)``
    recomputes masks at ``k``'s density from the saved weights, whose zeros rank last.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        final_density: float,
        start_step: int,
        end_step: int,
        scope: Scope = "global",
        filter_fn: FilterFn = default_filter,
        every: int = 1,
    ):
        cubic_density(start_step, start=start_step, end=end_step, final_density=final_density)  # validates
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.model = model
        self.final_density, self.start_step, self.end_step = final_density, start_step, end_step
        self.scope, self.every = scope, every
        self.modules = {name: m for name, m in model.named_modules() if filter_fn(m, name)}
        if not self.modules:
            raise ValueError("filter_fn selected no layers to prune")
        self.masks: dict[str, Tensor] | None = None
        self.density = 1.0
        self._window: int | None = None  # the every-window of the last mask update

    def weights(self) -> dict[str, Tensor]:
        return {f"{name}.weight": m.weight for name, m in self.modules.items()}

    def density_at(self, step: int) -> float:
        return cubic_density(step, start=self.start_step, end=self.end_step, final_density=self.final_density)

    def step(self, step: int) -> dict[str, Any]:
        """Update masks if ``step`` is an update step (or none exist yet), then zero the masked weights.

        Steps may skip (a schedule that follows elapsed time, ``train.time_limit_s``): the masks are updated
        on the first step of each ``every`` window that lowers the density, and on the first step at or past
        ``end_step``, so the final density is reached even when ``end_step`` itself is never seen.
        """
        density = self.density_at(step)
        window = (step - self.start_step) // self.every
        due = (
            step >= self.start_step
            and density < self.density
            and (window != self._window or step >= self.end_step)
        )
        updated = density < 1.0 and (self.masks is None or due)
        if updated:
            self.masks = compute_masks(self.weights(), density=density, scope=self.scope)
            self.density = density
            self._window = window
        self.apply_()
        return {"step": step, "density": self.density, "updated": updated}

    def apply_(self) -> dict[str, Any]:
        """Re-zero the pruned weights (cheap: no counting, no device sync)."""
        if self.masks is None:
            return {"density": self.density, "layers": 0}
        with torch.no_grad():
            for name, w in self.weights().items():
                mask = self.masks[name]
                if mask.device != w.device:
                    mask = self.masks[name] = mask.to(w.device)
                w.masked_fill_(~mask, 0)
        return {"density": self.density, "layers": len(self.masks)}

    def make_permanent_(self) -> dict[str, int]:
        """Apply the masks one last time and forget them; the zeros stay in the plain weights."""
        report = make_permanent_(self.model, self.masks)
        self.masks = None
        return report


def magnitude_prune_(model: nn.Module, *, density: float, scope: Scope = "global") -> None:
    """One-shot magnitude pruning of the prunable weights to ``density``, made permanent at once (what
    ``donut-hole compress`` does with ``train.steps: 0``); ``density >= 1`` changes nothing."""
    if density < 1.0:
        pruner = MagnitudePruner(model, final_density=density, start_step=0, end_step=0, scope=scope)
        pruner.step(0)
        pruner.make_permanent_()


# --- structured: FFN neurons ------------------------------------------------------------------------------


def ffn_neuron_scores(fc_in: nn.Linear, fc_out: nn.Linear, importance: str = "l2") -> Tensor:
    """Importance of hidden neuron ``n`` of ``fc_out(act(fc_in(x)))``: ``‖fc_in row n‖ · ‖fc_out col n‖``.

    ``importance="l2"`` uses L2 norms, ``"magnitude"`` L1 norms (sums of ``|w|``).

    >>> fc1, fc2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    >>> _ = fc1.weight.data.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    >>> _ = fc2.weight.data.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    >>> ffn_neuron_scores(fc1, fc2)  # (5 * 1, 1 * 2)
    tensor([5., 2.])
    """
    if importance not in ("l2", "magnitude"):
        raise ValueError(f"unknown importance {importance!r}; use 'l2' or 'magnitude'")
    p = 2 if importance == "l2" else 1
    rows = fc_in.weight.detach().float().norm(p=p, dim=1)  # (hidden,)
    cols = fc_out.weight.detach().float().norm(p=p, dim=0)  # (hidden,)
    return rows * cols


def top_neurons(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in increasing index order (ties: lower index)."""
    return torch.nonzero(top_k_mask(scores, k)).flatten()


def _select_linear(linear: nn.Linear, index: Tensor, *, dim: int) -> nn.Linear:
    """A new Linear keeping output rows (``dim=0``) or input columns (``dim=1``) ``index``."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    out_features, in_features = weight.shape
    new = torch.nn.utils.skip_init(
        nn.Linear,
        in_features,
        out_features,
        bias=linear.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    new.train(linear.training)
    return new


def swin_ffn_plan(
    *, embed_dim: int, num_stages: int, mlp_ratio: float, keep_ratio: float
) -> tuple[float, list[int]]:
    """A new ``mlp_ratio`` and the hidden size it gives each stage, ``int(ratio * embed_dim * 2**i)``.

    Stage 0 keeps ``round(keep_ratio * int(mlp_ratio * embed_dim))`` neurons and stage ``i`` ``2**i`` times
    that; the ratio is nudged up by float ulps until ``int()`` gives exactly these counts.

    >>> swin_ffn_plan(embed_dim=32, num_stages=4, mlp_ratio=4.0, keep_ratio=0.5)
    (2.0, [64, 128, 256, 512])
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    k0 = max(1, math.floor(keep_ratio * int(mlp_ratio * embed_dim) + 0.5))
    dims = [int(embed_dim * 2**i) for i in range(num_stages)]
    wanted = [k0 * 2**i for i in range(num_stages)]
    ratio = k0 / embed_dim
    for _ in range(16):
        if [int(ratio * d) for d in dims] == wanted:
            return ratio, wanted
        ratio = math.nextafter(ratio, math.inf)
    raise ValueError(f"no mlp_ratio gives hidden sizes {wanted} for stage widths {dims}")


def prune_ffn_(
    model: VisionEncoderDecoderModel, *, keep_ratio: float, importance: str = "l2"
) -> dict[str, Any]:
    """Remove FFN neurons of every Swin block and decoder layer, keeping about ``keep_ratio`` of them.

    Every block of a stage (and every decoder layer) keeps the same number of neurons, chosen per layer by
    :func:`ffn_neuron_scores`; the Linear layers are rebuilt smaller and the config updated
    (``encoder.mlp_ratio``, ``decoder.decoder_ffn_dim``), so ``save_pretrained`` / ``from_pretrained`` work.
    """
    before = sum(p.numel() for p in model.parameters())
    enc_cfg = cast(DonutSwinConfig, model.config.encoder)
    dec_cfg = cast(MBartConfig, model.config.decoder)
    encoder: Any = model.encoder  # DonutSwinModel
    decoder: Any = model.decoder  # MBartForCausalLM
    ratio, kept = swin_ffn_plan(
        embed_dim=enc_cfg.embed_dim,
        num_stages=len(enc_cfg.depths),
        mlp_ratio=enc_cfg.mlp_ratio,
        keep_ratio=keep_ratio,
    )
    for stage, k in zip(encoder.encoder.layers, kept, strict=True):
        for block in stage.blocks:
            fc_in, fc_out = block.intermediate.dense, block.output.dense
            index = top_neurons(ffn_neuron_scores(fc_in, fc_out, importance), k)
            block.intermediate.dense = _select_linear(fc_in, index, dim=0)
            block.output.dense = _select_linear(fc_out, index, dim=1)
    ffn_dim = max(1, math.floor(keep_ratio * dec_cfg.decoder_ffn_dim + 0.5))
    for layer in decoder.model.decoder.layers:
        index = top_neurons(ffn_neuron_scores(layer.fc1, layer.fc2, importance), ffn_dim)
        layer.fc1 = _select_linear(layer.fc1, index, dim=0)
        layer.fc2 = _select_linear(layer.fc2, index, dim=1)
    for swin in {id(c): c for c in (enc_cfg, encoder.config)}.values():
        swin.mlp_ratio = ratio
    for mbart in {id(c): c for c in (dec_cfg, decoder.config)}.values():
        mbart.decoder_ffn_dim = ffn_dim
    return {
        "params_before": before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "mlp_ratio": ratio,
        "encoder_ffn_dims": kept,
        "decoder_ffn_dim": ffn_dim,
    }


# --- semi-structured 2:4 ----------------------------------------------------------------------------------


def semi_structured_masks(
    params: Mapping[str, Tensor], *, score_fn: ScoreFn = magnitude_scores
) -> dict[str, Tensor]:
    """2:4 masks: in each group of 4 consecutive input weights of a row, keep the 2 highest scores.

    >>> semi_structured_masks({"w": torch.tensor([[0.1, -0.9, 0.5, 0.2]])})
    {'w': tensor([[False,  True,  True, False]])}
    """
    out = {}
    for name, w in params.items():
        if w.ndim != 2 or w.shape[1] % 4:
            raise ValueError(
                f"2:4 sparsity needs a 2-D weight with in_features divisible by 4; {name} is {tuple(w.shape)}"
            )
        scores = score_fn(w).reshape(-1, 4)  # (out * in / 4, 4)
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :2], True)
        out[name] = keep.view(w.shape)
    return out


def apply_semi_structured_(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, Any]:
    """Zero 2 of every 4 consecutive input weights in the ``filter_fn`` layers (weights whose width is not a
    multiple of 4 are skipped and listed). Masks are computed on any device; the speed-up needs
    ``torch.sparse.to_sparse_semi_structured`` on a CUDA GPU at inference, which the benchmarks do.
    """
    weights = prunable_weights(model, filter_fn)
    eligible = {n: w for n, w in weights.items() if w.ndim == 2 and w.shape[1] % 4 == 0}
    report = apply_masks_(model, semi_structured_masks(eligible))
    return {**report, "layers": len(eligible), "skipped": sorted(set(weights) - set(eligible))}


# --- accounting -------------------------------------------------------------------------------------------


def density_report(
    model: nn.Module, *, teacher: nn.Module | None = None, filter_fn: FilterFn | None = None
) -> dict[str, Any]:
    """Nonzero counts and densities, over the prunable weights and over all parameters, both relative to the
    model itself and to ``teacher``'s totals (``*_vs_teacher``: student nonzero / teacher total; ``None``
    without a teacher), plus ``layers``: prunable weight name → density. Tied parameters count once; exact
    zeros count as pruned wherever they are (zero-initialised biases included). ``filter_fn`` defaults to
    :func:`default_filter`, the layers the pruners touch.
    """
    filter_fn = filter_fn or default_filter
    weights = prunable_weights(model, filter_fn)
    prunable_nonzero, prunable_total = count_nonzero(weights)
    all_nonzero, all_total = count_nonzero(list(model.parameters()))
    report: dict[str, Any] = {
        "prunable_nonzero": prunable_nonzero,
        "prunable_total": prunable_total,
        "prunable_density": prunable_nonzero / max(1, prunable_total),
        "all_nonzero": all_nonzero,
        "all_total": all_total,
        "all_density": all_nonzero / max(1, all_total),
        "teacher_prunable_total": None,
        "teacher_all_total": None,
        "prunable_density_vs_teacher": None,
        "all_density_vs_teacher": None,
    }
    if teacher is not None:
        teacher_prunable = sum(w.numel() for w in prunable_weights(teacher, filter_fn).values())
        teacher_all = sum(p.numel() for p in teacher.parameters())
        report["teacher_prunable_total"] = teacher_prunable
        report["teacher_all_total"] = teacher_all
        report["prunable_density_vs_teacher"] = prunable_nonzero / max(1, teacher_prunable)
        report["all_density_vs_teacher"] = all_nonzero / max(1, teacher_all)
    report["layers"] = {name: int(torch.count_nonzero(w)) / w.numel() for name, w in weights.items()}
    return report
