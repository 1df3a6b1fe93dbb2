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


def with_unloadable_page(*, loop: bool = False) -> bytes:
    """A two-page PDF whose first page is a blank page and whose second page-tree entry PDFium cannot load:
    a missing object, or (``loop``) the page tree itself, so that the tree loops."""
    second = b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>" if loop else b"null"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R " + (b"2 0 R" if loop else b"4 0 R") + b"] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 260] >>",
        second,
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    table = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, table)
    return out
