"""The project's pixel limit (DONUT_HOLE_MAX_IMAGE_PIXELS) is the one that governs, above and below
Pillow's own decompression-bomb cap (89.5 M pixels, an error at twice that), and it acts before decoding.

Big images are made cheaply: a 1-bit PNG whose rows are all zeros compresses to a few kilobytes.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

from donut_hole.scans import DocumentError, load_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` black pixels, a few kB for 100 M pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


PILLOW_CAP = Image.MAX_IMAGE_PIXELS or 89_478_485


def test_a_limit_above_pillows_cap_accepts_a_large_scan() -> None:
    """12000 x 9000 = 108 M pixels: over Pillow's 89.5 M, under a limit of 120 M: it is read."""
    assert PILLOW_CAP < 12_000 * 9_000
    image = load_image(blank_png(12_000, 9_000), max_pixels=120_000_000)
    assert image.size == (12_000, 9_000) and image.mode == "RGB"
    assert Image.MAX_IMAGE_PIXELS == PILLOW_CAP, "Pillow's own cap is left as it was for other callers"


def test_a_limit_below_pillows_cap_refuses_before_decoding() -> None:
    """8000 x 6000 = 48 M pixels, under Pillow's cap, over a limit of 40 M: refused by the project's rule."""
    with pytest.raises(
        DocumentError, match="image too large: 8000x6000 pixels exceeds the limit of 40,000,000"
    ):
        load_image(blank_png(8_000, 6_000), max_pixels=40_000_000)


def test_far_over_pillows_error_threshold_the_reason_is_the_projects() -> None:
    """20000 x 10000 = 200 M pixels: Pillow would raise its own bomb error; the reason is the limit's."""
    with pytest.raises(
        DocumentError, match="image too large: 20000x10000 pixels exceeds the limit of 64,000,000"
    ):
        load_image(blank_png(20_000, 10_000), max_pixels=64_000_000)


def test_a_reason_shows_no_object_repr() -> None:
    with pytest.raises(DocumentError) as caught:
        load_image(b"%PDF-1.4 this is not an image")
    assert "object at 0x" not in caught.value.reason and "BytesIO" not in caught.value.reason
