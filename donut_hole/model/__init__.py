"""The DONUT runtime shared by the compression and serving halves."""

from donut_hole.model.build import ModelLoadError, build_model, load_model, save_model
from donut_hole.model.predict import DonutReader, Prediction
from donut_hole.model.tokens import build_tokenizer, json2token, token2json
from donut_hole.scans import DocumentError, load_image

__all__ = [
    "DocumentError",
    "DonutReader",
    "ModelLoadError",
    "Prediction",
    "build_model",
    "build_tokenizer",
    "json2token",
    "load_image",
    "load_model",
    "save_model",
    "token2json",
]
