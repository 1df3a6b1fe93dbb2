"""Guided reading: training-only losses that tell a DONUT where the text it writes is printed.

A DONUT learns to read only through its decoder's cross-attention, and from scratch that alignment is slow
to start. A synthetic page knows where each character is printed, so two extra terms speed it up:

- ``guide``: the decoder's cross-attention (last layer, mean over heads) for token t should fall on the
  encoder cell where token t is printed (or its 3 x 3 neighbourhood): ``-log(mass there)``.
- ``glyph``: a linear head on the encoder's output names the character printed in each cell (DONUT's
  encoder then learns glyphs directly). The head lives beside the model and is dropped at save, so the
  checkpoint stays a stock ``VisionEncoderDecoderModel``.

Both are pure functions of tensors; :class:`GuidedObjective` adds them to the cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from donut_hole.compression.distill import (
    ce_loss,
    forward_with_cross_attention,
    last_cross_attention,
    shift_for_decoder,
)
from donut_hole.compression.recipe import GuideConfig
from donut_hole.documents.locations import cell_grid
from donut_hole.model.build import encoder_stride


def attention_loss(attention: torch.Tensor, cells: torch.Tensor, *, grid: tuple[int, int]) -> torch.Tensor:
    """Mean ``-log`` of the attention mass on each located token's cell and its 8 neighbours.

    ``attention`` (B, T, S) sums to 1 over S = rows * cols; ``cells`` (B, T) holds a cell index or -1.
    All the mass on the right cell gives 0; a uniform map over 16 cells with one target gives
    ``-log(9/16)`` for an inner cell's 3 x 3 block.
    """
    rows, cols = grid
    b, t, s = attention.shape
    maps = attention.float().reshape(b * t, 1, rows, cols)
    near = F.avg_pool2d(maps, 3, stride=1, padding=1, count_include_pad=True) * 9  # mass in each 3x3 block
    near = near.reshape(b, t, s)
    located = cells >= 0
    picked = near.gather(2, cells.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    losses = -picked.clamp(min=1e-6, max=1.0).log()
    return (losses * located).sum() / located.sum().clamp(min=1)


def glyph_loss(
    logits: torch.Tensor, glyphs: torch.Tensor, *, blank_id: int, blank_weight: float
) -> torch.Tensor:
    """Cross-entropy of the character in each cell; cells holding none (``blank_id``) weigh less.

    ``logits`` (B, S, V), ``glyphs`` (B, S) token ids.
    """
    losses = F.cross_entropy(logits.float().flatten(0, 1), glyphs.flatten(), reduction="none")
    weights = torch.where(glyphs.flatten() == blank_id, blank_weight, 1.0)
    return (losses * weights).sum() / weights.sum().clamp(min=1e-6)


def encoder_grid(model: Any, image_size: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """((rows, cols), stride) of the encoder's output cells for images of ``image_size`` (H, W)."""
    stride = encoder_stride(model.config.encoder)
    return cell_grid(image_size, stride=stride), stride


class GuidedObjective:
    """Cross-entropy plus the guided-reading terms, for batches from the curriculum's dataset.

    Batches without ``cells`` (a dataset folder) get the cross-entropy alone. The glyph head's parameters
    are :meth:`parameters` (the training loop optimises and checkpoints them with the model's).
    """

    def __init__(self, model: Any, config: GuideConfig, *, pad_token_id: int, grid: tuple[int, int]):
        self.config, self.pad_token_id, self.grid = config, pad_token_id, grid
        hidden = int(model.config.encoder.hidden_size)
        self.head = torch.nn.Linear(hidden, int(model.config.decoder.vocab_size))
        if config.attention > 0:
            model.decoder.set_attn_implementation("eager")  # attention maps are not returned by SDPA

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters()) if self.config.glyph > 0 else []

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        decoder_input_ids, labels = shift_for_decoder(batch["input_ids"], pad_token_id=self.pad_token_id)
        guided = "cells" in batch
        want_attention = guided and self.config.attention > 0
        if want_attention:
            out = forward_with_cross_attention(model, batch["pixel_values"], decoder_input_ids)
        else:
            out = model(pixel_values=batch["pixel_values"], decoder_input_ids=decoder_input_ids)
        ce = ce_loss(out.logits, labels)
        loss, parts = ce, {"ce": float(ce.detach())}
        if want_attention:
            guide = attention_loss(last_cross_attention(out), batch["cells"], grid=self.grid)
            loss = loss + self.config.attention * guide
            parts["guide"] = float(guide.detach())
        if guided and self.config.glyph > 0:
            self.head.to(out.encoder_last_hidden_state.device)
            logits = self.head(out.encoder_last_hidden_state)  # (B, S, V)
            glyph = glyph_loss(
                logits, batch["glyphs"], blank_id=self.pad_token_id, blank_weight=self.config.blank_weight
            )
            loss = loss + self.config.glyph * glyph
            parts["glyph"] = float(glyph.detach())
        return loss, parts

    def state_dict(self) -> dict[str, Any]:
        return self.head.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state)
