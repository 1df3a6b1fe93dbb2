"""Recognise a scan's format (an image or a PDF) from its first bytes, whatever the client called the file.

>>> sniff_image_type(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00" * 8)
'image/png'
>>> sniff_image_type(b"%PDF-1.7")
'application/pdf'
>>> sniff_image_type(b"Hello") is None
True
"""

from __future__ import annotations

_BMP_DIB_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}  # BITMAPCOREHEADER ... BITMAPV5HEADER

SNIFF_BYTES = 32
"""Bytes of the file that :func:`sniff_image_type` looks at."""


def sniff_image_type(head: bytes) -> str | None:
    """The media type of a JPEG, PNG, TIFF, WebP, BMP, GIF or PDF file from its first bytes, else ``None``.

    Only the signature is checked (a truncated or corrupt image, an encrypted PDF still pass); the worker
    decodes the file and marks the document ``failed`` when it cannot.
    """
    if head.startswith(b"%PDF-"):  # a PDF may start later (within 1,024 bytes): the worker accepts that
        return "application/pdf"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF, either byte order
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    # "BM" alone starts too many text files: also require a known DIB header size at offset 14.
    dib_header_size = int.from_bytes(head[14:18], "little") if len(head) >= 18 else 0
    if head[:2] == b"BM" and dib_header_size in _BMP_DIB_HEADER_SIZES:
        return "image/bmp"
    return None


def count_pages(data: bytes) -> int | None:
    """Pages of a scan read from its headers (:func:`donut_hole.scans.page_count`: a PDF's pages, an
    image's frames); ``None`` for a PDF that cannot be opened (the worker fails it with the reason).

    >>> count_pages(b"\\xff\\xd8\\xff"), count_pages(b"%PDF-1.7 broken")
    (1, None)
    """
    from donut_hole.scans import DocumentError, page_count

    try:
        return page_count(data)
    except DocumentError:
        return None
