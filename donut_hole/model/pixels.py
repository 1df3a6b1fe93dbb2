"""DONUT's image preprocessing, the same pixels as transformers' PIL image processor, in fewer copies.

``DonutImageProcessorPil`` turns each page into a float64 array to rescale it, then into float32 to
normalise it, then stacks a batch: on a 672x672 page that costs about as much as its two resizes. Here the
resizes are the same PIL calls, the padding is a paste on a black canvas, and rescale-then-normalise is a
256-entry table per channel computed with the processor's own arithmetic, so every value is the same to the
bit (the tests compare them)::

    pixels = pixels_of(processor.image_processor)   # DonutPixels, or the processor where it cannot
    pixels([page, page2])                            # (2, 3, H, W) float32, as the processor gives
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


class DonutPixels:
    """Align the long axis, resize the short side, thumbnail, centre-pad, rescale and normalise."""

    def __init__(self, image_processor: Any) -> None:
        ip = image_processor
        self.height, self.width = int(ip.size["height"]), int(ip.size["width"])
        self.resample = int(ip.resample)
        self.align_long_axis = bool(ip.do_align_long_axis)
        self.resize = bool(ip.do_resize)
        self.thumbnail = bool(ip.do_thumbnail)
        self.table = _value_table(ip)  # (3, 256): uint8 value -> pixel value, per channel

    @classmethod
    def of(cls, image_processor: Any) -> DonutPixels | None:
        """The fast path for this processor, or None where its output could differ (another backend, a
        centre crop, no padding: then call the processor itself)."""
        ip = image_processor
        supported = (
            type(ip).__name__ == "DonutImageProcessorPil"
            and getattr(ip, "backend", "pil") == "pil"
            and bool(getattr(ip, "do_pad", False))
            and not getattr(ip, "do_center_crop", False)
            and "height" in (ip.size or {})
            and "width" in (ip.size or {})
        )
        return cls(ip) if supported else None

    def fit(self, image: Image.Image) -> Image.Image:
        """One RGB page sized and padded to the model's (H, W), still in uint8 (the padding is black)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        if self.align_long_axis and (
            (self.width < self.height and width > height) or (self.width > self.height and width < height)
        ):
            image = image.transpose(Image.Transpose.ROTATE_270)  # the processor's rot90(k=3): clockwise
            width, height = image.size
        if self.resize:  # the short side to the model's short side, the long one scaled and truncated
            short = min(self.height, self.width)
            if width <= height:
                image = image.resize((short, int(short * height / width)), resample=self.resample)
            else:
                image = image.resize((int(short * width / height), short), resample=self.resample)
            width, height = image.size
        if self.thumbnail and (height > self.height or width > self.width):
            new_h, new_w = min(height, self.height), min(width, self.width)
            if height > width:
                new_w = int(width * new_h / height)
            elif width > height:
                new_h = int(height * new_w / width)
            image = image.resize((new_w, new_h), resample=self.resample)
            width, height = image.size
        if (width, height) == (self.width, self.height):
            return image
        if width > self.width or height > self.height:  # the processor would fail on it too
            raise ValueError(f"a {width}x{height} page is larger than {self.width}x{self.height}, unresized")
        canvas = Image.new("RGB", (self.width, self.height))
        canvas.paste(image, ((self.width - width) // 2, (self.height - height) // 2))
        return canvas

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``pixel_values`` (B, 3, H, W) float32 of PIL pages."""
        out = np.empty((len(images), 3, self.height, self.width), dtype=np.float32)
        for row, image in enumerate(images):
            values = np.asarray(self.fit(image))  # (H, W, 3) uint8
            for channel in range(3):
                np.take(self.table[channel], values[..., channel], out=out[row, channel])
        return torch.from_numpy(out)


def pixels_of(image_processor: Any) -> Callable[[Sequence[Image.Image]], torch.Tensor]:
    """``pixel_values`` (B, 3, H, W) of PIL pages for this processor: :class:`DonutPixels` where it gives the
    same values, else the processor itself."""
    fast = DonutPixels.of(image_processor)
    if fast is not None:
        return fast
    return lambda images: image_processor(list(images), return_tensors="pt")["pixel_values"]


def _value_table(image_processor: Any) -> np.ndarray:
    """(3, 256) float32: each uint8 value after the processor's rescale and normalise, with its dtypes
    (rescale in float64 then float32, normalise in float32), so a lookup equals the processor's arithmetic."""
    ip = image_processor
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)  # (3, 256)
    x = values.astype(np.float32)
    if ip.do_rescale:
        x = (values.astype(np.float64) * ip.rescale_factor).astype(np.float32)
    if ip.do_normalize:
        mean = np.array(_per_channel(ip.image_mean), dtype=np.float32)[:, None]
        std = np.array(_per_channel(ip.image_std), dtype=np.float32)[:, None]
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def _per_channel(value: float | Sequence[float]) -> list[float]:
    return [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
