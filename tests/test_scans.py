"""Pages of PDFs and multi-frame images: counted from headers, rendered to fit the model, refused clearly."""

from __future__ import annotations

import io
import time

import pytest
from multipage import broken, coloured_pages, encrypted, pdf_of, tiff_of, with_unloadable_page
from PIL import Image

from donut_hole.scans import (
    DocumentError,
    fit_scale,
    inspect_source,
    is_pdf,
    load_image,
    load_page,
    render_dpi,
)

TARGET = (160, 120)  # (height, width) of a small model input


def _colour(image: Image.Image) -> tuple[int, ...]:
    return image.getpixel((image.width // 2, image.height // 2))  # type: ignore[return-value]


def test_fit_scale_fits_the_page_to_the_model_input() -> None:
    letter = (612.0, 792.0)  # points
    assert fit_scale(page_size=letter, target_size=(1280, 960)) == pytest.approx(960 / 612)
    assert render_dpi(fit_scale(page_size=letter, target_size=(1280, 960))) == pytest.approx(112.94, abs=0.01)
    landscape = (792.0, 612.0)
    assert fit_scale(page_size=landscape, target_size=(1280, 960)) == pytest.approx(960 / 792)
    # DONUT's long-axis alignment turns the page: long side to long side
    assert fit_scale(page_size=landscape, target_size=(1280, 960), align_long_axis=True) == pytest.approx(
        960 / 612
    )
    with pytest.raises(DocumentError, match="no area"):
        fit_scale(page_size=(0.0, 792.0), target_size=(1280, 960))


def test_a_pdf_has_one_page_per_pdf_page_rendered_to_fit() -> None:
    data = pdf_of(coloured_pages(3))
    info = inspect_source(data)
    assert (info.kind, info.page_count, len(info.sha256)) == ("pdf", 3, 64)
    for page, colour in enumerate([(255, 0, 0), (0, 128, 0), (0, 0, 255)], start=1):
        image = load_page(data, page=page, target_size=TARGET)
        assert image.mode == "RGB" and _colour(image)[:3] == pytest.approx(colour, abs=2)
        assert image.width <= TARGET[1] and image.height <= TARGET[0]
        assert TARGET[1] - 1 <= image.width or TARGET[0] - 1 <= image.height  # fits: one side touches
    with pytest.raises(DocumentError, match="there is no page 4: the PDF has 3 page"):
        load_page(data, page=4, target_size=TARGET)


def test_a_multi_page_tiff_and_an_animated_gif_have_one_page_per_frame() -> None:
    tiff = tiff_of(coloured_pages(3))
    assert inspect_source(tiff).page_count == 3 and inspect_source(tiff).kind == "image"
    assert _colour(load_page(tiff, page=3, target_size=TARGET)) == (0, 0, 255)
    frames = coloured_pages(2)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    gif = buffer.getvalue()
    assert inspect_source(gif).page_count == 2
    assert _colour(load_page(gif, page=2, target_size=TARGET))[1] > 100  # green
    with pytest.raises(DocumentError, match="the image has 2 frame"):
        load_page(gif, page=3, target_size=TARGET)


def test_a_single_image_is_one_page_read_exactly_as_before() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    assert not is_pdf(jpeg) and inspect_source(jpeg).page_count == 1
    page = load_page(jpeg, page=1, target_size=TARGET)
    assert page.tobytes() == load_image(jpeg, target_size=TARGET).tobytes()
    # what cannot be read says so as it always did
    assert inspect_source(b"plain text").page_count == 1
    with pytest.raises(DocumentError, match="not a readable image"):
        load_page(b"plain text", page=1, target_size=TARGET)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda pdf: encrypted(pdf), "encrypted PDF: it cannot be opened without its password"),
        (lambda pdf: broken(pdf), "not a readable PDF: "),
        (lambda pdf: b"%PDF-1.7\n" + b"\x00" * 64, "not a readable PDF: "),
    ],
)
def test_encrypted_and_broken_pdfs_are_refused_with_a_reason(make, reason: str) -> None:
    data = make(pdf_of(coloured_pages(2)))
    with pytest.raises(DocumentError) as refused:
        inspect_source(data)
    assert refused.value.reason.startswith(reason)
    with pytest.raises(DocumentError):
        load_page(data, page=1, target_size=TARGET)


def test_a_page_over_the_pixel_limit_is_refused_before_rendering() -> None:
    data = pdf_of(coloured_pages(1))
    with pytest.raises(DocumentError, match=r"page 1 too large: rendered at \d+x1600 pixels"):
        load_page(data, page=1, target_size=(1600, 1600), max_pixels=10_000)
    tiff = tiff_of(coloured_pages(2, size=(200, 200)))
    with pytest.raises(DocumentError, match="page 2 too large: 200x200 pixels"):
        load_page(tiff, page=2, target_size=TARGET, max_pixels=30_000)


def test_rendering_speed_of_a_ten_page_pdf() -> None:
    """Pages per second at a 1280x960 input (a measurement printed with -s; a loose bound only)."""
    data = pdf_of(coloured_pages(10, size=(850, 1100)))
    start = time.perf_counter()
    for page in range(1, 11):
        load_page(data, page=page, target_size=(1280, 960))
    per_s = 10 / (time.perf_counter() - start)
    print(f"rendered {per_s:.1f} pages/s at 1280x960")
    assert per_s > 2


@pytest.mark.parametrize("loop", [False, True], ids=["missing page", "page-tree loop"])
def test_a_page_pdfium_cannot_load_is_that_pages_document_error(loop: bool) -> None:
    data = with_unloadable_page(loop=loop)
    assert inspect_source(data).page_count == 2
    assert max(load_page(data, page=1, target_size=TARGET).size) > 100  # the good page reads
    with pytest.raises(DocumentError, match="page 2 of the PDF cannot be loaded: Failed to load page"):
        load_page(data, page=2, target_size=TARGET)
