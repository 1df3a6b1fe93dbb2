"""The decoding engine: greedy reading of many pages through one running batch of a DONUT's mBART decoder.

A page of a small DONUT costs little arithmetic per token; what it cost before was what surrounds the
arithmetic. Measured on one CPU core with the 4-layer, 128-wide default teacher at 4 pages a step
(``benchmarks/engine.py``): PyTorch's flash attention kernel took two thirds of a step for one query
token, three separate Linear calls projected what one can, and a batch decoded until its longest page
ended, its finished rows still computed. The engine runs the same weights in the same order, but:

- **single-query attention as two batched matrix-vector products** (scores, then the weighted values),
  with the keys stored transposed so that both read memory in order; no flash kernel, no padding;
- **fused projections**: the self-attention's query, key and value in one matrix product;
- **the cross-attention's keys and values projected once per page**, when the page enters;
- **continuous batching**: a batch has ``slots`` rows; a page that ends leaves its row at once and the
  next waiting page takes it (its encoder pass runs then), so no row decodes padding and one long bill of
  lading does not hold the rows of short labels. Rows at different positions share each step: every row
  has its own length, and a mask hides from a row the keys of the page that held the slot before it;
- **one page at a time through the encoder**: the encoder's activations of one 672x672 page fit this
  CPU's caches, a batch's do not (measured 126 vs 165 ms per page at batch 4, one thread).

Each page's tokens and log-probabilities are those of transformers' greedy ``generate`` on that page
alone, up to float rounding (``tests/model/test_engine.py`` compares them on real pages, in batches and
alone). Decoders other than mBART's are read by :class:`~donut_hole.model.predict.DonutReader` through
transformers, as before (:func:`supports`).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F

from donut_hole.model import kernels

Key = TypeVar("Key")


def supports(decoder: Any) -> bool:
    """Whether the engine reads ``decoder`` exactly: a DONUT's mBART decoder with its usual modules
    (``DONUT_HOLE_ENGINE=false`` turns the engine off: the reader then decodes batch by batch as before)."""
    from transformers import MBartForCausalLM

    if not kernels.env_flag("DONUT_HOLE_ENGINE"):
        return False
    if not isinstance(decoder, MBartForCausalLM):
        return False
    core = decoder.model.decoder
    if not len(core.layers) or not hasattr(core.embed_positions, "offset"):
        return False
    layer = core.layers[0]
    linears = (layer.self_attn.q_proj, layer.encoder_attn.k_proj, layer.fc1, decoder.lm_head)
    # dynamic int8 (quantised Linear modules) and other module types go through transformers
    return all(type(module) is torch.nn.Linear for module in linears) and layer.self_attn.is_decoder


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, packed for single-token steps."""

    norm1: tuple[torch.Tensor, torch.Tensor, float]
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # (3C, C): query, key and value stacked
    out: tuple[torch.Tensor, torch.Tensor | None]
    norm2: tuple[torch.Tensor, torch.Tensor, float]
    cross_q: tuple[torch.Tensor, torch.Tensor | None]
    cross_kv: tuple[torch.Tensor, torch.Tensor | None]  # (2C, C): keys and values of the encoder's cells
    cross_out: tuple[torch.Tensor, torch.Tensor | None]
    norm3: tuple[torch.Tensor, torch.Tensor, float]
    fc1: tuple[torch.Tensor, torch.Tensor | None]
    fc2: tuple[torch.Tensor, torch.Tensor | None]
    activation: Callable[[torch.Tensor], torch.Tensor]
    self_scale: float
    cross_scale: float


def _linear(module: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


def _stacked(*modules: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight.detach() for m in modules])
    biases = [m.bias for m in modules]
    if all(b is None for b in biases):
        return weight, None
    bias = torch.cat([
        torch.zeros(m.out_features, dtype=weight.dtype, device=weight.device) if b is None else b.detach()
        for m, b in zip(modules, biases, strict=True)
    ])  # fmt: skip
    return weight, bias


def _norm(module: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return module.weight.detach(), module.bias.detach(), float(module.eps)


def _layer_norm(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm[0], norm[1], norm[2])


class DecoderWeights:
    """The weights of an mBART decoder (``MBartForCausalLM``) as the engine's steps use them."""

    def __init__(self, decoder: Any) -> None:
        core = decoder.model.decoder
        first = core.layers[0].self_attn
        self.heads, self.head_dim = int(first.num_heads), int(first.head_dim)
        self.width = self.heads * self.head_dim
        scale = float(getattr(core.embed_tokens, "embed_scale", 1.0) or 1.0)
        # the scaled table equals embedding-then-scale to the bit: each value is multiplied by the same scale
        self.embed = core.embed_tokens.weight.detach() * scale if scale != 1.0 else core.embed_tokens.weight
        self.positions = core.embed_positions.weight.detach()
        self.position_offset = int(core.embed_positions.offset)
        self.max_positions = self.positions.shape[0] - self.position_offset
        self.embed_norm = None if core.layernorm_embedding is None else _norm(core.layernorm_embedding)
        self.final_norm = None if core.layer_norm is None else _norm(core.layer_norm)
        self.head = _linear(decoder.lm_head)
        self.layers = [
            _Layer(
                norm1=_norm(layer.self_attn_layer_norm),
                qkv=_stacked(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                out=_linear(layer.self_attn.out_proj),
                norm2=_norm(layer.encoder_attn_layer_norm),
                cross_q=_linear(layer.encoder_attn.q_proj),
                cross_kv=_stacked(layer.encoder_attn.k_proj, layer.encoder_attn.v_proj),
                cross_out=_linear(layer.encoder_attn.out_proj),
                norm3=_norm(layer.final_layer_norm),
                fc1=_linear(layer.fc1),
                fc2=_linear(layer.fc2),
                activation=layer.activation_fn,
                self_scale=float(layer.self_attn.scaling),
                cross_scale=float(layer.encoder_attn.scaling),
            )
            for layer in core.layers
        ]
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.ffn = int(core.layers[0].fc1.out_features)
        self.native = self._native_layout(decoder)

    def _native_layout(self, decoder: Any) -> Any:
        """The 18 weight pointers per layer for the native ``decoder_layers`` (``kernels/attend.c``), or
        None where it does not compute this decoder as transformers does (then the steps run in PyTorch)."""
        layers = self.layers
        first = layers[0]
        norms = [n for layer in layers for n in (layer.norm1, layer.norm2, layer.norm3)]
        tensors = [
            t
            for layer in layers
            for pair in (
                layer.norm1, layer.qkv, layer.out, layer.norm2, layer.cross_q, layer.cross_out, layer.norm3,
                layer.fc1, layer.fc2,
            )
            for t in pair[:2]
        ]  # fmt: skip
        same = (
            self.device.type == "cpu"
            and self.dtype == torch.float32
            and getattr(decoder.config, "activation_function", None) == "gelu"
            and all(t is not None and t.dtype == torch.float32 for t in tensors)
            and len({n[2] for n in norms}) == 1
            and len({layer.self_scale for layer in layers}) == 1
            and len({layer.cross_scale for layer in layers}) == 1
            and all(layer.fc1[0].shape[0] == self.ffn for layer in layers)
            and self.head_dim <= 256
            and first.cross_kv[1] is not None
        )
        if not same or kernels.library() is None:
            return None
        # weights transposed (inputs x outputs) for the kernel's loops; alive as long as these weights
        self._kept = [
            t.t().contiguous() if t.dim() == 2 else t.contiguous() for t in tensors if t is not None
        ]
        return (ctypes.c_void_p * len(self._kept))(*[t.data_ptr() for t in self._kept])


@dataclass
class Read:
    """One page's greedy reading: the chosen tokens after the prompt (EOS included when it came) and the
    log-probability of each, and whether it stopped at the token limit rather than at EOS."""

    tokens: list[int]
    logps: list[float]
    hit_limit: bool
    cells: torch.Tensor | None = None  # the page's encoder cells (1, S, C), kept when the engine is asked to


class Engine(Generic[Key]):
    """Greedy decoding of pages through ``slots`` rows that pages enter and leave as they come and end.

    ``decoder`` is an ``MBartForCausalLM`` (:func:`supports`) or its :class:`DecoderWeights`, packed once.
    ``encode(pixel_values (1, 3, H, W)) -> (1, S, C)`` gives a page's encoder cells at the decoder's width
    (the reader's encoder, with its projection). :meth:`read` takes ``(key, pixel_values)`` pairs, lazily,
    and yields ``(key, Read)`` as each page ends: not in the order the pages came.
    """

    def __init__(
        self,
        decoder: Any,
        encode: Callable[[torch.Tensor], torch.Tensor],
        *,
        start_id: int,
        eos_id: int,
        pad_id: int | None = None,
        unk_id: int | None = None,
        forced_eos_id: int | None = None,
        max_new_tokens: int = 256,
        slots: int = 4,
        cells_dtype: torch.dtype | None = None,
        cells_budget: int | None = None,
        keep_cells: bool = False,
    ) -> None:
        self.weights = decoder if isinstance(decoder, DecoderWeights) else DecoderWeights(decoder)
        self.encode = encode
        self.start_id, self.eos_id, self.unk_id = start_id, eos_id, unk_id
        self.forced_eos_id = forced_eos_id
        # the prompt plus the new tokens must fit the decoder's learned positions
        self.max_new_tokens = max(1, min(max_new_tokens, self.weights.max_positions - 1))
        self.slots = max(1, slots)
        self.cells_dtype = cells_dtype  # the cross-attention's keys and values (None: the weights' dtype)
        # at most this many bytes of cells in the running rows (at least one row); None: ``slots`` rows
        self.cells_budget = cells_budget
        self.keep_cells = keep_cells  # each Read keeps its page's cells (to locate what it read)
        self.steps = 0  # decoding steps run (all rows together), for benchmarks
        self.row_steps = 0  # rows x steps

    @torch.inference_mode()
    def read(self, pages: Iterable[tuple[Key, torch.Tensor]]) -> Iterator[tuple[Key, Read]]:
        """Read every page; yields each page's :class:`Read` as soon as its row ends."""
        batch = _Batch(self.weights, self.slots, self.cells_dtype)
        waiting = iter(pages)
        keys: list[Key] = []
        reads: list[Read] = []
        exhausted = False
        slots = self.slots
        while True:
            while not exhausted and batch.rows < slots:  # fill the free rows
                item = next(waiting, None)
                if item is None:
                    exhausted = True
                    break
                key, pixels = item
                cells = self.encode(pixels)
                batch.admit(cells)
                keys.append(key)
                reads.append(Read([], [], hit_limit=False, cells=cells if self.keep_cells else None))
                if self.cells_budget is not None and batch.native:  # PyTorch's steps gain from rows
                    slots = max(1, min(self.slots, self.cells_budget // batch.page_bytes))
            if batch.rows == 0:
                return
            logits = batch.step(self._next_ids(reads)).float()  # (rows, V)
            self.steps += 1
            self.row_steps += batch.rows
            if self.unk_id is not None:
                logits[:, self.unk_id] = -math.inf
            if self.forced_eos_id is not None:
                last = [r for r, read in enumerate(reads) if len(read.tokens) == self.max_new_tokens - 1]
                if last:
                    logits[last] = -math.inf
                    logits[last, self.forced_eos_id] = 0.0
            best, chosen = logits.max(dim=-1)  # the first of equal maxima, as argmax
            logps = (best - torch.logsumexp(logits, dim=-1)).tolist()
            ended = []
            for row, (token, logp) in enumerate(zip(chosen.tolist(), logps, strict=True)):
                read = reads[row]
                read.tokens.append(token)
                read.logps.append(logp)
                if token == self.eos_id:
                    ended.append(row)
                elif len(read.tokens) >= self.max_new_tokens:
                    read.hit_limit = True
                    ended.append(row)
            for row in reversed(ended):  # the last row moves into an ended one's place
                yield keys[row], reads[row]
                batch.release(row)
                last_row = len(keys) - 1
                keys[row], reads[row] = keys[last_row], reads[last_row]
                keys.pop()
                reads.pop()

    def _next_ids(self, reads: list[Read]) -> torch.Tensor:
        ids = [read.tokens[-1] if read.tokens else self.start_id for read in reads]
        return torch.tensor(ids, dtype=torch.long, device=self.weights.device)


class _Batch:
    """The running rows: per layer the cross-attention's keys (rows, H, D, S) and values (rows, H, S, D) of
    each row's page, and the self-attention's keys (rows, H, D, capacity) and values (rows, H, capacity, D).

    Rows are kept packed at the front; a released row takes the last row's state. Each row has its own
    length; a row's keys past its length belong to an earlier page (or are unset) and are masked.
    """

    def __init__(self, weights: DecoderWeights, slots: int, cells_dtype: torch.dtype | None = None) -> None:
        self.w = weights
        self.slots = slots
        self.cells_dtype = cells_dtype or weights.dtype
        self.rows = 0
        self.lengths = torch.zeros(slots, dtype=torch.long)
        self.cross_keys: list[torch.Tensor] = []
        self.cross_values: list[torch.Tensor] = []
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros(0)
        self.uniform = True  # every row at the same length: no mask needed
        self.native = weights.native is not None and self.cells_dtype in (torch.float32, torch.bfloat16)
        self._caches: Any = None  # the native kernel's pointers to the caches, rebuilt when they move
        self._scratch = torch.zeros(0)
        self.skip = 0  # parts the native step leaves out: benchmarks only (1 self-, 2 cross-attention, 4 FFN)

    @property
    def page_bytes(self) -> int:
        """Bytes of one row's cross-attention keys and values, all layers."""
        per_layer = self.cross_keys[0][0].nbytes + self.cross_values[0][0].nbytes if self.cross_keys else 0
        return max(1, per_layer * len(self.w.layers))

    def admit(self, cells: torch.Tensor) -> None:
        """A new row for a page whose encoder cells are ``cells`` (1, S, C)."""
        w, row = self.w, self.rows
        cells = cells.to(w.dtype)
        if not self.cross_keys:
            cells_n = cells.shape[1]
            for _ in w.layers:
                keys = (self.slots, w.heads, w.head_dim, cells_n)
                values = (self.slots, w.heads, cells_n, w.head_dim)
                self.cross_keys.append(cells.new_empty(keys, dtype=self.cells_dtype))
                self.cross_values.append(cells.new_empty(values, dtype=self.cells_dtype))
            self._grow(64)
        h, d = w.heads, w.head_dim
        for index, layer in enumerate(w.layers):
            kv = F.linear(cells[0], *layer.cross_kv)  # (S, 2C)
            keys, values = kv.split(w.width, dim=-1)
            self.cross_keys[index][row] = keys.view(-1, h, d).permute(1, 2, 0)  # (H, D, S)
            self.cross_values[index][row] = values.view(-1, h, d).transpose(0, 1)  # (H, S, D)
        self.lengths[row] = 0
        self.mask[row] = -math.inf
        self.uniform = self.rows == 0 or bool((self.lengths[:row] == 0).all())
        self.rows += 1

    def release(self, row: int) -> None:
        """Row ``row`` leaves; the last row takes its place."""
        last = self.rows - 1
        if row != last:
            for tensors in (self.cross_keys, self.cross_values, self.keys, self.values):
                for tensor in tensors:
                    tensor[row] = tensor[last]
            self.lengths[row] = self.lengths[last]
            self.mask[row] = self.mask[last]
        self.rows = last
        if self.rows:
            lengths = self.lengths[: self.rows]
            self.uniform = bool((lengths == lengths[0]).all())

    def _grow(self, capacity: int) -> None:
        w = self.w
        old = self.capacity
        # zeros, not empty: PyTorch's steps read past a row's length (masked), and 0 x NaN garbage is NaN
        keys = torch.zeros(self.slots, w.heads, w.head_dim, capacity, dtype=w.dtype, device=w.device)
        values = torch.zeros(self.slots, w.heads, capacity, w.head_dim, dtype=w.dtype, device=w.device)
        mask = torch.full((self.slots, capacity), -math.inf, dtype=w.dtype, device=w.device)
        if old:
            mask[:, :old] = self.mask
        self.mask = mask
        for index in range(len(w.layers)):
            new_keys, new_values = keys.clone(), values.clone()
            if old:
                new_keys[..., :old] = self.keys[index]
                new_values[:, :, :old] = self.values[index]
                self.keys[index], self.values[index] = new_keys, new_values
            else:
                self.keys.append(new_keys)
                self.values.append(new_values)
        self.capacity = capacity
        self._caches = None

    def _native_layers(self, hidden: torch.Tensor, n: int) -> torch.Tensor:
        """All layers for this token of each row, in ``kernels/attend.c`` (same as :meth:`step`'s loop)."""
        w = self.w
        if self._caches is None:
            pointers = [
                t.data_ptr()
                for index in range(len(w.layers))
                for t in (
                    self.keys[index],
                    self.values[index],
                    self.cross_keys[index],
                    self.cross_values[index],
                )
            ]
            self._caches = (ctypes.c_void_p * len(pointers))(*pointers)
        cells = self.cross_keys[0].shape[-1]
        need = n * (5 * w.width + w.ffn) + max(cells, self.capacity)
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need, dtype=torch.float32)
        hidden = hidden.contiguous()
        first = w.layers[0]
        lib = kernels.library()
        assert lib is not None  # self.native
        status = lib.decoder_layers(
            hidden.data_ptr(), n, self.lengths.data_ptr(), len(w.layers), w.width, w.heads, w.ffn, cells,
            self.slots, self.capacity, first.norm1[2], first.self_scale, first.cross_scale,
            int(self.cells_dtype == torch.bfloat16), w.native, self._caches, self._scratch.data_ptr(),
            self.skip,
        )  # fmt: skip
        if status != 0:
            raise RuntimeError(f"the native decoder step failed ({status})")
        return hidden

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """The next token's logits (rows, V) after each row's tokens so far and ``ids`` (rows,)."""
        w, n = self.w, self.rows
        h, d = w.heads, w.head_dim
        lengths = self.lengths[:n]
        longest = int(lengths.max()) + 1
        if longest > self.capacity:
            self._grow(2 * self.capacity)
        hidden = w.embed[ids] + w.positions[lengths + w.position_offset]  # (n, C)
        if w.embed_norm is not None:
            hidden = _layer_norm(hidden, w.embed_norm)
        if self.native:
            hidden = self._native_layers(hidden, n)
            self.lengths[:n] += 1
            if w.final_norm is not None:
                hidden = _layer_norm(hidden, w.final_norm)
            return F.linear(hidden, *w.head)
        rows = torch.arange(n)
        self.mask[rows, lengths] = 0.0  # this token's key is visible to its row
        mask = None if self.uniform else self.mask[:n, None, None, :longest]  # (n, 1, 1, L)
        for index, layer in enumerate(w.layers):
            # self-attention over each row's tokens so far
            q, k, v = F.linear(_layer_norm(hidden, layer.norm1), *layer.qkv).split(w.width, dim=-1)
            keys, values = self.keys[index], self.values[index]
            keys[rows, :, :, lengths] = k.view(n, h, d)
            values[rows, :, lengths] = v.view(n, h, d)
            scores = torch.matmul(q.view(n, h, 1, d), keys[:n, :, :, :longest])  # (n, H, 1, L)
            scores = scores * layer.self_scale if mask is None else scores * layer.self_scale + mask
            mixed = torch.matmul(scores.softmax(-1), values[:n, :, :longest])  # (n, H, 1, D)
            hidden = hidden + F.linear(mixed.view(n, -1), *layer.out)
            # cross-attention over the page's cells
            q = F.linear(_layer_norm(hidden, layer.norm2), *layer.cross_q)
            cross_keys = self.cross_keys[index][:n].view(n * h, d, -1)
            mixed = kernels.attend(
                q.view(n * h, d),
                cross_keys,
                self.cross_values[index][:n].view(n * h, -1, d),
                layer.cross_scale,
            ).to(w.dtype)
            hidden = hidden + F.linear(mixed.view(n, -1), *layer.cross_out)
            # feed-forward
            inner = layer.activation(F.linear(_layer_norm(hidden, layer.norm3), *layer.fc1))
            hidden = hidden + F.linear(inner, *layer.fc2)
        self.lengths[:n] += 1
        if w.final_norm is not None:
            hidden = _layer_norm(hidden, w.final_norm)
        return F.linear(hidden, *w.head)
