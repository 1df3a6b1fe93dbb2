"""A faster forward for a DONUT's Swin encoder at inference, on the same weights, in place.

Where a page's time went in the default teacher's encoder (one 672x672 page, one CPU thread, fp32): the
Linear layers 49 of 107 ms, and among the rest the GELU after each block's first MLP layer (11 ms: a
separate pass over a 28,224 x 128 activation in stage 1) and the window attention's score arithmetic
(the relative position bias gathered and permuted again in every block and call, a division, two
additions, a softmax). :func:`speed_up` changes two things, for inference only:

- each block's first MLP layer and its GELU run as one oneDNN call (``mkldnn._linear_pointwise`` with
  its exact, erf GELU): the same values to the bit, and stage 1's layer is 4x faster than an MKL GEMM of
  inner size 32 followed by the GELU;
- the window attention adds one precomputed tensor (the relative position bias, and the shifted windows'
  mask where there is one, computed once per input size) and runs in PyTorch's fused attention kernel.

Outside autocast (bf16 on a CPU keeps transformers' own forward, whose matrix products autocast
lowers), for fp32 on a CPU. Models in training are never patched: only a reader's freshly loaded model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def speed_up(encoder: Any) -> int:
    """Patch ``encoder``'s (a ``DonutSwinModel``) blocks in place; returns how many modules changed (0
    where this torch build lacks the fused oneDNN call, or the encoder is not a DonutSwin)."""
    try:
        from transformers.models.donut.modeling_donut_swin import (
            DonutSwinIntermediate,
            DonutSwinSelfAttention,
        )
    except ImportError:
        return 0
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise") or not torch.backends.mkldnn.is_available():
        return 0
    changed = 0
    for module in encoder.modules():
        if isinstance(module, DonutSwinIntermediate) and _gelu(module):
            module.forward = _FusedIntermediate(module)  # type: ignore[method-assign]
            changed += 1
        elif isinstance(module, DonutSwinSelfAttention):
            module.forward = _WindowAttention(module)  # type: ignore[method-assign]
            changed += 1
    return changed


def _gelu(module: Any) -> bool:
    act = module.intermediate_act_fn
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def _fast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


class _FusedIntermediate:
    """``gelu(dense(x))`` in one oneDNN call (exact GELU), else the module's own forward."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.original = module.forward

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dense = self.module.dense
        if not _fast(hidden_states) or dense.weight.dtype != torch.float32 or torch.is_grad_enabled():
            return self.original(hidden_states)  # type: ignore[no-any-return]
        shape = hidden_states.shape
        out = torch.ops.mkldnn._linear_pointwise(
            hidden_states.reshape(-1, shape[-1]), dense.weight, dense.bias, "gelu", [], "none"
        )
        return out.view(*shape[:-1], out.shape[-1])


class _WindowAttention:
    """Window attention with its bias (and mask) added once, in PyTorch's fused attention kernel."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.original = module.forward
        self._bias: torch.Tensor | None = None
        self._masked: tuple[torch.Size, torch.Tensor] | None = None  # (the mask's shape, bias + mask)

    def _relative_bias(self) -> torch.Tensor:
        m = self.module
        if self._bias is None:
            area = m.window_size[0] * m.window_size[1]
            bias = m.relative_position_bias_table[m.relative_position_index.view(-1)]
            self._bias = bias.view(area, area, -1).permute(2, 0, 1).contiguous().detach()  # (H, N, N)
        return self._bias

    def __call__(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
    ) -> tuple[torch.Tensor]:
        m = self.module
        if output_attentions or not _fast(hidden_states) or torch.is_grad_enabled():
            return self.original(hidden_states, attention_mask, output_attentions)  # type: ignore[no-any-return]
        windows, tokens, _ = hidden_states.shape
        shape = (windows, tokens, -1, m.attention_head_size)
        q = m.query(hidden_states).view(shape).transpose(1, 2)
        k = m.key(hidden_states).view(shape).transpose(1, 2)
        v = m.value(hidden_states).view(shape).transpose(1, 2)
        bias = self._relative_bias()[None]  # (1, H, N, N)
        if attention_mask is not None:  # (nW, N, N): windows = pages x nW
            # the mask depends on the stage's padded size and the shift only: one per shape
            if self._masked is None or self._masked[0] != attention_mask.shape:
                self._masked = (attention_mask.shape, (bias + attention_mask[:, None]).contiguous())
            per_page = attention_mask.shape[0]
            mixed = F.scaled_dot_product_attention(
                q.reshape(windows // per_page, per_page, *q.shape[1:]),
                k.reshape(windows // per_page, per_page, *k.shape[1:]),
                v.reshape(windows // per_page, per_page, *v.shape[1:]),
                attn_mask=self._masked[1],
                scale=1 / math.sqrt(m.attention_head_size),
            ).flatten(0, 1)
        else:
            mixed = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, scale=1 / math.sqrt(m.attention_head_size)
            )
        out = mixed.transpose(1, 2).reshape(windows, tokens, m.all_head_size)
        return (out,)
