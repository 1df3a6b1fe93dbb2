import random

import pytest

from donut_hole.documents.canvas import TextBox
from donut_hole.documents.locations import field_centres, target_centres, token_cells
from donut_hole.documents.synth import sample_layout
from donut_hole.model.tokens import build_tokenizer, field_tokens, json2token


def test_field_centres_join_wrapped_runs_with_an_unlocated_space():
    boxes = [
        TextBox("12", "items.0.quantity", (0, 0, 10, 10), 3, ((2.0, 5.0), (7.0, 5.0))),
        TextBox("SHIP", None, (0, 20, 10, 30), 4, ((1.0, 25.0),) * 4),
        TextBox("ea", "items.0.quantity", (0, 12, 10, 22), 3, ((2.0, 17.0), (7.0, 17.0))),
    ]
    assert field_centres(boxes) == {
        "items.0.quantity": [(2.0, 5.0), (7.0, 5.0), None, (2.0, 17.0), (7.0, 17.0)]
    }


def test_target_centres_follow_json2token_order():
    gt = {"b": "xy", "a": [{"c": "z"}, {"c": "zz"}]}
    printed = {"b": [(1.0, 1.0), (2.0, 1.0)], "a.0.c": [(5.0, 5.0)], "a.1.c": [(6.0, 6.0), (7.0, 6.0)]}
    text, centres = target_centres(gt, printed)
    assert text == json2token(gt)
    located = {text[i]: c for i, c in enumerate(centres) if c is not None}
    assert [c for c in centres if c is not None] == [
        (1.0, 1.0),
        (2.0, 1.0),
        (5.0, 5.0),
        (6.0, 6.0),
        (7.0, 6.0),
    ]
    assert set(located) == {"x", "y", "z"}
    assert all(centres[i] is None for i, ch in enumerate(text) if ch in "<>_/")


def test_target_centres_leave_a_mismatched_leaf_unlocated():
    text, centres = target_centres({"a": "abc"}, {"a": [(1.0, 1.0)]})
    assert text == "<s_a>abc</s_a>" and centres == [None] * len(text)


def test_token_cells():
    assert token_cells([(0, 1), (1, 2)], [(20.0, 5.0), None], stride=16, grid=(4, 4)) == [1, -1]
    # a space between two characters of one line sits between them; beyond the grid clamps to its edge
    cells = token_cells([(0, 1), (1, 2), (2, 3)], [(8.0, 8.0), None, (40.0, 8.0)], stride=16, grid=(2, 2))
    assert cells == [0, 1, 1]


def test_every_printed_value_character_of_a_document_is_located():
    tokenizer = build_tokenizer(field_special_tokens=field_tokens([]))
    for kind in ("shipping_label", "bill_of_lading", "delivery_note"):
        gt, canvas = sample_layout(kind, random.Random(5), (448, 448))
        text, centres = target_centres(gt, field_centres(canvas.boxes))
        assert text == json2token(gt)
        value_chars = sum(len(v) for v in _leaves(gt) if v != gt["document_type"])
        located = sum(c is not None for c in centres)
        # every character of every printed value, except the document type (not printed as such)
        assert located == pytest.approx(value_chars - text.count(" ") + _joins(canvas), abs=2)
        assert tokenizer  # the char tokenizer splits values one character a token (used by training)


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v)
    else:
        yield str(node)


def _joins(canvas):
    """Spaces printed inside one run are located (they have a centre); only wrap joins are not."""
    return sum(box.text.count(" ") for box in canvas.boxes if box.field)
