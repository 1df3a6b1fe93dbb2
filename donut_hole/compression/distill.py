"""Distillation losses (pure functions on tensors): CE on labels, logit KL at a temperature, hidden states.

Shapes: ``B`` batch, ``T`` decoder positions, ``V`` vocabulary, ``D`` hidden width. Labels use ``-100`` for
positions that do not count (prompt, padding), as PyTorch's ``cross_entropy`` does. Teacher tensors are
always detached, so gradients reach only the student. All reductions are done in float32 so that bf16
autocast does not lose precision in the sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from donut_hole.compression.recipe import DistillConfig

IGNORE_INDEX = -100


def shift_for_decoder(ids: Tensor, *, pad_token_id: int, prompt_length: int = 1) -> tuple[Tensor, Tensor]:
    """Teacher-forcing inputs and targets from full sequences ``<task> tokens... </s> <pad>...``.

    As DONUT does: the decoder reads ``ids[:, :-1]`` and predicts ``ids[:, 1:]``. We shift here and pass
    ``decoder_input_ids`` ourselves, never ``labels=`` to the model, which would shift again with
    ``decoder_start_token_id``. Targets that are prompt tokens (the first ``prompt_length`` ids) or padding
    become ``-100``.

    >>> shift_for_decoder(torch.tensor([[5, 7, 8, 2, 0]]), pad_token_id=0)
    (tensor([[5, 7, 8, 2]]), tensor([[   7,    8,    2, -100]]))
    >>> shift_for_decoder(torch.tensor([[5, 6, 8, 2]]), pad_token_id=0, prompt_length=2)[1]
    tensor([[-100,    8,    2]])
    """
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"expected token ids of shape (B, T) with T >= 2, got {tuple(ids.shape)}")
    if prompt_length < 1:
        raise ValueError(f"prompt_length must be >= 1 (the task token), got {prompt_length}")
    decoder_input_ids = ids[:, :-1]  # (B, T-1)
    labels = ids[:, 1:].clone()  # (B, T-1)
    labels[labels == pad_token_id] = IGNORE_INDEX
    labels[:, : prompt_length - 1] = IGNORE_INDEX
    return decoder_input_ids, labels


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; 0 (still attached to the graph) when nothing counts."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Token cross-entropy averaged over positions whose label is not -100.

    >>> ce_loss(torch.zeros(1, 2, 4), torch.tensor([[1, -100]]))  # uniform over 4 tokens: ln 4
    tensor(1.3863)
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    per_token = F.cross_entropy(
        logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return _masked_mean(per_token, labels.flatten() != IGNORE_INDEX)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels_mask: Tensor, temperature: float
) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T²`` averaged over positions where ``labels_mask`` is True.

    The ``T²`` factor (Hinton et al., 2015) keeps gradient magnitudes comparable across temperatures.

    >>> s, t = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, 2 * 1.0986123]]])  # 2 ln 3
    >>> kd_loss(s, t, torch.tensor([[True]]), temperature=2.0)  # 4 KL((1/4, 3/4) || (1/2, 1/2))
    tensor(0.5232)
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; student and teacher must share the tokenizer"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, T, V)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (B, T)
    return _masked_mean(per_token, labels_mask.bool()) * temperature**2


def hidden_loss(
    student_states: Sequence[Tensor],
    teacher_states: Sequence[Tensor],
    pairs: Sequence[tuple[int, int]],
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over ``(teacher_index, student_index)`` pairs of the MSE between the paired hidden states.

    Each state is ``(B, T, D)``; with ``mask (B, T)`` only positions where it is True count (each counted
    position averages its ``D`` features).

    >>> s, t = [torch.zeros(1, 2, 2)], [torch.ones(1, 2, 2), torch.full((1, 2, 2), 3.0)]
    >>> hidden_loss(s, t, [(0, 0), (1, 0)])  # (1 + 9) / 2
    tensor(5.)
    """
    if not pairs:
        raise ValueError("hidden_loss needs at least one (teacher_index, student_index) pair")
    terms = []
    for t, s in pairs:
        if not (0 <= t < len(teacher_states) and 0 <= s < len(student_states)):
            raise IndexError(
                f"pair (teacher {t}, student {s}) is outside the {len(teacher_states)} teacher / "
                f"{len(student_states)} student hidden states"
            )
        hs, ht = student_states[s], teacher_states[t]
        if hs.shape != ht.shape:
            raise ValueError(
                f"hidden states differ in shape for pair (teacher {t}, student {s}): student "
                f"{tuple(hs.shape)} vs teacher {tuple(ht.shape)}; pair only layers of equal width and length"
            )
        per_position = (hs.float() - ht.detach().float()).pow(2).mean(dim=-1)  # (B, T)
        if mask is None:
            terms.append(per_position.mean())
        else:
            if mask.shape != per_position.shape:
                raise ValueError(f"mask {tuple(mask.shape)} does not match hidden states {tuple(hs.shape)}")
            terms.append(_masked_mean(per_position, mask.bool()))
    return torch.stack(terms).mean()


def attention_kd_loss(student_attention: Tensor, teacher_attention: Tensor, mask: Tensor) -> Tensor:
    """Mean over counted positions of KL(teacher || student) between cross-attention maps.

    Both maps are ``(B, T, S)`` (one decoder layer, heads averaged), each row a distribution over the
    ``S`` encoder cells; ``mask (B, T)`` marks the positions that count. Equal maps give 0.

    >>> student, teacher = torch.full((1, 1, 4), 0.25), torch.tensor([[[0.7, 0.1, 0.1, 0.1]]])
    >>> round(float(attention_kd_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool))), 4)
    0.4458
    """
    if student_attention.shape != teacher_attention.shape:
        raise ValueError(
            f"cross-attention maps differ in shape: student {tuple(student_attention.shape)} vs teacher "
            f"{tuple(teacher_attention.shape)}; the student must read at the teacher's input size"
        )
    t = teacher_attention.detach().float().clamp(min=1e-8)
    s = student_attention.float().clamp(min=1e-8)
    per_position = (t * (t.log() - s.log())).sum(dim=-1)  # (B, T)
    return _masked_mean(per_position, mask.bool())


def forward_with_cross_attention(
    model: Any, pixels: Tensor, decoder_input_ids: Tensor, *, output_hidden_states: bool = False
) -> Any:
    """Teacher-forced outputs of ``model`` with the decoder's attention maps (eager attention needed) but
    not the encoder's: those, every Swin window of every block, take gigabytes at a page's size and no
    loss reads them."""
    encoded = model.encoder(pixel_values=pixels, output_hidden_states=output_hidden_states)
    return model(
        encoder_outputs=encoded,
        decoder_input_ids=decoder_input_ids,
        output_hidden_states=output_hidden_states,
        output_attentions=True,
    )


def last_cross_attention(out: Any, who: str = "model") -> Tensor:
    """The last decoder layer's cross-attention maps of ``out``, heads averaged: (B, T, S)."""
    maps = getattr(out, "cross_attentions", None)
    if not maps or maps[-1] is None:
        raise ValueError(
            f"the {who} output has no cross_attentions; run it with output_attentions=True "
            "and eager attention"
        )
    return cast(Tensor, maps[-1]).mean(dim=1)  # (B, heads, T, S) -> (B, T, S): last layer, mean over heads


def _states(out: Any, name: str, who: str) -> Sequence[Tensor]:
    states = getattr(out, name, None)
    if states is None:
        raise ValueError(f"the {who} output has no {name}; run the model with output_hidden_states=True")
    return states


def distillation_loss(
    student_out: Any,
    teacher_out: Any,
    labels: Tensor,
    *,
    weights: DistillConfig,
    layer_map: Any,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the terms, and each term (unweighted) plus ``total`` as floats for logging.

    ``weights`` is the recipe's ``distill:`` section; a term with weight 0 is not computed.

    ``student_out`` / ``teacher_out`` are ``Seq2SeqLMOutput`` of the same batch (run the teacher under
    ``torch.no_grad()``; hidden states are needed only for non-zero hidden weights). ``labels (B, T)`` come
    from :func:`shift_for_decoder`; ``layer_map`` is the student's ``LayerMap`` (its ``hidden_pairs()``).
    The decoder hidden term counts only positions whose label is not -100.
    """
    mask = labels != IGNORE_INDEX  # (B, T)
    total = student_out.logits.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}

    def add(name: str, weight: float, value: Tensor) -> None:
        nonlocal total
        total = total + weight * value
        parts[name] = float(value.detach())

    if weights.ce > 0:
        add("ce", weights.ce, ce_loss(student_out.logits, labels))
    if weights.kd > 0:
        add("kd", weights.kd, kd_loss(student_out.logits, teacher_out.logits, mask, weights.temperature))
    if weights.hidden_encoder > 0 or weights.hidden_decoder > 0:
        pairs = layer_map.hidden_pairs()
        if weights.hidden_encoder > 0:
            s = _states(student_out, "encoder_hidden_states", "student")
            t = _states(teacher_out, "encoder_hidden_states", "teacher")
            add("hidden_encoder", weights.hidden_encoder, hidden_loss(s, t, pairs["encoder"]))
        if weights.hidden_decoder > 0:
            s = _states(student_out, "decoder_hidden_states", "student")
            t = _states(teacher_out, "decoder_hidden_states", "teacher")
            add("hidden_decoder", weights.hidden_decoder, hidden_loss(s, t, pairs["decoder"], mask))
    if weights.attention > 0:
        s_map, t_map = (
            last_cross_attention(student_out, "student"),
            last_cross_attention(teacher_out, "teacher"),
        )
        add("attention", weights.attention, attention_kd_loss(s_map, t_map, mask))
    parts["total"] = float(total.detach())
    return total, parts
