"""One decoding step of a DONUT's mBART decoder, without transformers' per-token machinery.

A small decoder's token costs little arithmetic: most of its time went to what surrounds it (mask building,
cache objects, keyword plumbing, module wrappers), about 0.45 of 1.7 ms per token for a 4-layer, 128-wide
decoder on one CPU core. :class:`MBartSteps` runs the same modules on the same weights in the same order:

- the cross-attention keys and values are projected once per batch (transformers caches them too);
- the self-attention keys and values go into buffers that grow by doubling, not a concatenation per token;
- a single query token attends to every earlier one, so no mask is built (none is needed).

The logits equal those of ``decoder(input_ids=..., cache=...)`` (``tests/model/test_predict.py`` compares
the tokens and probabilities with ``generate``); any decoder that is not an ``MBartForCausalLM`` is read
through transformers as before (:func:`supports`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def supports(decoder: Any) -> bool:
    """Whether :class:`MBartSteps` reads ``decoder`` exactly: a DONUT's mBART decoder, attention by SDPA."""
    from transformers import MBartForCausalLM

    if not isinstance(decoder, MBartForCausalLM):
        return False
    core = decoder.model.decoder
    implementation = getattr(decoder.config, "_attn_implementation", "sdpa")
    return implementation == "sdpa" and hasattr(core.embed_positions, "offset") and len(core.layers) > 0


class MBartSteps:
    """Greedy decoding state of one batch: ``step(ids)`` → the next token's logits (B, V).

    ``encoder_hidden`` (B, S, C) is the encoder's output, already projected to the decoder's width.
    """

    def __init__(self, decoder: Any, encoder_hidden: torch.Tensor) -> None:
        self.core = decoder.model.decoder
        self.lm_head = decoder.lm_head
        self.layers = list(self.core.layers)
        attention = self.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.batch = encoder_hidden.shape[0]
        # contiguous once: attention would otherwise copy the transposed (B, H, S, D) views at every token
        self.cross = [
            (self._split(layer.encoder_attn.k_proj(encoder_hidden)).contiguous(),
             self._split(layer.encoder_attn.v_proj(encoder_hidden)).contiguous())
            for layer in self.layers
        ]  # fmt: skip
        self.keys: list[torch.Tensor] = []  # per layer (B, H, capacity, D)
        self.values: list[torch.Tensor] = []
        self.length = 0  # tokens in the self-attention buffers

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        """(B, T, H*D) → (B, H, T, D)."""
        return states.view(self.batch, -1, self.heads, self.head_dim).transpose(1, 2)

    def _append(
        self, index: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this token's key and value (B, H, 1, D) for layer ``index``; all of them so far."""
        if index == len(self.keys):  # the first token: buffers in the dtype the projections give
            shape = (self.batch, self.heads, 64, self.head_dim)
            self.keys.append(key.new_empty(shape))
            self.values.append(value.new_empty(shape))
        elif self.length == self.keys[index].shape[2]:  # full: twice the room
            self.keys[index] = torch.cat([self.keys[index], torch.empty_like(self.keys[index])], dim=2)
            self.values[index] = torch.cat([self.values[index], torch.empty_like(self.values[index])], dim=2)
        end = self.length + 1
        self.keys[index][:, :, self.length : end] = key
        self.values[index][:, :, self.length : end] = value
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) after the tokens so far and ``ids`` (B, 1), the newest one."""
        core = self.core
        position = core.embed_positions.weight[self.length + core.embed_positions.offset]
        hidden = core.layernorm_embedding(core.embed_tokens(ids) + position)  # (B, 1, C)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            normed = layer.self_attn_layer_norm(hidden)
            keys, values = self._append(
                index, self._split(attention.k_proj(normed)), self._split(attention.v_proj(normed))
            )
            mixed = F.scaled_dot_product_attention(
                self._split(attention.q_proj(normed)), keys, values, scale=attention.scaling
            )
            hidden = hidden + attention.out_proj(mixed.transpose(1, 2).reshape(self.batch, 1, -1))
            cross = layer.encoder_attn
            normed = layer.encoder_attn_layer_norm(hidden)
            mixed = F.scaled_dot_product_attention(
                self._split(cross.q_proj(normed)), *self.cross[index], scale=cross.scaling
            )
            hidden = hidden + cross.out_proj(mixed.transpose(1, 2).reshape(self.batch, 1, -1))
            normed = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(normed)))
        self.length += 1
        logits: torch.Tensor = self.lm_head(core.layer_norm(hidden))
        return logits[:, -1]
