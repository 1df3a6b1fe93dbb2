"""Scans are recognised by their first bytes: every accepted format (PDF too), and files that look close."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from donut_hole.api.images import SNIFF_BYTES, sniff_image_type


def _encoded(pil_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format=pil_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("pil_format", "media_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("TIFF", "image/tiff"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
        ("PDF", "application/pdf"),
    ],
)
def test_images_written_by_pillow_are_recognised(pil_format: str, media_type: str) -> None:
    assert sniff_image_type(_encoded(pil_format)[:SNIFF_BYTES]) == media_type


def test_big_endian_tiff_is_recognised() -> None:
    assert sniff_image_type(b"MM\x00*\x00\x00\x00\x08") == "image/tiff"


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"%PD",  # truncated PDF signature
        b"PK\x03\x04",  # zip
        b"BM is a text file that starts like a bitmap",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"GIF88a",
        b"\x89PNG",  # truncated signature
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
)
def test_other_files_are_not_images(head: bytes) -> None:
    assert sniff_image_type(head) is None
