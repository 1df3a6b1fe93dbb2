"""A smaller DONUT student derived from a teacher: fewer Swin blocks per stage, fewer decoder layers.

The student's config is the teacher's, deep-copied, with only ``encoder.depths`` and
``decoder.decoder_layers`` changed. Its weights are the teacher's, copied tensor for tensor: patch
embedding, patch merging, norms, token/position embeddings, ``lm_head`` and the selected blocks/layers
(state-dict keys are remapped, e.g. student ``...layers.2.blocks.1.`` ← teacher ``...layers.2.blocks.3.``).
The tokenizer and processor do not change: the caller keeps using the teacher's processor object.

Hidden-state indexing used by :meth:`LayerMap.hidden_pairs` (with ``output_hidden_states=True`` on a
``VisionEncoderDecoderModel``):

* encoder — ``out.encoder_hidden_states`` (token maps ``(B, L, C)``, not ``reshaped_hidden_states``):
  index 0 is the patch embedding, index ``i + 1`` the output of Swin stage ``i`` *after* its patch merging
  (the last stage has none, so its entry equals ``encoder_last_hidden_state``). Stage ``i`` of the student
  pairs with stage ``i`` of the teacher: same index, same shape.
* decoder — ``out.decoder_hidden_states`` ``(B, T, d_model)``: index 0 is the embeddings, index ``j + 1``
  the output of decoder layer ``j``; the last entry is taken after the decoder's final ``layer_norm``.
  Student layer ``j`` pairs with teacher layer ``decoder_layers[j]``, i.e. indices
  ``(decoder_layers[j] + 1, j + 1)``. With ``selection="uniform"`` the last layers pair with each other,
  so both sides of the last pair are post-norm; with ``"first"`` the student's last entry is post-norm
  while its teacher partner is not (a small mismatch that distillation absorbs).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from transformers import VisionEncoderDecoderModel

Selection = Literal["uniform", "first"]

_ENCODER_BLOCK = re.compile(r"^(encoder\.encoder\.layers\.(\d+)\.blocks\.)(\d+)(\..*)$")
_DECODER_LAYER = re.compile(r"^(decoder\.model\.decoder\.layers\.)(\d+)(\..*)$")


class StudentError(ValueError):
    """A student spec that does not fit the teacher, or a weight that could not be copied."""


@dataclass(frozen=True)
class StudentSpec:
    """How much of the teacher to keep."""

    encoder_depths: list[int] = field(metadata={"help": "Swin blocks per stage, e.g. [2, 2, 6, 2]."})
    decoder_layers: int = field(metadata={"help": "mBART decoder layers."})
    selection: Selection = field(
        default="uniform",
        metadata={"help": "uniform: evenly spaced teacher blocks incl. first and last; first: the first n."},
    )


def select_layers(n_teacher: int, n_student: int, selection: Selection = "uniform") -> list[int]:
    """Teacher indices kept for a student of ``n_student`` layers.

    ``uniform`` spreads them evenly and always keeps the first and the last (one layer: the first);
    ``first`` keeps the first ``n_student``.

    >>> select_layers(14, 6)
    [0, 3, 5, 8, 10, 13]
    >>> select_layers(4, 2), select_layers(4, 2, "first")
    ([0, 3], [0, 1])

    Swin alternates plain (even index) and shifted-window (odd index) blocks; a uniform pick may put a
    shifted teacher block in a plain student slot (14 → 6: teacher 5 → student 2). The weights have the same
    shapes either way and distillation adapts them.
    """
    if not 1 <= n_student <= n_teacher:
        raise StudentError(f"cannot keep {n_student} of {n_teacher} layers: need 1 <= kept <= {n_teacher}")
    if selection == "first" or n_student == 1:
        return list(range(n_student))
    if selection != "uniform":
        raise StudentError(f"unknown selection {selection!r}; use 'uniform' or 'first'")
    step = (n_teacher - 1) / (n_student - 1)
    return [math.floor(i * step + 0.5) for i in range(n_student)]


@dataclass
class LayerMap:
    """Which teacher blocks/layers the student kept; JSON-serialisable (``to_json`` / ``from_json``).

    ``encoder_blocks[i][j]`` is the teacher block copied into student block ``j`` of stage ``i``;
    ``decoder_layers[j]`` the teacher decoder layer copied into student layer ``j``.
    """

    encoder_blocks: list[list[int]]
    decoder_layers: list[int]
    teacher_encoder_depths: list[int]
    teacher_decoder_layers: int

    def hidden_pairs(self) -> dict[str, list[tuple[int, int]]]:
        """(teacher_index, student_index) pairs into ``encoder_hidden_states`` / ``decoder_hidden_states``.

        >>> LayerMap([[0, 1], [0, 13]], [0, 3], [2, 14], 4).hidden_pairs()
        {'encoder': [(1, 1), (2, 2)], 'decoder': [(1, 1), (4, 2)]}
        """
        encoder = [(i + 1, i + 1) for i in range(len(self.encoder_blocks))]
        decoder = [(t + 1, j + 1) for j, t in enumerate(self.decoder_layers)]
        return {"encoder": encoder, "decoder": decoder}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LayerMap:
        return cls(**json.loads(text))


def layer_map_for(teacher_depths: list[int], teacher_decoder_layers: int, spec: StudentSpec) -> LayerMap:
    """The :class:`LayerMap` of ``spec`` on a teacher with these depths (pure; no model needed)."""
    if len(spec.encoder_depths) != len(teacher_depths):
        raise StudentError(
            f"the student has {len(spec.encoder_depths)} Swin stages, the teacher {len(teacher_depths)}; "
            "only the blocks per stage may change"
        )
    blocks = [
        select_layers(t, s, spec.selection) for t, s in zip(teacher_depths, spec.encoder_depths, strict=True)
    ]
    layers = select_layers(teacher_decoder_layers, spec.decoder_layers, spec.selection)
    return LayerMap(blocks, layers, list(teacher_depths), teacher_decoder_layers)


def teacher_key(student_key: str, layer_map: LayerMap) -> str:
    """The teacher state-dict key whose tensor fills ``student_key``.

    >>> m = LayerMap([[0, 1], [0, 13]], [0, 3], [2, 14], 4)
    >>> teacher_key("encoder.encoder.layers.1.blocks.1.attention.self.query.weight", m)
    'encoder.encoder.layers.1.blocks.13.attention.self.query.weight'
    >>> teacher_key("decoder.model.decoder.layers.1.fc1.bias", m)
    'decoder.model.decoder.layers.3.fc1.bias'
    """
    if match := _ENCODER_BLOCK.match(student_key):
        prefix, stage, block, rest = match.groups()
        return f"{prefix}{layer_map.encoder_blocks[int(stage)][int(block)]}{rest}"
    if match := _DECODER_LAYER.match(student_key):
        prefix, layer, rest = match.groups()
        return f"{prefix}{layer_map.decoder_layers[int(layer)]}{rest}"
    return student_key


def derive_student(
    teacher: VisionEncoderDecoderModel, spec: StudentSpec
) -> tuple[VisionEncoderDecoderModel, LayerMap]:
    """A student initialised from ``teacher``'s weights, and the map of what it kept.

    The student has the teacher's dtype, device and train/eval mode; the teacher is not changed. Keep using
    the teacher's processor (tokenizer and image settings are the same).

    >>> student, layer_map = derive_student(teacher, StudentSpec([2, 2, 6, 2], 2))  # doctest: +SKIP
    """
    layer_map = layer_map_for(
        list(teacher.config.encoder.depths), teacher.config.decoder.decoder_layers, spec
    )
    config = copy.deepcopy(teacher.config)
    config.encoder.depths = list(spec.encoder_depths)
    config.decoder.decoder_layers = spec.decoder_layers
    student = VisionEncoderDecoderModel(config=config)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    first = next(teacher.parameters())
    student.to(device=first.device, dtype=first.dtype)

    source = teacher.state_dict()
    target = student.state_dict()
    filled: set[str] = set()
    with torch.no_grad():
        for key, tensor in target.items():
            from_key = teacher_key(key, layer_map)
            if from_key not in source:
                raise StudentError(f"student tensor {key} has no teacher tensor {from_key}")
            if source[from_key].shape != tensor.shape:
                raise StudentError(
                    f"shape mismatch for {key}: student {tuple(tensor.shape)}, teacher {from_key} "
                    f"{tuple(source[from_key].shape)}"
                )
            tensor.copy_(source[from_key])
            filled.add(key)
    missing = set(target) - filled
    if missing:
        raise StudentError(f"student tensors not filled from the teacher: {sorted(missing)}")
    student.train(teacher.training)
    return student, layer_map
