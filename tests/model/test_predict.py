import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from donut_hole.model.predict import DocumentError, DonutReader, load_image

REAL_SCANS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_scans"


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _label(text: str) -> Image.Image:
    image = Image.new("RGB", (240, 320), "white")
    ImageDraw.Draw(image).text((10, 10), text, fill="black")
    return image


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (60, 100), "white")  # portrait
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # sideways on disk: 100x60
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    loaded = load_image(_jpeg(stored, exif=exif))
    assert loaded.size == (60, 100)
    assert loaded.mode == "RGB"


def test_transparency_is_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"%PDF-1.4 this is not an image", "not a readable image"),
        (_jpeg(Image.new("RGB", (200, 200), "gray"))[:300], "corrupt image"),
    ],
)
def test_bad_input_raises_document_error(data, reason):
    with pytest.raises(DocumentError, match=reason):
        load_image(data)


def test_decompression_bomb_and_size_limits():
    data = _jpeg(Image.new("RGB", (100, 100)))
    with pytest.raises(DocumentError, match="image too large"):
        load_image(data, max_pixels=5_000)
    with pytest.raises(DocumentError, match="file too large"):
        load_image(data, max_bytes=10)


def test_missing_file_is_a_document_error(tmp_path):
    with pytest.raises(DocumentError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def test_predict_batched_equals_one_by_one(tiny_model_dir):
    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=12)
    images = [_jpeg(_label(f"LABEL {i}")) for i in range(3)]
    batched = reader.predict_detailed(images, batch_size=3)
    single = [reader.predict_detailed([img], batch_size=1)[0] for img in images]
    assert [p.sequence for p in batched] == [p.sequence for p in single]
    for p in batched:
        assert isinstance(p.data, dict)
        assert 0.0 <= p.confidence <= 1.0
        assert 1 <= len(p.token_probs) <= 12
    assert reader.timings.encode_s > 0


def test_predict_on_real_phone_photos(tiny_model_dir):
    """The three 12-megapixel phone photos (EXIF orientation 6) decode, rotate and run."""
    photos = sorted(REAL_SCANS.glob("*.jpg"))
    assert len(photos) == 3, f"expected the real scans in {REAL_SCANS}"
    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=4)
    image = reader.load(photos[0])
    assert image.height > image.width  # stored sideways, read upright
    assert max(image.size) < 4032  # decoded at reduced scale
    out = reader.predict(photos, batch_size=2)
    assert len(out) == 3 and all(isinstance(d, dict) for d in out)
