from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from donut_hole.documents import DOCUMENT_TYPES, detect_kind, validate_document
from donut_hole.documents.canvas import Canvas, LayoutError
from donut_hole.documents.synth import (
    DEFAULT_SIZES,
    generate,
    printed_fields,
    render,
    render_layout,
    sample_document,
    sample_layout,
)
from donut_hole.documents.values import CHARSET
from donut_hole.evaluation.dataset import read_dataset

KINDS = sorted(DOCUMENT_TYPES)


def leaves(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": "1"}, "c": [{"d": "2"}]}`` → ``{"a.b": "1", "c.0.d": "2"}``."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    out: dict[str, str] = {}
    for key, child in items:
        out.update(leaves(child, f"{prefix}.{key}" if prefix else key))
    return out


def assert_prints_exactly_the_ground_truth(gt: dict[str, Any], canvas: Canvas) -> None:
    values = leaves({k: v for k, v in gt.items() if k != "document_type"})  # the kind is the layout, not text
    printed = printed_fields(canvas.boxes)
    for name, text in printed:  # nothing printed that is not in the ground truth, nothing cut short
        assert values.get(name) == text, (name, text)
    assert {name for name, _ in printed} == set(values)  # every value printed
    width, height = canvas.size
    boxes = [box.box for box in canvas.boxes]
    for left, top, right, bottom in boxes:
        assert canvas.margin <= left < right <= width - canvas.margin
        assert canvas.margin <= top < bottom <= height - canvas.margin
    for i, a in enumerate(boxes):  # no text drawn over other text
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_every_value_is_printed_in_full_and_nothing_else(kind: str, seed: int) -> None:
    gt, canvas = sample_layout(kind, random.Random(seed))
    assert gt["document_type"] == kind
    for value in leaves({k: v for k, v in gt.items() if k != "document_type"}).values():
        assert set(value) <= CHARSET
        assert value == " ".join(value.split())  # no leading, trailing or double spaces
    assert_prints_exactly_the_ground_truth(gt, canvas)


LONG = "Bartholomew Featherstonehaugh International Freight Forwarding and Warehousing Holdings"


@pytest.mark.parametrize(
    ("kind", "gt"),
    [
        (
            "shipping_label",
            {"tracking_number": "1Z999AA10123456784", "ship_to": {"name": LONG, "city": LONG}},
        ),
        ("bill_of_lading", {"bol_number": "BL1", "items": [{"description": LONG, "weight": "1 kg"}] * 4}),
        ("delivery_note", {"note_number": "DN-1", "delivery_address": f"{LONG}, Leeds", "customer": LONG}),
        ("shipping_label", {"tracking_number": "X"}),  # only the required field
    ],
)
def test_long_or_sparse_values_are_shrunk_or_wrapped_never_clipped(kind: str, gt: dict[str, Any]) -> None:
    gt = validate_document(kind, gt).gt_parse()
    for seed in range(5):
        assert_prints_exactly_the_ground_truth(gt, render_layout(kind, gt, random.Random(seed)))


def test_a_value_that_cannot_fit_raises_instead_of_being_cut() -> None:
    with pytest.raises(LayoutError, match="does not fit"):
        render("shipping_label", {"tracking_number": "9" * 80 + "A" * 120}, random.Random(0))


@pytest.mark.parametrize("kind", KINDS)
def test_generate_writes_donut_dataset(kind: str, tmp_path: Path) -> None:
    out = generate(kind, n=3, out=tmp_path / kind, seed=1, progress=False)
    assert out == tmp_path / kind
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert sorted(p.name for p in out.glob("*.jpg")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    for i, line in enumerate(lines):
        record = json.loads(line)
        assert record["file_name"] == f"{i:06d}.jpg"
        assert isinstance(record["ground_truth"], str)  # a JSON string, as in DONUT
        gt = json.loads(record["ground_truth"])["gt_parse"]
        assert detect_kind(gt) == kind
        validate_document(kind, gt)
        with Image.open(out / record["file_name"]) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == DEFAULT_SIZES[kind]


def test_default_sizes() -> None:
    assert DEFAULT_SIZES == {
        "shipping_label": (480, 640),
        "bill_of_lading": (640, 480),
        "delivery_note": (640, 480),
    }


@pytest.mark.parametrize("size", [(960, 1280), (384, 256), (320, 420), (640, 640)])
def test_requested_image_size(size: tuple[int, int], tmp_path: Path) -> None:
    for kind in KINDS:
        out = generate(kind, n=2, out=tmp_path / kind, seed=3, image_size=size, progress=False)
        for path in out.glob("*.jpg"):
            with Image.open(path) as image:
                assert image.size == size
        for seed in range(4):
            gt, canvas = sample_layout(kind, random.Random(seed), size)
            assert canvas.size == size
            assert_prints_exactly_the_ground_truth(gt, canvas)


def test_a_page_too_small_for_any_document_raises() -> None:
    with pytest.raises(LayoutError, match="use a larger image_size"):
        sample_layout("bill_of_lading", random.Random(0), (120, 90), tries=3)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    def files(seed: int, name: str, n: int = 3) -> dict[str, bytes]:
        out = generate("shipping_label", n=n, out=tmp_path / name, seed=seed, progress=False)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    first, again, other = files(11, "a"), files(11, "b"), files(12, "c")
    assert first == again
    assert all(first[name] != other[name] for name in first)
    longer = files(11, "d", n=5)  # sample i depends only on (seed, kind, i)
    assert all(longer[f"{i:06d}.jpg"] == first[f"{i:06d}.jpg"] for i in range(3))


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    kinds = ["shipping_label", "bill_of_lading", "delivery_note"]
    one = generate(kinds, n=32, out=tmp_path / "one", seed=5, progress=False, workers=1)
    two = generate(kinds, n=32, out=tmp_path / "two", seed=5, progress=False, workers=2)
    for path in sorted(one.iterdir()):
        assert (two / path.name).read_bytes() == path.read_bytes(), path.name
    assert len(list(two.iterdir())) == 33  # 32 scans and metadata.jsonl, in sample order
    with pytest.raises(ValueError, match="workers"):
        generate("shipping_label", n=1, out=tmp_path / "bad", seed=0, workers=-1)


def test_render_is_reproducible_and_sampling_varies() -> None:
    gt = sample_document("bill_of_lading", random.Random(0))
    one = render("bill_of_lading", gt, random.Random(1))
    two = render("bill_of_lading", gt, random.Random(1))
    assert one.tobytes() == two.tobytes()
    assert one.tobytes() != render("bill_of_lading", gt, random.Random(2)).tobytes()
    docs = [json.dumps(sample_document("delivery_note", random.Random(seed))) for seed in range(10)]
    assert len(set(docs)) == 10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown document type 'invoice'"):
        generate("invoice", n=1, out=Path("unused"), seed=0)
    with pytest.raises(ValueError, match="n must be at least 0"):
        generate("shipping_label", n=-1, out=Path("unused"), seed=0)


def test_mixed_kinds_round_robin(tmp_path):
    out = generate(["shipping_label", "delivery_note"], n=4, out=tmp_path / "mix", seed=3, progress=False)
    lines = (out / "metadata.jsonl").read_text().splitlines()
    kinds = [json.loads(json.loads(line)["ground_truth"])["gt_parse"]["document_type"] for line in lines]
    assert kinds == ["shipping_label", "delivery_note", "shipping_label", "delivery_note"]


def test_reading_pages_in_the_dataset_format(tmp_path):
    generate("reading/medium", n=3, out=tmp_path, seed=2, image_size=(448, 448), progress=False)
    samples = read_dataset(tmp_path)
    assert [set(s.gt_parse) for s in samples] == [{"text_sequence"}] * 3
    assert all(Image.open(s.image_path).size == (448, 448) for s in samples)
