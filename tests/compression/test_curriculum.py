import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from donut_hole.compression.curriculum import (
    READING_TASK_TOKEN,
    CurriculumDataset,
    CurriculumSampler,
    collate_located,
    render,
)
from donut_hole.compression.recipe import CurriculumConfig
from donut_hole.documents.synth import generate
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
    assert all(source == "reading/easy" for batch in full[:5] for source, _ in batch)  # 5 x 4 = 20 images
    later = [source for batch in full[5:] for source, _ in batch]
    assert set(later) == {"shipping_label", "reading/medium"}
    assert later.count("reading/medium") > later.count("shipping_label")  # weights 3 : 1
    indices = [i for batch in full for _, i in batch]
    assert len(indices) == len(set(indices))  # no sample drawn twice


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
