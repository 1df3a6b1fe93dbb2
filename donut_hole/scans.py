"""Scans as the model gets them: images decoded upright, PDF pages and image frames opened one page at a
time and sized for the model. Pillow and PDFium only, no torch: the API counts pages with it too.

A *source* is the file a user sent; a *page* is what the model reads. A JPEG or PNG is one page; a PDF has
one page per PDF page (rendered with PDFium, ``pypdfium2``: wheels, no system binaries); a multi-frame
TIFF, GIF, WebP or PNG has one page per frame (MPO photos keep only their first frame: the others are
previews or depth maps of the same picture)::

    info = inspect_source(pdf_bytes)            # SourceInfo(kind="pdf", page_count=3, sha256="9f2c...")
    image = load_page(pdf_bytes, page=2, target_size=(1280, 960), max_pixels=64_000_000)

PDF pages are rendered at the scale that just fits the model's input (:func:`fit_scale`): no detail the
model could see is lost, and no pixel is rendered that it would throw away. Every failure is a
:class:`DocumentError` with a reason for the person who sent the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from pypdfium2 import PdfDocument

ImageInput = bytes | str | Path | Image.Image

PDF_MAGIC = b"%PDF-"
POINTS_PER_INCH = 72.0
_SINGLE_FRAME_FORMATS = ("JPEG", "MPO")  # MPO: the extra frames are views of the same photo

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class DocumentError(ValueError):
    """A scan that cannot be read; ``reason`` is meant for the person who sent it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_image(
    source: ImageInput,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    target_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a scan into an upright RGB image, or raise :class:`DocumentError`.

    EXIF orientation is applied (phone photos are often stored sideways), transparency is flattened on
    white, and images larger than ``max_pixels`` are refused before decoding (decompression bombs).
    With ``target_size`` (height, width) a JPEG is decoded at a reduced scale that still covers it,
    which makes 12-megapixel photos cheap.
    """
    stored: tuple[int, int] | None = None  # the file's own pixels, before a reduced-scale decode
    if isinstance(source, Image.Image):
        image = source
    else:
        data = _read_bytes(source, max_bytes=max_bytes)
        if not data:
            raise DocumentError("empty file: no image data")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = open_header(data)
                width, height = image.size
                if width * height > max_pixels:
                    raise DocumentError(
                        f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels:,}"
                    )
                stored = (width, height)
                if target_size is not None and image.format in ("JPEG", "MPO"):
                    side = max(target_size)
                    image.draft("RGB", (side, side))
                image.load()
        except DocumentError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DocumentError(f"not a readable image: {short_reason(exc)}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise DocumentError(f"corrupt image: {short_reason(exc)}") from exc
    scale = stored[0] / image.size[0] if stored and image.size[0] else 1.0
    # A broken EXIF block is no reason to refuse a readable image.
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    image.info[PAGE_SIZE] = (round(image.size[0] * scale), round(image.size[1] * scale))
    return image


PAGE_SIZE = "donut_hole.page_size"
"""``image.info`` key of a loaded scan: the upright page's size in the file's own pixels (a JPEG decoded at
a reduced scale is smaller), for answers in the page's pixels."""


def page_size(image: Image.Image) -> tuple[int, int]:
    """The upright page's size in the file's pixels (:data:`PAGE_SIZE`), else the image's own."""
    size = image.info.get(PAGE_SIZE)
    return (int(size[0]), int(size[1])) if size else image.size


_PILLOW_CAP_LOCK = threading.Lock()
_OBJECT_REPR = re.compile(r"<[^<>]*? object at 0x[0-9a-fA-F]+>")


def open_header(data: bytes) -> Image.Image:
    """``Image.open`` (reads the header only) with Pillow's own pixel cap off: ``max_pixels`` governs.

    Pillow refuses images over its ``MAX_IMAGE_PIXELS`` (89.5 M, an error at twice that) already in
    ``open``, whatever the caller's limit; the project's limit, checked right after, must be the one rule
    both ways. The cap is a module global, so it is lifted only around ``open`` and under a lock.
    """
    with _PILLOW_CAP_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_source(source: bytes | str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a file (or the bytes given), refused with :class:`DocumentError` when empty, larger
    than ``max_bytes`` or unreadable."""
    data = _read_bytes(source, max_bytes=max_bytes)
    if not data:
        raise DocumentError("empty file: no image data")
    return data


def _read_bytes(source: bytes | str | Path, *, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if size > max_bytes:
            raise DocumentError(f"file too large: {size:,} bytes exceeds the limit of {max_bytes:,}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise DocumentError(f"file too large: {len(data):,} bytes exceeds the limit of {max_bytes:,}")
    return data


def short_reason(exc: BaseException) -> str:
    """The error's message for a reader: no object reprs (``<_io.BytesIO object at 0x...>``), clipped."""
    text = _OBJECT_REPR.sub("the data", str(exc)).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


@dataclass(frozen=True)
class SourceInfo:
    """What a source file is: ``kind`` (``pdf`` or ``image``), how many pages, and its sha256 (hex)."""

    kind: Literal["pdf", "image"]
    page_count: int
    sha256: str


def is_pdf(data: bytes) -> bool:
    """Whether ``data`` is a PDF: ``%PDF-`` within its first 1,024 bytes (where the standard allows it).

    >>> is_pdf(b"%PDF-1.7\\n..."), is_pdf(b"\\xff\\xd8\\xff\\xe0")
    (True, False)
    """
    return PDF_MAGIC in data[:1024]


def inspect_source(data: bytes) -> SourceInfo:
    """The kind, page count and sha256 of a source; reads headers only (nothing is rendered or decoded).

    A PDF that cannot be opened (encrypted with a password, damaged, not a PDF after all) raises
    :class:`DocumentError`. An image whose header cannot be read counts as one page: decoding it later
    gives the same readable reason as a single image always did.
    """
    kind: Literal["pdf", "image"] = "pdf" if is_pdf(data) else "image"
    return SourceInfo(kind=kind, page_count=page_count(data), sha256=hashlib.sha256(data).hexdigest())


def page_count(data: bytes) -> int:
    """Pages of a source from its headers: a PDF's pages, an image's frames (1 for a JPEG, and for an image
    whose header cannot be read); :class:`DocumentError` for a PDF that cannot be opened or has no pages."""
    if not is_pdf(data):
        return _frame_count(data)
    pdf = _open_pdf(data)
    try:
        count = len(pdf)
    finally:
        pdf.close()
    if count < 1:
        raise DocumentError("empty PDF: it has no pages")
    return count


def fit_scale(
    *, page_size: tuple[float, float], target_size: tuple[int, int], align_long_axis: bool = False
) -> float:
    """Pixels per point at which a page (``width, height`` in points) just fits the model's input.

    ``target_size`` is the model's ``(height, width)`` in pixels; with ``align_long_axis`` (DONUT's
    processor turns a page whose long side lies across the input) the long sides are matched.
    A US-letter page (612 x 792 pt) for a 1280 x 960 input: ``min(960 / 612, 1280 / 792) = 1.569``
    pixels per point, i.e. 113 dpi.

    >>> round(fit_scale(page_size=(612.0, 792.0), target_size=(1280, 960)), 3)
    1.569
    """
    width, height = page_size
    target_h, target_w = target_size
    if width <= 0 or height <= 0:
        raise DocumentError(f"the page has no area ({width:g} x {height:g} points)")
    if align_long_axis and (width > height) != (target_w > target_h):
        target_h, target_w = target_w, target_h
    return min(target_w / width, target_h / height)


def load_page(
    data: bytes,
    *,
    page: int,
    target_size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    align_long_axis: bool = False,
) -> Image.Image:
    """Page ``page`` (1-based) of a source as an upright RGB image, or :class:`DocumentError`.

    PDF pages are rendered at :func:`fit_scale`; image frames are decoded as they are stored. Either way a
    page larger than ``max_pixels`` is refused before it is rendered or decoded. Page 1 of a single-frame
    image is :func:`~donut_hole.model.predict.load_image` itself (EXIF orientation, JPEG draft decoding).
    """
    if page < 1:
        raise DocumentError(f"there is no page {page}: pages are numbered from 1")
    if is_pdf(data):
        return _render_pdf_page(
            data, page=page, target_size=target_size, max_pixels=max_pixels, align_long_axis=align_long_axis
        )
    frames = _frame_count(data)
    if frames == 1 and page == 1:
        return load_image(data, max_pixels=max_pixels, target_size=target_size)
    if page > frames:
        raise DocumentError(f"there is no page {page}: the image has {frames} frame(s)")
    return _image_frame(data, page=page, max_pixels=max_pixels)


def render_dpi(scale: float) -> float:
    """The dots per inch of a rendering at ``scale`` pixels per point: ``render_dpi(1.569) = 113.0``."""
    return scale * POINTS_PER_INCH


# ------------------------------------------------------------------------------------------------- PDF


def _open_pdf(data: bytes) -> PdfDocument:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        text = str(exc)
        if "password" in text.lower():
            raise DocumentError("encrypted PDF: it cannot be opened without its password") from exc
        reason = (
            text.split("(PDFium:", 1)[-1].rstrip(").").strip() if "PDFium:" in text else short_reason(exc)
        )
        raise DocumentError(f"not a readable PDF: {reason}") from exc


def _render_pdf_page(
    data: bytes, *, page: int, target_size: tuple[int, int], max_pixels: int, align_long_axis: bool
) -> Image.Image:
    import pypdfium2 as pdfium

    pdf = _open_pdf(data)
    try:
        count = len(pdf)
        if page > count:
            raise DocumentError(f"there is no page {page}: the PDF has {count} page(s)")
        try:
            pdf_page = pdf[page - 1]
        except pdfium.PdfiumError as exc:  # a page-tree entry that is not a page (missing, a loop)
            raise DocumentError(f"page {page} of the PDF cannot be loaded: {short_reason(exc)}") from exc
        try:
            width, height = pdf_page.get_size()
            scale = fit_scale(
                page_size=(width, height), target_size=target_size, align_long_axis=align_long_axis
            )
            pixels_w, pixels_h = max(1, round(width * scale)), max(1, round(height * scale))
            if pixels_w * pixels_h > max_pixels:
                raise DocumentError(
                    f"page {page} too large: rendered at {pixels_w}x{pixels_h} pixels it exceeds the limit "
                    f"of {max_pixels:,}"
                )
            try:
                bitmap = pdf_page.render(scale=scale)
                image = bitmap.to_pil()
            except pdfium.PdfiumError as exc:
                raise DocumentError(
                    f"page {page} of the PDF cannot be rendered: {short_reason(exc)}"
                ) from exc
        finally:
            pdf_page.close()
    finally:
        pdf.close()
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------- images


def _frame_count(data: bytes) -> int:
    """Frames of an image (1 for JPEG/MPO and for anything whose header cannot be read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = open_header(data)
            if image.format in _SINGLE_FRAME_FORMATS:
                return 1
            return max(1, int(getattr(image, "n_frames", 1)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def _image_frame(data: bytes, *, page: int, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = open_header(data)
            image.seek(page - 1)
            width, height = image.size
            if width * height > max_pixels:
                raise DocumentError(
                    f"page {page} too large: {width}x{height} pixels exceeds the limit of {max_pixels:,}"
                )
            image.load()
            frame = image.copy()
    except DocumentError:
        raise
    except (
        EOFError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise DocumentError(f"page {page} is not a readable image: {short_reason(exc)}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DocumentError(f"page {page} is a corrupt image: {short_reason(exc)}") from exc
    return load_image(frame)
