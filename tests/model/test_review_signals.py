"""Field confidence and field boxes: the calibration, the spans of a reading, where a field was read."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from donut_hole.documents.synth import jpeg_round_trip, render_sample
from donut_hole.evaluation.boxes import box_iou, field_ious, truth_boxes
from donut_hole.model import locate
from donut_hole.model.confidence import (
    FEATURES,
    Calibration,
    expected_calibration_error,
    features,
    field_spans,
    kind_of,
    load_calibration,
)
from donut_hole.model.pixels import DonutPixels
from donut_hole.model.predict import DonutReader
from donut_hole.model.readings import field_readings

STUDENT = Path(__file__).parents[2] / "models" / "donut-hole-small"


def test_a_reading_splits_into_its_fields_with_their_tags() -> None:
    tokens = ["<s_carrier>", "D", "HL", "</s_carrier>", "<s_items>", "<s_sku>", "A1", "</s_sku>", "<sep/>",
              "<s_sku>", "B", "2", "</s_sku>", "</s_items>", "</s>"]  # fmt: skip
    spans = field_spans(tokens, detokenize="".join)
    assert [(s.path, s.value, s.start, s.end) for s in spans] == [
        ("carrier", "DHL", 1, 3),
        ("items.sku", "A1", 6, 7),
        ("items.sku", "B2", 10, 12),
    ]
    assert spans[0].tags == [0, 3] and spans[2].tags == [9, 12]
    assert kind_of("items.0.sku") == "items.sku" and kind_of("ship_to.city") == "ship_to.city"


def test_features_see_the_weakest_token_and_a_cut_reading() -> None:
    tokens = ["<s_carrier>", "D", "HL", "</s_carrier>", "</s>"]
    (span,) = field_spans(tokens, detokenize="".join)
    sure = features(span, [0.99, 0.99, 0.99, 0.99, 0.99], cut=False)
    unsure = features(span, [0.99, 0.99, 0.40, 0.99, 0.99], cut=True)
    assert len(sure) == len(FEATURES)
    assert unsure[1] < sure[1] and unsure[0] < sure[0] and unsure[-1] == 1.0 and sure[-1] == 0.0


def test_a_fitted_calibration_says_how_often_fields_are_right() -> None:
    """Fields whose weakest token is unsure are right half the time: the fit says about 0.5 for them,
    about 0.95 for the others, where the raw probabilities said 0.7 and 0.999."""
    rng = random.Random(3)
    rows, paths, right = [], [], []
    for i in range(4000):
        unsure = i % 2 == 0
        x = [0.0] * len(FEATURES)
        x[1] = (0.8 if unsure else 7.0) + rng.gauss(0, 0.3)
        rows.append(x)
        paths.append("carrier")
        right.append(rng.random() < (0.5 if unsure else 0.95))
    calibration = Calibration.fit(rows, paths, right)
    low = calibration.probability([0.0, 0.8, *[0.0] * (len(FEATURES) - 2)], "carrier")
    high = calibration.probability([0.0, 7.0, *[0.0] * (len(FEATURES) - 2)], "carrier")
    assert 0.45 < low < 0.55 and 0.93 < high < 0.97
    again = Calibration.from_json(calibration.to_json())
    assert again.probability(rows[0], "carrier") == pytest.approx(calibration.probability(rows[0], "carrier"))
    fitted = [calibration.probability(x, p) for x, p in zip(rows, paths, strict=True)]
    assert expected_calibration_error(fitted, right) < 0.03
    assert expected_calibration_error([0.999] * len(right), right) > 0.2


def test_a_calibration_for_other_features_is_refused(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) is None
    (tmp_path / "calibration.json").write_text('{"kind": "logistic", "features": ["x"]}')
    with pytest.raises(ValueError, match="other features"):
        load_calibration(tmp_path)


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (300, 900), (672, 672)])
def test_input_geometry_undoes_the_processors_fit_and_padding(size: tuple[int, int]) -> None:
    """A dot on the page lands, through DONUT's preprocessing, where InputGeometry says it came from."""
    reader = DonutReader.from_path(STUDENT)
    ip = reader.processor.image_processor
    width, height = size
    page = Image.new("RGB", size, "white")
    x, y = int(width * 0.3), int(height * 0.7)
    page.paste((255, 0, 0), (x - 4, y - 4, x + 4, y + 4))  # a red dot (the padding is black)
    fitted = DonutPixels(ip).fit(page)
    red = [(i, j) for i in range(fitted.width) for j in range(fitted.height) if _red(fitted.getpixel((i, j)))]
    cx = sum(p[0] + 0.5 for p in red) / len(red)
    cy = sum(p[1] + 0.5 for p in red) / len(red)
    fx, fy = locate.input_geometry(ip, size).to_page(cx, cy)
    assert fx == pytest.approx(0.3, abs=0.01) and fy == pytest.approx(0.7, abs=0.01)


def _red(pixel: tuple[int, int, int]) -> bool:
    return pixel[0] > 150 and pixel[1] < 100 and pixel[2] < 100


def test_the_attention_read_by_a_hook_is_the_models_own() -> None:
    """The last layer's cross-attention computed from its projections equals what the model returns with
    output_attentions (eager attention)."""
    reader = DonutReader.from_path(STUDENT)
    model = reader.model
    image = jpeg_round_trip(render_sample("shipping_label", seed=4242, index=0))
    pixels = reader.pixel_values([reader.load(image)])
    ids = [5, 60, 61, 62, 63]
    with torch.inference_mode():
        cells = model.encoder(pixel_values=pixels)[0]
        mine = locate.last_cross_attention(model.decoder, cells, ids)
        model.decoder.config._attn_implementation = "eager"
        try:
            out = model.decoder(
                input_ids=torch.tensor([ids]), encoder_hidden_states=cells, output_attentions=True
            )
        finally:
            model.decoder.config._attn_implementation = model.config.decoder._attn_implementation
    theirs = out.cross_attentions[-1][0].mean(dim=0)
    assert torch.allclose(mine, theirs, atol=1e-5)


def test_boxes_of_the_shipped_student_find_the_print() -> None:
    """On unseen scans of the three kinds, most fields' boxes overlap where the generator printed them."""
    reader = DonutReader.from_path(STUDENT)
    reader.locate = True
    ious: list[float | None] = []
    for index, kind in enumerate(("shipping_label", "delivery_note", "bill_of_lading")):
        image = jpeg_round_trip(render_sample(kind, seed=4343, index=index))
        (prediction,) = reader.predict_detailed([image])
        assert prediction.points is not None and len(prediction.points) == len(prediction.token_ids)
        geometry = locate.input_geometry(reader.processor.image_processor, image.size)
        fields = field_readings(
            prediction, reader.processor.tokenizer, geometry=geometry, stride=reader.stride
        )
        assert all(f.box is None or 0 <= f.box[0] <= f.box[2] <= 1 for f in fields)
        _, truth = truth_boxes(kind, seed=4343, index=index)
        ious += field_ious(fields, truth)
    printed = [v for v in ious if v is not None]
    assert len(printed) >= 0.8 * len(ious)
    assert sum(v >= 0.5 for v in printed) >= 0.8 * len(printed)
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
