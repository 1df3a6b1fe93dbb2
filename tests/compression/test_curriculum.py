import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from donut_hole.compression.curriculum import (
    READING_TASK_TOKEN,
    SHORT_SIDE,
    CurriculumDataset,
    CurriculumSampler,
    Draw,
    collate_located,
    fitted,
    render,
)
from donut_hole.compression.recipe import CurriculumConfig
from donut_hole.documents.synth import generate
from donut_hole.model.build import make_processor
from donut_hole.model.tokens import build_tokenizer, field_tokens, json2token


def config(**kw):
    stages = kw.pop(
        "stages",
        [{"until": 20, "mix": {"reading/easy": 1}}, {"mix": {"shipping_label": 1, "reading/medium": 3}}],
    )
    return CurriculumConfig(stages=stages, **kw)


def test_curriculum_validation():
    with pytest.raises(ValidationError, match="unknown source 'invoice'"):
        config(stages=[{"mix": {"invoice": 1}}])
    with pytest.raises(ValidationError, match="only the last stage"):
        config(stages=[{"mix": {"reading/easy": 1}}, {"until": 5, "mix": {"reading/easy": 1}}])
    with pytest.raises(ValidationError, match="increasing"):
        config(stages=[{"until": 9, "mix": {"reading/easy": 1}}, {"until": 5, "mix": {"reading/easy": 1}}])
    with pytest.raises(ValidationError, match="positive weight"):
        config(stages=[{"mix": {"reading/easy": 0}}])


def test_stage_at_and_documents():
    c = config()
    assert c.stage_at(0).mix == {"reading/easy": 1} and c.stage_at(19).mix == {"reading/easy": 1}
    assert c.stage_at(20).mix == {"shipping_label": 1, "reading/medium": 3}
    assert c.documents() == ["shipping_label"]


def test_sampler_follows_the_stages_and_resumes_exactly():
    c = config(seed=3)
    full = list(CurriculumSampler(c, batch_size=4, start=0, stop=12))
    assert full[3:] == list(CurriculumSampler(c, batch_size=4, start=3, stop=12))
    assert all(d.source == "reading/easy" for batch in full[:5] for d in batch)  # 5 x 4 = 20 images
    later = [d.source for batch in full[5:] for d in batch]
    assert set(later) == {"shipping_label", "reading/medium"}
    assert later.count("reading/medium") > later.count("shipping_label")  # weights 3 : 1
    indices = [d.number for batch in full for d in batch]
    assert len(indices) == len(set(indices))  # no sample drawn twice
    assert all(d.size is None for batch in full for d in batch)  # no page shapes asked for


def test_page_shapes_draw_document_pages_in_their_own_shape():
    stages = [{"mix": {"shipping_label": 1, "bill_of_lading": 1, "reading/document": 1}}]
    plain = list(CurriculumSampler(config(stages=stages), batch_size=8, start=0, stop=20))
    shaped_stages = [{**stages[0], "page_shapes": 1.0}]
    shaped = list(CurriculumSampler(config(stages=shaped_stages), batch_size=8, start=0, stop=20))
    # the same samples as without shapes: only their page size is drawn in addition
    assert [[d[:2] for d in batch] for batch in shaped] == [[d[:2] for d in batch] for batch in plain]
    draws = [d for batch in shaped for d in batch]
    assert all(d.size is None for d in draws if d.source == "reading/document")
    sizes = {d.source: [] for d in draws}
    for d in draws:
        if d.size is not None:
            sizes[d.source].append(d.size)
    assert all(w == 640 and SHORT_SIDE[0] * 640 - 1 <= h <= 640 for w, h in sizes["bill_of_lading"])
    assert all(h == 640 and SHORT_SIDE[0] * 640 - 1 <= w <= 640 for w, h in sizes["shipping_label"])
    assert len(set(sizes["shipping_label"])) > 3  # the short side varies
    half = [{**stages[0], "page_shapes": 0.5}]
    documents = [d for b in CurriculumSampler(config(stages=half), batch_size=8, start=0, stop=40) for d in b]
    share = np.mean([d.size is not None for d in documents if d.source != "reading/document"])
    assert 0.35 < share < 0.65


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (422, 640), (640, 640), (600, 423)])
def test_fitted_is_where_the_processor_puts_the_page(size):
    processor = make_processor(build_tokenizer(field_special_tokens=[]), (448, 448))
    page = Image.new("RGB", size, (255, 255, 255))
    pixels = processor.image_processor(page, return_tensors="pt")["pixel_values"][0]  # (3, H, W)
    content = (pixels[0] > 0).nonzero()  # white page (1.0) on the pad (-1.0)
    top, left = content.min(0).values.tolist()
    bottom, right = content.max(0).values.tolist()
    scale, dx, dy = fitted(size, (448, 448))
    assert abs(left - dx) <= 1 and abs(top - dy) <= 1
    assert abs((right + 1) - (dx + size[0] * scale)) <= 1 and abs((bottom + 1) - (dy + size[1] * scale)) <= 1


def test_a_rendered_document_is_the_scan_synth_writes(tmp_path):
    generate("bill_of_lading", n=2, out=tmp_path, seed=4, image_size=(448, 448), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    for i, line in enumerate(lines):
        sample = render("bill_of_lading", seed=4, index=i, size=(448, 448))
        on_disk = np.asarray(Image.open(tmp_path / line["file_name"]).convert("RGB"))
        assert np.array_equal(np.asarray(sample.image), on_disk)
        assert sample.gt_parse == json.loads(line["ground_truth"])["gt_parse"]
        assert sample.target == json2token(sample.gt_parse)


def test_dataset_items_carry_aligned_guidance():
    tokenizer = build_tokenizer(
        field_special_tokens=[
            *field_tokens([render("shipping_label", seed=0, index=0, size=(448, 448)).gt_parse]),
            READING_TASK_TOKEN,
        ]
    )
    # documents' optional fields vary: give the tokenizer every tag the two samples below use
    c = config()
    dataset = CurriculumDataset(
        c,
        tokenizer=tokenizer,
        pixels=lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1),
        image_size=(448, 448),
        task_token="<s_logistics>",
        max_length=512,
        stride=16,
    )
    item = dataset[("reading/easy", 0)]
    page = render("reading/easy", seed=0, index=0, size=(448, 448))
    ids = item["input_ids"].tolist()
    assert tokenizer.convert_ids_to_tokens(ids[0]) == READING_TASK_TOKEN and ids[-1] == tokenizer.eos_token_id
    assert len(item["cells"]) == len(ids) - 1
    # label t + 1 = character t of the text: its cell is where that character is printed
    for t, ch in enumerate(page.target):
        if ch != " ":
            x, y = page.centres[t]
            assert item["cells"][t] == int(y // 16) * 28 + int(x // 16)
    assert item["cells"][len(page.target)] == -1  # </s> is printed nowhere
    glyphs = item["glyphs"]
    assert glyphs.shape == (28 * 28,)
    assert set(
        tokenizer.convert_ids_to_tokens([g for g in glyphs.tolist() if g != tokenizer.pad_token_id])
    ) <= set(page.target)
    batch = collate_located([item, dataset[("reading/easy", 1)]], pad_token_id=tokenizer.pad_token_id)
    assert batch["cells"].shape == (2, batch["input_ids"].shape[1] - 1)
    assert batch["glyphs"].shape == (2, 784) and batch["pixel_values"].shape == (2, 3, 448, 448)


def test_a_shaped_page_moves_its_guidance_with_the_fitting():
    sample = render("shipping_label", seed=0, index=0, size=(448, 640))
    tokenizer = build_tokenizer(field_special_tokens=[*field_tokens([sample.gt_parse]), "<s_logistics>"])
    processor = make_processor(tokenizer, (448, 448))
    dataset = CurriculumDataset(
        config(),
        tokenizer=tokenizer,
        pixels=lambda image: processor.image_processor(image, return_tensors="pt")["pixel_values"][0],
        image_size=(448, 448),
        task_token="<s_logistics>",
        max_length=512,
        stride=16,
    )
    item = dataset[Draw("shipping_label", 0, (448, 640))]
    assert item["pixel_values"].shape == (3, 448, 448)
    scale, dx, dy = fitted((448, 640), (448, 448))  # 313 x 448 of content, padded left and right
    assert scale == 0.7 and dx == 67 and dy == 0
    text = "<s_logistics>" + sample.target + tokenizer.eos_token
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    checked = 0
    for j, (start, end) in enumerate(offsets[1:], start=1):  # cells[j - 1]: where token j is printed
        char = start - len("<s_logistics>")
        if end - start == 1 and 0 <= char < len(sample.centres) and sample.centres[char] is not None:
            x, y = sample.centres[char]
            assert item["cells"][j - 1] == int((y * scale + dy) // 16) * 28 + int((x * scale + dx) // 16)
            checked += 1
    assert checked > 50
    printed = item["glyphs"].view(28, 28) != tokenizer.pad_token_id
    columns = printed.any(0).nonzero().flatten()
    assert printed.sum() > 50 and columns.min() >= dx // 16 and columns.max() <= (dx + 313) // 16
