"""Build DONUT models from config presets and load saved checkpoints from local folders.

A DONUT is a ``VisionEncoderDecoderModel``: a DonutSwin image encoder and an mBART decoder
(``MBartForCausalLM`` with cross-attention). A checkpoint folder holds the model (``config.json`` +
safetensors) and its processor (``processor_config.json``, or ``preprocessor_config.json`` in older
folders, + tokenizer files), as ``save_pretrained``
writes them; the published ``naver-clova-ix/donut-base`` folder has exactly this layout.

Presets (random weights):

==========  =======================  ===========  ==========================================
preset      Swin depths / embed      window       decoder
==========  =======================  ===========  ==========================================
tiny        2,2,2,2 / 32             5            2 layers, d_model 256 (a few M parameters)
donut-base  2,2,14,2 / 128           10           4 layers, d_model 1024, vocab 57525
==========  =======================  ===========  ==========================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    DonutImageProcessorPil,
    DonutProcessor,
    DonutSwinConfig,
    MBartConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)
from transformers.utils import logging as hf_logging

from donut_hole.model.tokens import DEFAULT_TASK_TOKEN


class ModelLoadError(RuntimeError):
    """A model folder is missing, incomplete or not a DONUT checkpoint."""


@dataclass(frozen=True)
class Preset:
    """Architecture of a DONUT; ``image_size`` is (height, width) as in DONUT's configs."""

    image_size: tuple[int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    decoder_layers: int
    d_model: int
    decoder_heads: int
    decoder_ffn_dim: int
    max_position_embeddings: int
    vocab_size: int = 0  # 0: taken from the tokenizer


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        image_size=(320, 240),
        embed_dim=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=5,
        decoder_layers=2,
        d_model=256,
        decoder_heads=4,
        decoder_ffn_dim=1024,
        max_position_embeddings=512,
    ),
    "donut-base": Preset(
        image_size=(2560, 1920),
        embed_dim=128,
        depths=(2, 2, 14, 2),
        num_heads=(4, 8, 16, 32),
        window_size=10,
        decoder_layers=4,
        d_model=1024,
        decoder_heads=16,
        decoder_ffn_dim=4096,
        max_position_embeddings=1536,
        vocab_size=57525,
    ),
}


def preset_with(preset: str | Preset, overrides: dict[str, Any]) -> Preset:
    """``preset`` with some fields changed; an unknown field is a ``ValueError`` that names the known ones.

    >>> preset_with("tiny", {"depths": [2, 2, 6, 2]}).depths
    (2, 2, 6, 2)
    """
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    known = {f.name for f in fields(Preset)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown preset field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    tuples = {"image_size", "depths", "num_heads"}
    changed: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in overrides.items()}
    return replace(spec, **changed)


def encoder_stride(encoder: Any) -> int:
    """Pixels per cell of a DonutSwin config's last stage: the patch size, halved in resolution by each
    patch merging (4 × 2³ = 32 for the four stages of donut-base)."""
    return int(encoder.patch_size) * 2 ** (len(encoder.depths) - 1)


def check_input_size(encoder: Any, image_size: tuple[int, int] | list[int]) -> None:
    """A ValueError unless Swin's last stage (of a DonutSwin config) still holds one attention window at
    ``image_size`` (height, width)."""
    _check_last_stage(list(image_size), stride=encoder_stride(encoder), window=int(encoder.window_size))


def _check_last_stage(image_size: list[int], *, stride: int, window: int) -> None:
    last = min(image_size) // stride
    if last < window:
        raise ValueError(
            f"image size {image_size} is too small for window {window}: the last Swin stage would be {last}"
            f" patches wide; use sides of at least {stride * window} pixels"
        )


def resize_input(model: Any, processor: Any, image_size: tuple[int, int] | list[int]) -> bool:
    """Make a loaded DONUT take images of ``image_size`` (height, width), as DONUT is fine-tuned at another
    resolution than its pre-training: Swin's weights do not depend on the input size (relative positions
    within windows), only the config and the processor change. True when the size changed."""
    height, width = (int(side) for side in image_size)
    size = processor.image_processor.size
    if (int(size["height"]), int(size["width"])) == (height, width):
        return False
    check_input_size(model.config.encoder, (height, width))
    model.config.encoder.image_size = [height, width]
    processor.image_processor.size = {"height": height, "width": width}
    return True


def check_image_size(preset: Preset) -> None:
    """Swin's last stage must still hold one attention window: min(H, W) / (4 * 2**(stages-1)) >= window."""
    _check_last_stage(
        list(preset.image_size), stride=4 * 2 ** (len(preset.depths) - 1), window=preset.window_size
    )


def model_config(
    preset: Preset,
    *,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    decoder_start_token_id: int,
) -> VisionEncoderDecoderConfig:
    """The ``VisionEncoderDecoderConfig`` of a preset, with the tokenizer's special ids."""
    check_image_size(preset)
    encoder = DonutSwinConfig(
        image_size=list(preset.image_size),
        patch_size=4,
        embed_dim=preset.embed_dim,
        depths=list(preset.depths),
        num_heads=list(preset.num_heads),
        window_size=preset.window_size,
        drop_path_rate=0.0,
    )
    # accepted by MBartConfig at run time, not declared in its typed signature
    extra: dict[str, Any] = {"add_final_layer_norm": True, "add_cross_attention": True}
    decoder = MBartConfig(
        vocab_size=vocab_size,
        d_model=preset.d_model,
        decoder_layers=preset.decoder_layers,
        decoder_attention_heads=preset.decoder_heads,
        decoder_ffn_dim=preset.decoder_ffn_dim,
        encoder_layers=0,
        max_position_embeddings=preset.max_position_embeddings,
        scale_embedding=True,
        is_decoder=True,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=decoder_start_token_id,
        forced_eos_token_id=eos_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config = cast(VisionEncoderDecoderConfig, config)
    config.pad_token_id = pad_token_id
    config.eos_token_id = eos_token_id
    config.decoder_start_token_id = decoder_start_token_id
    return config


def make_processor(tokenizer: PreTrainedTokenizerBase, image_size: tuple[int, int]) -> DonutProcessor:
    """A DONUT processor: DONUT's resize-to-fit + pad + normalise, and the given tokenizer."""
    height, width = image_size
    image_processor = DonutImageProcessorPil(
        size={"height": height, "width": width},
        do_align_long_axis=False,
        do_thumbnail=True,
        do_pad=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return DonutProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(
    preset: str | Preset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task_token: str = DEFAULT_TASK_TOKEN,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """A randomly initialised DONUT of ``preset`` for ``tokenizer`` (whose vocabulary sets the head size).

    >>> model, processor = build_model("tiny", tokenizer)        # doctest: +SKIP
    >>> model.save_pretrained(out); processor.save_pretrained(out)  # doctest: +SKIP
    """
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if image_size is not None:
        spec = preset_with(spec, {"image_size": image_size})
    start_id = tokenizer.convert_tokens_to_ids(task_token)
    if not isinstance(start_id, int) or start_id == tokenizer.unk_token_id:
        raise ModelLoadError(f"the tokenizer has no task token {task_token!r}; add it as a special token")
    config = model_config(
        spec,
        vocab_size=max(spec.vocab_size, len(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start_id,
    )
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    model.eval()
    return model, make_processor(tokenizer, spec.image_size)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    task_prompt: str | None = None,
) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """Load a saved DONUT checkpoint and its processor from a local folder (never the hub).

    The task prompt is resolved (:func:`resolve_task_prompt`) and written into the model's config as its
    decoder start id, so that everything downstream (training, saving, reading) uses the same one. Every
    failure is a :class:`ModelLoadError` with a one-line reason.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a model folder: no such directory")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a model folder: config.json is missing")
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise ModelLoadError(
            f"{folder} has no processor: processor_config.json / preprocessor_config.json missing"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{folder} has no weights: none of {', '.join(WEIGHT_FILES)}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} (copy the model's own "
            "tokenizer files into the folder)"
        )
    hf_logging.disable_progress_bar()  # a local folder loads in a moment; its bar only clutters error output
    try:
        model = VisionEncoderDecoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        processor = DonutProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers, safetensors and torch raise many kinds; all mean "cannot load"
        raise ModelLoadError(f"cannot load a DONUT checkpoint from {folder}: {one_line(exc)}") from exc
    if not isinstance(processor, DonutProcessor) or processor.tokenizer is None:
        raise ModelLoadError(f"{folder} has no usable DONUT processor (image processor + tokenizer)")
    check_vocabulary(folder, model, processor)
    resolve_task_prompt(model, processor, task_prompt)
    model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to() as a decorated method
    model.eval()
    return model, processor


TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")


def check_vocabulary(folder: Path, model: VisionEncoderDecoderModel, processor: DonutProcessor) -> None:
    """The tokenizer fits the model: no more tokens than the decoder's embedding has rows, else a
    :class:`ModelLoadError` that says both sizes (the tokenizer files are another model's). Fewer tokens
    than rows is allowed: a model may keep rows no token uses (the ``donut-base`` preset keeps the
    published 57,525 whatever its tokenizer)."""
    tokens = len(processor.tokenizer)
    rows = int(model.decoder.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if tokens > rows:
        raise ModelLoadError(
            f"{folder}: its tokenizer has {tokens:,} tokens but the model's decoder embeds only {rows:,}: "
            "the tokenizer files are not this model's"
        )


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters (its first line, type name when empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


TASK_OPTION = "--task-prompt TOKEN (worker: DONUT_HOLE_TASK_PROMPT; recipes: task_prompt)"


def task_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's task tokens: added ``<s_X>`` tokens with no closing ``</s_X>`` (field tags pair up).

    For the published ``donut-base-finetuned-cord-v2`` tokenizer: ``['<s_cord-v2>', '<s_iitcdip>',
    '<s_synthdog>']`` (``<s_menu>`` is a field: ``</s_menu>`` exists).
    """
    added = set(tokenizer.get_added_vocab())
    added.update(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return sorted(t for t in added if t.startswith("<s_") and t.endswith(">") and f"</{t[1:]}" not in added)


def start_id_of(config: PretrainedConfig) -> int | None:
    """The decoder start id a config carries (its own, else its decoder's); None when neither has one."""
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        decoder = getattr(config, "decoder", None)
        start = getattr(decoder, "decoder_start_token_id", None) if decoder is not None else None
    return None if start is None else int(start)


def resolve_task_prompt(
    model: VisionEncoderDecoderModel, processor: DonutProcessor, task_prompt: str | None = None
) -> str:
    """Choose the task prompt and make it the model's decoder start id; returns the token.

    Order: ``task_prompt`` when given; else the config's start id; else the tokenizer's one task token
    (:func:`task_tokens`) when there is exactly one; else a :class:`ModelLoadError` naming the option.
    """
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    candidates = task_tokens(tokenizer)
    if task_prompt:
        if task_prompt not in vocab:
            known = ", ".join(candidates) or "none"
            raise ModelLoadError(
                f"task prompt {task_prompt!r} is not a token of this model's tokenizer "
                f"(its task tokens: {known})"
            )
        token = task_prompt
    else:
        start = start_id_of(cast(PretrainedConfig, model.config))
        if start is not None and 0 <= start < len(tokenizer):
            token = str(tokenizer.convert_ids_to_tokens(start))
        elif len(candidates) == 1:
            token = candidates[0]
        else:
            found = f"it has {len(candidates)}: {', '.join(candidates)}" if candidates else "it has none"
            raise ModelLoadError(
                "cannot tell this model's task prompt: its config has no decoder start id and its "
                f"tokenizer no single <s_...> task token ({found}); name it with {TASK_OPTION}"
            )
    set_start_token_(model, int(vocab[token]))
    return token


def set_start_token_(model: VisionEncoderDecoderModel, token_id: int) -> None:
    """Write ``token_id`` as decoder start id into the model's, its decoder's and its generation config."""
    config = cast(VisionEncoderDecoderConfig, model.config)
    config.decoder_start_token_id = token_id
    cast(PretrainedConfig, config.decoder).decoder_start_token_id = token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.decoder_start_token_id = token_id


def save_model(model: VisionEncoderDecoderModel, processor: DonutProcessor, path: str | Path) -> Path:
    """Save model (safetensors) and processor into one folder that :func:`load_model` reads."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    write_legacy_preprocessor(processor, folder)
    make_portable(folder)
    # transformers writes the weights through a private temporary file (mode 0600): give them the mode
    # the umask gives the folder's other files, so that a worker running as another user can read them
    mode = (folder / "config.json").stat().st_mode & 0o777
    for weights in folder.glob("*.safetensors"):
        weights.chmod(mode)
    return folder


COMPRESSION_RECORD = "compression.json"
"""Written by ``donut-hole compress`` beside a student's weights: its teacher and its density."""


def write_compression_record(folder: Path, *, teacher: str, density: dict[str, Any], recipe: str) -> Path:
    """``compression.json`` in a student's folder: the teacher's folder name, the recipe's name and the
    densities measured against the teacher (``prune.density_report``, per-layer figures left out)."""
    record = {
        "teacher": teacher,
        "recipe": recipe,
        "density": {key: value for key, value in density.items() if key != "layers"},
    }
    path = Path(folder) / COMPRESSION_RECORD
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def density_of(folder: str | Path) -> float | None:
    """A model's density over the prunable weights, against its teacher, from its ``compression.json``
    (``0.46`` for a student that keeps 46 % of them); ``None`` for a model not made by ``compress``."""
    try:
        record = json.loads((Path(folder) / COMPRESSION_RECORD).read_text(encoding="utf-8"))
        value = record["density"]["prunable_density_vs_teacher"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


# The decoder config's fields that mBART's encoder would use: a decoder-only model never reads them, but
# tools that size a model from its config do (optimum's ONNX export sizes the cross-attention cache from
# encoder_attention_heads), so they repeat the decoder's own values.
_MIRRORED_DECODER_FIELDS = {
    "encoder_attention_heads": "decoder_attention_heads",
    "encoder_layers": "decoder_layers",
    "encoder_ffn_dim": "decoder_ffn_dim",
}


def make_portable(folder: str | Path) -> None:
    """Make a saved folder readable by stock transformers 4.x as well as 5.x, and by optimum's exporter.

    - ``tokenizer_config.json``: ``tokenizer_class`` ``PreTrainedTokenizerFast`` (both read it from
      ``tokenizer.json``; 4.x does not know 5.x's ``TokenizersBackend``), and the added special tokens also
      under 4.x's name ``additional_special_tokens`` (a list under ``extra_special_tokens`` means named
      tokens to 4.x, which then fails);
    - ``config.json``: the decoder's unused ``encoder_*`` sizes equal to its own (see above).

    Only those fields change; the weights and every other field stay as they are. Idempotent.
    """
    folder = Path(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") in (None, "TokenizersBackend"):
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        extra = config.pop("extra_special_tokens", None)
        if isinstance(extra, list):
            config["additional_special_tokens"] = extra
        elif extra is not None:
            config["extra_special_tokens"] = extra
        tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    model_config = folder / "config.json"
    if model_config.is_file():
        config = json.loads(model_config.read_text(encoding="utf-8"))
        decoder = config.get("decoder")
        if isinstance(decoder, dict) and decoder.get("model_type") == "mbart":
            for unused, own in _MIRRORED_DECODER_FIELDS.items():
                if own in decoder:
                    decoder[unused] = decoder[own]
            model_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_legacy_preprocessor(processor: DonutProcessor, folder: Path) -> Path:
    """``preprocessor_config.json`` beside ``processor_config.json``: transformers 4.x reads its image
    processor from that file only (5.x reads either). The class is named as 4.x knows it."""
    config = processor.image_processor.to_dict()
    config["image_processor_type"] = "DonutImageProcessor"
    config["processor_class"] = "DonutProcessor"
    config.pop("_processor_class", None)
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def task_token_of(model: VisionEncoderDecoderModel, processor: DonutProcessor) -> str:
    """The decoder's start token (e.g. ``<s_logistics>`` or ``<s_cord-v2>``)."""
    start_id = start_id_of(cast(PretrainedConfig, model.config))
    if start_id is None:
        raise ModelLoadError(f"the model has no decoder start id; name the task prompt with {TASK_OPTION}")
    return str(processor.tokenizer.convert_ids_to_tokens(start_id))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_model(
    preset: str | Preset,
    *,
    documents: list[dict[str, Any]],
    corpus_vocab_size: int = 0,
    task_token: str = DEFAULT_TASK_TOKEN,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    extra_tokens: list[str] | None = None,
) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """A fresh DONUT whose tokenizer knows the field tags of ``documents`` (ground-truth parses) and the
    ``extra_tokens`` (special tokens such as another task's start token).

    With ``corpus_vocab_size > 0`` the tokenizer also learns BPE merges on the printed values, which
    shortens sequences; otherwise it is character level.
    """
    from donut_hole.model.tokens import build_tokenizer, field_tokens, leaf_values

    tokenizer = build_tokenizer(
        field_special_tokens=[*field_tokens(documents), *(extra_tokens or [])],
        corpus=leaf_values(documents),
        vocab_size=corpus_vocab_size,
        task_token=task_token,
    )
    return build_model(preset, tokenizer, task_token=task_token, image_size=image_size, seed=seed)
