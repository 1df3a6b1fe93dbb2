"""DonutPixels gives the processor's pixel values to the bit, for every shape and setting it takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from published import preprocessor_config
from transformers import AutoImageProcessor
from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil

from donut_hole.model.pixels import DonutPixels, pixels_of

SIZES = [(640, 480), (480, 640), (672, 672), (673, 900), (300, 200), (2000, 700), (50, 700), (1, 2)]
SIZES += [(961, 1281)]


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _processor(**settings: object) -> DonutImageProcessorPil:
    defaults: dict[str, object] = {
        "size": {"height": 672, "width": 672},
        "do_align_long_axis": False,
        "do_thumbnail": True,
        "do_pad": True,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    return DonutImageProcessorPil(**{**defaults, **settings})


def _expected(processor: DonutImageProcessorPil, images: list[Image.Image]) -> torch.Tensor:
    return processor(images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the project's own models
        {"size": {"height": 1280, "width": 960}},  # a published DONUT's page shape
        {"size": {"height": 1280, "width": 960}, "do_align_long_axis": True},
        {"size": {"height": 96, "width": 160}, "do_align_long_axis": True},
        {"do_resize": False},  # thumbnail and pad only
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},  # ImageNet's
        {"do_rescale": False, "do_normalize": False},
        {"resample": 3},
    ],
)
def test_same_pixels_as_the_processor_to_the_bit(settings: dict[str, object]) -> None:
    processor = _processor(**settings)
    pixels = DonutPixels.of(processor)
    assert pixels is not None
    images = [_noise(width, height, seed) for seed, (width, height) in enumerate(SIZES)]
    for image in images:
        assert torch.equal(pixels([image]), _expected(processor, [image]).float()), image.size
    batch = images[:4]
    got = pixels(batch)
    assert got.shape == (4, 3, processor.size["height"], processor.size["width"])
    assert got.dtype == torch.float32
    assert torch.equal(got, _expected(processor, batch).float())


def test_a_published_preprocessor_config_loads_onto_the_fast_path(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor_config()))
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    pixels = DonutPixels.of(processor)
    assert pixels is not None
    images = [_noise(333, 517, 1), _noise(1000, 400, 2)]
    assert torch.equal(pixels(images), _expected(processor, images))


def test_grey_and_transparent_pages_become_rgb() -> None:
    processor = _processor()
    pixels = DonutPixels.of(processor)
    assert pixels is not None
    grey = _noise(300, 400, 3).convert("L")
    rgba = _noise(300, 400, 4).convert("RGBA")
    for image in (grey, rgba):
        got = pixels([image])
        assert got.shape == (1, 3, 672, 672)
        assert torch.equal(got, _expected(processor, [image.convert("RGB")]))


def test_settings_it_does_not_reproduce_go_to_the_processor() -> None:
    assert DonutPixels.of(_processor(do_pad=False)) is None
    cropping = _processor()
    cropping.do_center_crop = True
    assert DonutPixels.of(cropping) is None
    assert DonutPixels.of(object()) is None


def test_pixels_of_falls_back_to_the_processor_where_the_fast_path_does_not_apply() -> None:
    image = _noise(300, 200, 5)
    assert isinstance(pixels_of(_processor()), DonutPixels)
    unpadded = _processor(do_pad=False, size={"height": 200, "width": 300})
    assert torch.equal(pixels_of(unpadded)([image]), _expected(unpadded, [image]))
