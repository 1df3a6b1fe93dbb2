"""A smaller DONUT student derived from a teacher: fewer Swin blocks per stage, fewer decoder layers.

The student's config is the teacher's, deep-copied, with only ``encoder.depths`` and
``decoder.decoder_layers`` changed (and ``encoder.image_size`` when ``student.image_size`` asks for a
smaller input). Its weights are the teacher's, copied tensor for tensor: patch
embedding, patch merging, norms, token/position embeddings, ``lm_head`` and the selected blocks/layers
(state-dict keys are remapped, e.g. student ``...layers.2.blocks.1.`` ← teacher ``...layers.2.blocks.3.``).
The tokenizer does not change; the processor is the teacher's, or the teacher's at the student's image
size (:func:`student_processor`; the student then reads the teacher's batches resized, :func:`resize_pixels`).

:func:`build_student` is the one way a recipe becomes a student (``donut-hole compress`` and the
benchmark both call it): :func:`derive_student`, then the structured FFN pruning of ``prune.ffn_keep_ratio``,
and the density that magnitude pruning still has to reach (:func:`unstructured_density`).

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
  so both sides of the last pair are post-norm (with ``"last"`` too); with ``"first"`` the student's last
  entry is post-norm while its teacher partner is not (a small mismatch that distillation absorbs).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import DonutProcessor, DonutSwinConfig, MBartConfig, VisionEncoderDecoderModel

from donut_hole.compression.prune import prunable_weights, prune_ffn_
from donut_hole.compression.recipe import CompressRecipe, Selection, StudentConfig
from donut_hole.model.build import check_input_size, count_parameters

_ENCODER_BLOCK = re.compile(r"^(encoder\.encoder\.layers\.(\d+)\.blocks\.)(\d+)(\..*)$")
_DECODER_LAYER = re.compile(r"^(decoder\.model\.decoder\.layers\.)(\d+)(\..*)$")


class StudentError(ValueError):
    """A student config that does not fit the teacher, or a weight that could not be copied."""


def list_size(size: int | list[int] | tuple[int, int]) -> list[int]:
    """A config's ``image_size`` as ``[height, width]`` (an int means a square)."""
    return [size, size] if isinstance(size, int) else [int(side) for side in size]


def select_layers(n_teacher: int, n_student: int, selection: Selection = "uniform") -> list[int]:
    """Teacher indices kept for a student of ``n_student`` layers.

    ``uniform`` spreads them evenly and always keeps the first and the last (one layer: the first);
    ``first`` keeps the first ``n_student``, ``last`` the last ``n_student``.

    >>> select_layers(14, 6)
    [0, 3, 5, 8, 10, 13]
    >>> select_layers(4, 2), select_layers(4, 2, "first"), select_layers(4, 1, "last")
    ([0, 3], [0, 1], [3])

    Swin alternates plain (even index) and shifted-window (odd index) blocks; a uniform pick may put a
    shifted teacher block in a plain student slot (14 → 6: teacher 5 → student 2). The weights have the same
    shapes either way and distillation adapts them.
    """
    if not 1 <= n_student <= n_teacher:
        raise StudentError(f"cannot keep {n_student} of {n_teacher} layers: need 1 <= kept <= {n_teacher}")
    if selection == "last":
        return list(range(n_teacher - n_student, n_teacher))
    if selection == "first" or n_student == 1:
        return list(range(n_student))
    if selection != "uniform":
        raise StudentError(f"unknown selection {selection!r}; use 'uniform', 'first' or 'last'")
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


def layer_map_for(teacher_depths: list[int], teacher_decoder_layers: int, spec: StudentConfig) -> LayerMap:
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


def _encoder(model: VisionEncoderDecoderModel) -> DonutSwinConfig:
    return cast(DonutSwinConfig, model.config.encoder)


def _decoder(model: VisionEncoderDecoderModel) -> MBartConfig:
    return cast(MBartConfig, model.config.decoder)


def derive_student(
    teacher: VisionEncoderDecoderModel, spec: StudentConfig
) -> tuple[VisionEncoderDecoderModel, LayerMap]:
    """A student initialised from ``teacher``'s weights, and the map of what it kept.

    Every tensor of the student is copied from the teacher (a missing or misshapen one is a
    :class:`StudentError`). The student has the teacher's dtype, device and train/eval mode; the teacher is
    not changed. Keep using the teacher's processor (tokenizer and image settings are the same).

    >>> spec = StudentConfig(encoder_depths=[2, 2, 6, 2], decoder_layers=2)  # doctest: +SKIP
    >>> student, layer_map = derive_student(teacher, spec)  # doctest: +SKIP
    """
    layer_map = layer_map_for(list(_encoder(teacher).depths), _decoder(teacher).decoder_layers, spec)
    config = copy.deepcopy(teacher.config)
    cast(DonutSwinConfig, config.encoder).depths = list(spec.encoder_depths)
    cast(MBartConfig, config.decoder).decoder_layers = spec.decoder_layers
    if spec.image_size is not None:
        encoder = cast(DonutSwinConfig, config.encoder)
        try:
            check_input_size(encoder, spec.image_size)
        except ValueError as exc:
            raise StudentError(f"student.image_size: {exc}") from exc
        encoder.image_size = list(spec.image_size)
    student = VisionEncoderDecoderModel(config=config)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    first = next(teacher.parameters())
    student.to(device=first.device, dtype=first.dtype)  # type: ignore[call-arg]  # transformers' decorated .to()

    source = teacher.state_dict()
    with torch.no_grad():
        for key, tensor in student.state_dict().items():
            from_key = teacher_key(key, layer_map)
            if from_key not in source:
                raise StudentError(f"student tensor {key} has no teacher tensor {from_key}")
            if source[from_key].shape != tensor.shape:
                raise StudentError(
                    f"shape mismatch for {key}: student {tuple(tensor.shape)}, teacher {from_key} "
                    f"{tuple(source[from_key].shape)}"
                )
            tensor.copy_(source[from_key])
    if spec.grow_from is not None:
        grow_(student, VisionEncoderDecoderModel.from_pretrained(spec.grow_from))
    student.train(teacher.training)
    return student, layer_map


# the tensors whose output is added to a decoder layer's residual stream: zero, the layer adds nothing
_RESIDUAL_OUTPUTS = (".self_attn.out_proj.", ".encoder_attn.out_proj.", ".fc2.")


def grow_(student: VisionEncoderDecoderModel, trained: VisionEncoderDecoderModel) -> None:
    """Make ``student`` read as ``trained`` (a student with the same encoder and no more decoder layers):
    copy its tensors, and start each further decoder layer as the identity, a copy of ``trained``'s last
    layer whose residual outputs are zero (pre-norm mBART layers: the residual stream passes unchanged)."""
    source = trained.state_dict()
    have, want = _decoder(trained).decoder_layers, _decoder(student).decoder_layers
    if list(_encoder(trained).depths) != list(_encoder(student).depths) or have > want:
        raise StudentError(
            f"student.grow_from has encoder depths {list(_encoder(trained).depths)} and {have} decoder "
            f"layers: growing needs this student's encoder ({list(_encoder(student).depths)}) and at most "
            f"its {want} decoder layers"
        )
    with torch.no_grad():
        for key, tensor in student.state_dict().items():
            from_key, silent = key, False
            if match := _DECODER_LAYER.match(key):
                prefix, layer, rest = match.groups()
                silent = int(layer) >= have and rest.startswith(_RESIDUAL_OUTPUTS)
                from_key = f"{prefix}{min(int(layer), have - 1)}{rest}"
            if from_key not in source or source[from_key].shape != tensor.shape:
                shape = tuple(tensor.shape)
                raise StudentError(f"student.grow_from has no tensor {from_key} of shape {shape}")
            if silent:
                tensor.zero_()
            else:
                tensor.copy_(source[from_key])


def processor_size(processor: DonutProcessor) -> tuple[int, int]:
    """(height, width) of the images a processor makes."""
    size = processor.image_processor.size
    return int(size["height"]), int(size["width"])


def student_processor(processor: DonutProcessor, image_size: list[int] | None) -> DonutProcessor:
    """The processor of a student whose input is ``image_size`` ([height, width]): the teacher's, resized.

    The aspect ratio must be the teacher's (within 1 %), so that the teacher's batch resized
    (:func:`resize_pixels`) is what this processor makes of the same scan.

    >>> student_processor(processor, [1280, 960]).image_processor.size  # doctest: +SKIP
    {'height': 1280, 'width': 960}
    """
    if image_size is None:
        return processor
    (teacher_h, teacher_w), (height, width) = processor_size(processor), image_size
    if abs(height / width - teacher_h / teacher_w) > 0.01 * teacher_h / teacher_w:
        raise StudentError(
            f"student.image_size {height}x{width} (height x width) has another aspect ratio than the "
            f"teacher's input {teacher_h}x{teacher_w}: keep height/width = {teacher_h / teacher_w:.3f}"
        )
    resized = copy.deepcopy(processor)
    resized.image_processor.size = {"height": height, "width": width}
    return resized


def resize_pixels(pixel_values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A batch made for the teacher, ``(B, 3, H, W)``, at the student's input ``size`` (bilinear,
    antialiased); returned as it is when it already has that size."""
    if tuple(pixel_values.shape[-2:]) == tuple(size):
        return pixel_values
    return F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False, antialias=True)


def unstructured_density(*, target: float, teacher_prunable: int, student_prunable: int) -> float:
    """Density over the student's own prunable weights that meets ``target`` relative to the teacher.

    >>> unstructured_density(target=0.46, teacher_prunable=1000, student_prunable=600)
    0.7666666666666667
    """
    return min(1.0, target * teacher_prunable / student_prunable)


@dataclass
class Student:
    """What :func:`build_student` made: the model, the map of the teacher layers it kept, the density that
    magnitude pruning still has to reach over its own prunable weights (1.0: none), and ``structure``,
    the report's account of what was kept and removed."""

    model: VisionEncoderDecoderModel
    layer_map: LayerMap
    density: float
    structure: dict[str, Any]


def build_student(teacher: VisionEncoderDecoderModel, recipe: CompressRecipe) -> Student:
    """The recipe's student of ``teacher``, before magnitude pruning: layers selected and copied
    (:func:`derive_student`), FFN neurons removed (``prune.ffn_keep_ratio``), and the density left for
    magnitude pruning so that its nonzero prunable weights are ``prune.target_density`` of the teacher's.

    >>> student = build_student(teacher, load_recipe("configs/tiny.yaml", CompressRecipe))  # doctest: +SKIP
    >>> MagnitudePruner(student.model, final_density=student.density, ...)  # doctest: +SKIP
    """
    model, layer_map = derive_student(teacher, recipe.student)
    structure: dict[str, Any] = {
        "encoder_depths": recipe.student.encoder_depths,
        "teacher_encoder_depths": list(_encoder(teacher).depths),
        "decoder_layers": layer_map.decoder_layers,
        "encoder_blocks": layer_map.encoder_blocks,
        "image_size": recipe.student.image_size or list_size(_encoder(teacher).image_size),
        "parameters_after_layer_selection": count_parameters(model),
    }
    if recipe.student.grow_from is not None:
        structure["grown_from"] = recipe.student.grow_from
    if recipe.prune.ffn_keep_ratio < 1.0:
        pruned = prune_ffn_(model, keep_ratio=recipe.prune.ffn_keep_ratio)
        structure["ffn_pruning"] = {k: v for k, v in pruned.items() if k != "kept"}
    density = unstructured_density(
        target=recipe.prune.target_density,
        teacher_prunable=sum(w.numel() for w in prunable_weights(teacher).values()),
        student_prunable=sum(w.numel() for w in prunable_weights(model).values()),
    )
    structure["unstructured_density_over_student"] = density
    return Student(model=model, layer_map=layer_map, density=density, structure=structure)
