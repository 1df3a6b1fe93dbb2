"""Multi-page test files made on the spot: PDFs and TIFFs from images, an encrypted PDF, a broken one."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

PAGE_COLOURS = ("red", "green", "blue")


def coloured_pages(n: int = 3, size: tuple[int, int] = (170, 220)) -> list[Image.Image]:
    """``n`` plain pages, red, green, blue, ... (a page's colour tells which page was read)."""
    return [Image.new("RGB", size, PAGE_COLOURS[i % len(PAGE_COLOURS)]) for i in range(n)]


def pdf_of(pages: Sequence[Image.Image | Path], *, resolution: float = 100.0) -> bytes:
    """A PDF with one page per image (Pillow's writer; ``resolution`` dpi sets the page size)."""
    images = [Image.open(p).convert("RGB") if isinstance(p, Path) else p.copy() for p in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:], resolution=resolution)
    return buffer.getvalue()


def tiff_of(pages: Sequence[Image.Image | Path]) -> bytes:
    """A multi-page TIFF (LZW) with one frame per image."""
    images = [Image.open(p).convert("RGB") if isinstance(p, Path) else p.copy() for p in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:], compression="tiff_lzw")
    return buffer.getvalue()


def encrypted(pdf: bytes, *, password: str = "secret") -> bytes:
    """``pdf`` encrypted so that it opens only with ``password`` (pypdf, a test dependency)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def broken(pdf: bytes) -> bytes:
    """A PDF cut after its header: the signature is there, the document is not."""
    return pdf[:40]
