"""Folders laid out like the published ``naver-clova-ix/donut-base`` and ``donut-base-finetuned-cord-v2``.

The files and fields are those of the published folders, the sizes tiny and the weights random:

- ``config.json``: a ``VisionEncoderDecoderConfig`` with no top-level ``decoder_start_token_id`` and the
  decoder's set to null, as published;
- ``preprocessor_config.json`` in the old ``DonutFeatureExtractor`` format: ``size`` as a list
  ``[width, height]``, ``do_align_long_axis``, ``do_thumbnail``, ``resample: 2``;
- an ``XLMRobertaTokenizer`` (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
  ``added_tokens.json``) with ``<s> <pad> </s> <unk>`` at 0-3, ``<mask>`` last in the base vocabulary and the
  published added tokens: ``<sep/>``, ``<s_iitcdip>``, ``<s_synthdog>`` (donut-base), plus the CORD field tags
  and ``<s_cord-v2>`` (cord-v2);
- ``pytorch_model.bin`` only (as first published) or ``model.safetensors``.

Nothing is downloaded; no ``sentencepiece.bpe.model`` is written (the fast tokenizer reads
``tokenizer.json``; training a SentencePiece model is not needed for these tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

BASE_ADDED = ["<sep/>", "<s_iitcdip>", "<s_synthdog>"]
CORD_FIELDS = [
    "menu",
    "nm",
    "cnt",
    "price",
    "unitprice",
    "sub_total",
    "subtotal_price",
    "total",
    "total_price",
]
CORD_ADDED = [
    *BASE_ADDED,
    *[tag for f in CORD_FIELDS for tag in (f"<s_{f}>", f"</s_{f}>")],
    "<s_cord-v2>",
]
# (height, width) of the encoder; the preprocessor stores [width, height] as the published one does
IMAGE_HW = (128, 96)
PIECES = [
    *"▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:-/#()",
    "▁the",
    "▁total",
]


def _tokenizer(added: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -float(i + 1)) for i, p in enumerate(PIECES)]
    vocab += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    fast.add_special_tokens({"additional_special_tokens": added})
    return fast


def _config(vocab_size: int) -> dict[str, Any]:
    """config.json with the published fields (values tiny where they size the model)."""
    height, width = IMAGE_HW
    return {
        "_name_or_path": "naver-clova-ix/donut-base-finetuned-cord-v2",
        "architectures": ["VisionEncoderDecoderModel"],
        "decoder": {
            "_name_or_path": "",
            "activation_dropout": 0.0,
            "activation_function": "gelu",
            "add_cross_attention": True,
            "add_final_layer_norm": True,
            "architectures": None,
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "classifier_dropout": 0.0,
            "d_model": 64,
            "decoder_attention_heads": 4,
            "decoder_ffn_dim": 128,
            "decoder_layerdrop": 0.0,
            "decoder_layers": 2,
            "decoder_start_token_id": None,
            "dropout": 0.1,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "encoder_layerdrop": 0.0,
            "encoder_layers": 12,
            "eos_token_id": 2,
            "forced_eos_token_id": 2,
            "init_std": 0.02,
            "is_decoder": True,
            "is_encoder_decoder": False,
            "max_position_embeddings": 128,
            "model_type": "mbart",
            "pad_token_id": 1,
            "scale_embedding": True,
            "tie_word_embeddings": True,
            "use_cache": True,
            "vocab_size": vocab_size,
        },
        "encoder": {
            "attention_probs_dropout_prob": 0.0,
            "depths": [2, 2, 2, 2],
            "drop_path_rate": 0.1,
            "embed_dim": 16,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "image_size": [height, width],
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-05,
            "mlp_ratio": 4.0,
            "model_type": "donut-swin",
            "num_channels": 3,
            "num_heads": [1, 2, 4, 8],
            "num_layers": 4,
            "patch_size": 4,
            "path_norm": True,
            "qkv_bias": True,
            "use_absolute_embeddings": False,
            "window_size": 3,
        },
        "is_encoder_decoder": True,
        "model_type": "vision-encoder-decoder",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": None,
    }


def preprocessor_config() -> dict[str, Any]:
    """The published old-format preprocessor_config.json (size [width, height])."""
    height, width = IMAGE_HW
    return {
        "do_align_long_axis": False,
        "do_normalize": True,
        "do_pad": True,
        "do_resize": True,
        "do_thumbnail": True,
        "feature_extractor_type": "DonutFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "DonutProcessor",
        "resample": 2,
        "size": [width, height],
    }


def write_published(folder: Path, *, kind: str = "cord-v2", weights: str = "bin", seed: int = 0) -> Path:
    """A published-style DONUT folder: ``kind`` 'base' / 'cord-v2', ``weights`` 'bin' / 'safetensors'."""
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    folder.mkdir(parents=True, exist_ok=True)
    added = CORD_ADDED if kind == "cord-v2" else BASE_ADDED
    tokenizer = _tokenizer(added)
    config = _config(len(tokenizer))
    if kind == "base":
        config["_name_or_path"] = "naver-clova-ix/donut-base"
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_dict(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, safe_serialization=True)
        (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(), indent=2), encoding="utf-8"
    )
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    base = len(tokenizer) - len(added)
    (folder / "added_tokens.json").write_text(
        json.dumps({t: base + i for i, t in enumerate(added)}, indent=2), encoding="utf-8"
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "additional_special_tokens": added,
                "bos_token": "<s>",
                "cls_token": "<s>",
                "eos_token": "</s>",
                "mask_token": {
                    "content": "<mask>",
                    "lstrip": True,
                    "normalized": True,
                    "rstrip": False,
                    "single_word": False,
                },
                "pad_token": "<pad>",
                "sep_token": "</s>",
                "unk_token": "<unk>",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "cls_token": "<s>",
                "eos_token": "</s>",
                "mask_token": {
                    "__type": "AddedToken",
                    "content": "<mask>",
                    "lstrip": True,
                    "normalized": True,
                    "rstrip": False,
                    "single_word": False,
                },
                "model_max_length": 1000000000000000019884624838656,
                "name_or_path": config["_name_or_path"],
                "pad_token": "<pad>",
                "processor_class": "DonutProcessor",
                "sep_token": "</s>",
                "sp_model_kwargs": {},
                "special_tokens_map_file": None,
                "tokenizer_class": "XLMRobertaTokenizer",
                "unk_token": "<unk>",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return folder
