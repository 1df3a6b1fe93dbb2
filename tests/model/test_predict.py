import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from published import write_published

from donut_hole.model import decoding, engine, predict
from donut_hole.model.predict import DonutReader
from donut_hole.scans import DocumentError, load_image

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


def _taught(reader: DonutReader, images: list[Image.Image], texts: list[str], most: int = 800) -> None:
    """Teach ``reader``'s model to read each image as its text: it memorises them, checked by reading
    (the tiny model starts from random weights, so the steps this takes vary from one run to the next)."""
    tokenizer = reader.processor.tokenizer
    start = tokenizer.convert_tokens_to_ids(reader.task_token)
    rows = [[start, *tokenizer(t, add_special_tokens=False).input_ids, tokenizer.eos_token_id] for t in texts]
    labels = torch.full((len(rows), max(map(len, rows))), -100)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row)
    inputs = labels[:, :-1].masked_fill(labels[:, :-1] == -100, tokenizer.pad_token_id)
    pixels = reader.pixel_values(images)
    wanted = [len(row) - 1 for row in rows]  # its tokens and the EOS, after the task token
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(reader.model.parameters(), lr=3e-3)
    for step in range(1, most + 1):
        reader.model.train()
        logits = reader.model(pixel_values=pixels, decoder_input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            reader.model.eval()
            if [len(p.token_probs) for p in reader.generate(pixels)] == wanted:
                return
    raise AssertionError(f"the tiny model did not learn to read {texts!r} in {most} steps")


def _reads_as_generate(reader: DonutReader, pixels: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> list:
    """The reader's greedy loop on ``pixels``, checked against transformers' ``generate``: the same tokens
    and probabilities, by the engine (where it reads the model), by the plain decoding step and by the
    decoder's forward (other decoders' way)."""
    assert decoding.supports(reader.model.decoder)
    own = reader.generate(pixels)
    with monkeypatch.context() as patch:
        patch.setattr(engine, "supports", lambda decoder: False)
        steps = reader.generate(pixels)
        patch.setattr(decoding, "supports", lambda decoder: False)
        forward = reader.generate(pixels)
        patch.setattr(predict, "_plain_greedy", lambda model: False)
        theirs = reader.generate(pixels)
    for other in (steps, forward, theirs):
        assert [p.sequence for p in own] == [p.sequence for p in other]
        for a, b in zip(own, other, strict=True):
            assert a.token_probs == pytest.approx(b.token_probs, abs=1e-5)
    return own


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_the_greedy_loop_reads_as_generate_does(tiny_model_dir, tmp_path, monkeypatch):
    """The reader's own greedy loop gives the tokens and probabilities transformers' ``generate`` gives,
    with documents of one batch ending at different steps, and at the token limit (a forced EOS)."""
    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=24)
    images = [Image.new("RGB", (160, 160), colour) for colour in ("black", "white")]
    _taught(reader, images, ["1Z9", "2.5 kg 1Z999AA1012"])
    published = DonutReader.from_path(
        write_published(tmp_path / "cord", kind="cord-v2", weights="safetensors"),
        max_new_tokens=6,
        task_prompt="<s_cord-v2>",
    )
    assert published.model.generation_config.forced_eos_token_id is not None
    for case, batch in ((reader, [*images, images[0]]), (reader, images[1:]), (published, images)):
        assert predict._plain_greedy(case.model)
        own = _reads_as_generate(case, case.pixel_values(batch), monkeypatch)
    assert [len(p.token_probs) for p in own] == [6, 6]  # the published one ran to the limit
    lengths = [len(p.token_probs) for p in reader.generate(reader.pixel_values(images))]
    assert lengths[0] < lengths[1] < 24  # the taught one ended at its own EOS, each at its step


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_decoding_step_reads_long_sequences_as_generate_does(tiny_model_dir, monkeypatch, precision):
    """Past the decoding step's first buffer (64 tokens) and with int8 Linears, the same tokens."""
    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=150, precision=precision)
    torch.manual_seed(1)
    with torch.no_grad():  # an untrained decoder that seldom ends: it runs to the limit
        for parameter in reader.model.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    pixels = reader.pixel_values([Image.new("RGB", (160, 160), c) for c in ("white", "gray", "black")])
    own = _reads_as_generate(reader, pixels, monkeypatch)
    assert max(len(p.token_probs) for p in own) > 128


def test_the_greedy_loop_projects_an_encoder_of_another_width(tiny_model_dir, monkeypatch):
    """A decoder narrower than its encoder reads through the model's projection, in the greedy loop as in
    ``generate``."""
    from transformers import MBartForCausalLM, VisionEncoderDecoderModel

    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=8)
    narrow = reader.model.config.decoder.to_dict()
    narrow.update(d_model=64, decoder_ffn_dim=128, is_decoder=True, add_cross_attention=True)
    torch.manual_seed(0)
    decoder = MBartForCausalLM(type(reader.model.config.decoder).from_dict(narrow))
    model = VisionEncoderDecoderModel(encoder=reader.model.encoder, decoder=decoder).eval()
    assert model.encoder.config.hidden_size != model.decoder.config.hidden_size
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.config, key, getattr(reader.model.config, key))
    reader = DonutReader(model, reader.processor, max_new_tokens=8)
    _reads_as_generate(reader, reader.pixel_values([Image.new("RGB", (160, 160), "white")] * 2), monkeypatch)


def test_a_generation_config_with_its_own_processors_is_read_by_generate(tiny_model_dir):
    reader = DonutReader.from_path(tiny_model_dir, max_new_tokens=4)
    assert predict._plain_greedy(reader.model)
    reader.model.generation_config.no_repeat_ngram_size = 2
    assert not predict._plain_greedy(reader.model)
    assert len(reader.predict([_jpeg(_label("X"))])) == 1


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


def test_a_reading_may_use_every_position_and_a_cut_one_says_so(tiny_model_dir):
    reader = DonutReader.from_path(tiny_model_dir)
    positions = reader.model.config.decoder.max_position_embeddings
    assert reader.max_new_tokens == positions - 1  # no shorter default: the model's own limit

    short = DonutReader.from_path(tiny_model_dir, max_new_tokens=6)
    eos = short.processor.tokenizer.eos_token_id
    with torch.no_grad():  # EOS's logit 0 among random ones: the model never ends, the limit cuts it
        short.model.decoder.lm_head.weight[eos] = 0.0
    (cut,) = short.predict_detailed([_jpeg(_label("LABEL 1"))])
    assert cut.cut and cut.note is not None and cut.note.startswith("cut: ")
    assert len(cut.token_probs) == 6 and cut.token_probs[-1] == pytest.approx(1.0)  # the forced EOS
    mean = math.exp(sum(math.log(p) for p in cut.token_probs) / len(cut.token_probs))
    assert cut.confidence == pytest.approx(mean / 2)

    token = short.processor.tokenizer.convert_tokens_to_ids("A")
    ended = short._parse_read([token, eos], [math.log(0.9), math.log(0.9)])  # the model's own EOS
    assert not ended.cut and ended.note is None and ended.confidence == pytest.approx(0.9)
    assert short._parse_read([token] * 6, [math.log(0.9)] * 6).cut  # no EOS at all


def test_read_takes_every_page_of_an_image_or_a_pdf(tiny_model_dir, tmp_path):
    from multipage import pdf_of

    import donut_hole

    scans = []
    for i in range(3):
        _label(f"LABEL {i}").save(tmp_path / f"{i}.png")
        scans.append(tmp_path / f"{i}.png")
    pdf = pdf_of(scans)
    pages = donut_hole.read(pdf, model=tiny_model_dir, max_new_tokens=4)
    one = donut_hole.read(scans[0], model=tiny_model_dir, max_new_tokens=4)
    assert len(pages) == 3 and len(one) == 1
    assert all(isinstance(p.data, dict) and 0 <= p.confidence <= 1 for p in pages)
    assert donut_hole.reader(model=tiny_model_dir, max_new_tokens=4) is donut_hole.reader(
        model=tiny_model_dir, max_new_tokens=4
    )  # loaded once
    with pytest.raises(DocumentError, match="empty file"):
        donut_hole.read(b"", model=tiny_model_dir)
