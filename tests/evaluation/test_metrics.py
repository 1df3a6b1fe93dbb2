"""DONUT-compatible metrics against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zss import Node

from donut_hole.evaluation.metrics import (
    EvalResult,
    construct_tree_from_dict,
    corpus_ted_accuracy,
    evaluate,
    field_f1,
    flatten,
    insert_remove_cost,
    levenshtein,
    normalize_dict,
    per_field_exact_match,
    ted_accuracy,
    tree_edit_distance,
    update_cost,
)

RECEIPT_GT = {"menu": [{"name": "cake", "cnt": "2"}, {"name": "juice", "cnt": "1"}], "total": "3"}
RECEIPT_PRED = {"menu": [{"name": "cake", "cnt": "2"}, {"name": "juce", "cnt": "1"}], "total": "4"}


# --- normalisation and flattening -------------------------------------------------------------------------


def test_flatten_docstring_example() -> None:
    data = {"menu": [{"name": ["cake"], "count": ["2"]}, {"name": ["juice"], "count": ["1"]}]}
    assert flatten(data) == [
        ("menu.name", "cake"),
        ("menu.count", "2"),
        ("menu.name", "juice"),
        ("menu.count", "1"),
    ]
    assert flatten({"menu": [{"name": ["cake"]}]}) == [("menu.name", "cake")]
    assert flatten({}) == []


def test_normalize_sorts_keys_by_length_then_name() -> None:
    assert list(normalize_dict({"bb": "1", "c": "2", "a": "3"})) == ["a", "c", "bb"]


def test_normalize_single_value_equals_list_of_one() -> None:
    assert normalize_dict({"a": "x"}) == normalize_dict({"a": ["x"]}) == {"a": ["x"]}


def test_normalize_strips_and_drops_empty_values() -> None:
    data = {"total": " 3 ", "menu": {"nm": "cake", "cnt": 0}, "x": "", "y": [], "z": {}, "w": None}
    # 0, "", [], {} and None are falsy and dropped; a dict value is wrapped in a list
    assert normalize_dict(data) == {"menu": [{"nm": ["cake"]}], "total": ["3"]}


def test_normalize_list_items_and_numbers() -> None:
    # numbers become strings; inside a list of strings, bools, None and nested lists are dropped,
    # as are whitespace-only strings
    assert normalize_dict({"a": [" x ", 3, 0.5, True, None, ["y"], "  "]}) == {"a": ["x", "3", "0.5"]}
    assert normalize_dict({"n": 7}) == {"n": ["7"]}


def test_normalize_whitespace_scalar_quirk() -> None:
    # DONUT checks emptiness before stripping, so a whitespace-only scalar survives as "" (and is a pair)
    assert normalize_dict({"a": "  "}) == {"a": [""]}
    assert flatten(normalize_dict({"a": "  "})) == [("a", "")]


def test_normalize_list_of_dicts_drops_empty_dicts() -> None:
    assert normalize_dict({"items": [{"a": ""}, {"b": "1"}]}) == {"items": [{"b": ["1"]}]}
    assert normalize_dict({"items": [{"a": ""}]}) == {}


# --- tree construction and costs --------------------------------------------------------------------------


def _shape(node: Node) -> Any:
    return (node.label, [_shape(child) for child in node.children])


def test_construct_tree_like_donut() -> None:
    tree = construct_tree_from_dict(normalize_dict({"menu": [{"nm": "cake"}, {"nm": "tea"}], "t": "3"}))
    assert _shape(tree) == (
        "<root>",
        [
            ("t", [("<leaf>3", [])]),
            (
                "menu",
                [("<subtree>", [("nm", [("<leaf>cake", [])])]), ("<subtree>", [("nm", [("<leaf>tea", [])])])],
            ),
        ],
    )


def test_costs() -> None:
    assert levenshtein("juice", "juce") == 1
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert insert_remove_cost(Node("<leaf>cake")) == 4
    assert insert_remove_cost(Node("menu")) == 1
    assert update_cost(Node("<leaf>3"), Node("<leaf>4")) == 1
    assert update_cost(Node("menu"), Node("<leaf>ab")) == 3  # 1 + len("ab")
    assert update_cost(Node("<leaf>abc"), Node("menu")) == 4
    assert update_cost(Node("menu"), Node("menu")) == 0
    assert update_cost(Node("menu"), Node("total")) == 1


# --- field F1 ---------------------------------------------------------------------------------------------


def test_f1_nested_list_of_dicts() -> None:
    # gt pairs: menu.cnt 2, menu.name cake, menu.cnt 1, menu.name juice, total 3
    # pred differs in juice→juce and 3→4: tp=3, fp=2, fn=2 → 3 / (3 + 4/2) = 0.6
    assert field_f1([RECEIPT_PRED], [RECEIPT_GT]) == pytest.approx(0.6)


def test_f1_list_of_strings() -> None:
    # gt {a, bb, ccc}, pred {bb, a, x}: tp=2, fp=1 (x), fn=1 (ccc) → 2 / (2 + 2/2) = 2/3
    assert field_f1([{"items": ["bb", "a", "x"]}], [{"items": ["a", "bb", "ccc"]}]) == pytest.approx(2 / 3)


def test_f1_missing_and_extra_keys() -> None:
    # tp=1 (a), fp=1 (c), fn=1 (b) → 1 / (1 + 2/2) = 0.5
    assert field_f1([{"a": "x", "c": "z"}], [{"a": "x", "b": "y"}]) == pytest.approx(0.5)


def test_f1_counts_duplicates_as_multiset() -> None:
    # gt has x twice, pred three times: tp=2, fp=1, fn=0 → 2 / (2 + 1/2) = 0.8
    assert field_f1([{"a": ["x", "x", "x"]}], [{"a": ["x", "x"]}]) == pytest.approx(0.8)


def test_f1_is_micro_averaged() -> None:
    # doc 1: 3 pairs all right; doc 2: 1 pair wrong (fp=1, fn=1)
    # micro: tp=3, fp+fn=2 → 3 / (3 + 1) = 0.75 (a per-document mean would give 0.5)
    preds = [{"a": "1", "b": "2", "c": "3"}, {"a": "9"}]
    answers = [{"a": "1", "b": "2", "c": "3"}, {"a": "8"}]
    assert field_f1(preds, answers) == pytest.approx(0.75)


def test_f1_empty_prediction_and_empty_ground_truth() -> None:
    assert field_f1([{}], [{"a": "x"}]) == 0.0  # tp=0, fn=1 → 0 / (0 + 1/2)
    assert field_f1([{"a": "x"}], [{}]) == 0.0  # tp=0, fp=1 → 0 / (0 + 1/2)
    assert field_f1([{}], [{}]) == 0.0  # nothing on either side: DONUT divides by zero; defined as 0.0
    assert field_f1([], []) == 0.0


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="pair up"):
        field_f1([{"a": "x"}], [])
    with pytest.raises(ValueError):
        evaluate([], [{"a": "x"}])


# --- tree-edit-distance accuracy --------------------------------------------------------------------------


def test_ted_nested_list_of_dicts() -> None:
    # same shape, two leaf updates: juice→juce (1) + 3→4 (1) = 2
    # TED(<root>, gt) = menu 1 + 2 subtrees + 4 keys (cnt, name ×2) + leaves 2,cake,1,juice (1+4+1+5)
    #                 + total 1 + leaf 3 (1) = 20 → 1 - 2/20 = 0.9
    assert ted_accuracy(RECEIPT_PRED, RECEIPT_GT) == pytest.approx(0.9)


def test_ted_list_of_strings_is_ordered() -> None:
    # pred leaves (bb, a, x) vs gt (a, bb, ccc): insert a (1), keep bb (0), delete a (1), x→ccc (3) = 5
    # TED(<root>, gt) = items 1 + a 1 + bb 2 + ccc 3 = 7 → 1 - 5/7 = 2/7
    assert ted_accuracy({"items": ["bb", "a", "x"]}, {"items": ["a", "bb", "ccc"]}) == pytest.approx(2 / 7)


def test_ted_missing_and_extra_keys() -> None:
    # c→b (1) + zz→yy (2) = 3; TED(<root>, gt) = a 1 + x 1 + b 1 + yy 2 = 5 → 1 - 3/5 = 0.4
    assert ted_accuracy({"a": "x", "c": "zz"}, {"a": "x", "b": "yy"}) == pytest.approx(0.4)


def test_ted_normaliser_is_insert_cost_of_ground_truth() -> None:
    gt_tree = construct_tree_from_dict(normalize_dict(RECEIPT_GT))
    assert tree_edit_distance(construct_tree_from_dict({}), gt_tree) == 20.0


def test_ted_is_clipped_at_zero() -> None:
    # pred is far bigger than gt: TED > TED(<root>, gt) = 2, so 1 - TED/2 < 0 → 0
    assert ted_accuracy({"zzzzzz": "qqqqqqqqqq", "y": "long value"}, {"a": "x"}) == 0.0


def test_ted_empty_prediction_and_empty_ground_truth() -> None:
    assert ted_accuracy({}, {"a": "xy"}) == 0.0  # TED = TED(<root>, gt) = 3 → 1 - 3/3
    assert ted_accuracy({"a": "x"}, {}) == 0.0  # DONUT: 1 - 2/0 = -inf → max(0, ·) = 0
    assert ted_accuracy({}, {}) == 0.0  # DONUT: 1 - 0/0 = nan → max(0, nan) = 0
    assert corpus_ted_accuracy([], []) == 0.0


def test_corpus_ted_is_mean_per_document() -> None:
    # (0.9 + 0.4 + 1.0) / 3
    preds = [RECEIPT_PRED, {"a": "x", "c": "zz"}, {"k": "v"}]
    answers = [RECEIPT_GT, {"a": "x", "b": "yy"}, {"k": "v"}]
    assert corpus_ted_accuracy(preds, answers) == pytest.approx((0.9 + 0.4 + 1.0) / 3)


# --- per-field exact match and evaluate -------------------------------------------------------------------


def test_per_field_exact_match() -> None:
    # a: both docs right → 2/2; b: only doc 1 has it, wrong → 0/1; c: hallucinated in doc 2 → 0/1
    preds = [{"a": "1", "b": "3"}, {"a": "5", "c": "9"}]
    answers = [{"a": "1", "b": "2"}, {"a": "5"}]
    assert per_field_exact_match(preds, answers) == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_per_field_exact_match_lists() -> None:
    # lists compare as multisets: order is ignored, a missing or extra item is a miss
    preds = [{"items": ["y", "x"]}, {"items": ["x"]}, {"menu": [{"nm": "tea"}, {"nm": "cake"}]}]
    answers = [{"items": ["x", "y"]}, {"items": ["x", "y"]}, {"menu": [{"nm": "cake"}, {"nm": "tea"}]}]
    assert per_field_exact_match(preds, answers) == {"items": 0.5, "menu.nm": 1.0}
    assert per_field_exact_match([], []) == {}


def test_evaluate_and_to_dict() -> None:
    result = evaluate([RECEIPT_PRED, {"a": "x"}], [RECEIPT_GT, {"a": "x"}])
    assert isinstance(result, EvalResult)
    assert result.n == 2
    # F1: tp = 3 + 1 = 4, fp + fn = 4 → 4 / (4 + 2) = 2/3; nTED: (0.9 + 1.0) / 2 = 0.95
    assert result.f1 == pytest.approx(2 / 3)
    assert result.ted_accuracy == pytest.approx(0.95)
    assert result.field_exact_match == {"a": 1.0, "menu.cnt": 1.0, "menu.name": 0.0, "total": 0.0}
    assert result.to_dict() == {
        "f1": result.f1,
        "ted_accuracy": result.ted_accuracy,
        "field_exact_match": result.field_exact_match,
        "n": 2,
    }


def test_evaluate_no_documents() -> None:
    assert evaluate([], []).to_dict() == {"f1": 0.0, "ted_accuracy": 0.0, "field_exact_match": {}, "n": 0}


# --- properties -------------------------------------------------------------------------------------------

_keys = st.text(alphabet="abcdxyz_", min_size=1, max_size=4)
_leaves = st.text(alphabet="abc 12-", min_size=1, max_size=6).filter(lambda s: s.strip() != "")
_values = st.recursive(
    _leaves | st.lists(_leaves, min_size=1, max_size=3),
    lambda children: (
        st.dictionaries(_keys, children, min_size=1, max_size=3)
        | st.lists(st.dictionaries(_keys, children, min_size=1, max_size=3), min_size=1, max_size=2)
    ),
    max_leaves=8,
)
_documents = st.dictionaries(_keys, _values, min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(_documents)
def test_identical_documents_score_one(doc: dict[str, Any]) -> None:
    assert field_f1([doc], [doc]) == 1.0
    assert ted_accuracy(doc, doc) == 1.0
    assert all(v == 1.0 for v in per_field_exact_match([doc], [doc]).values())


@settings(max_examples=60, deadline=None)
@given(_documents, _documents)
def test_scores_bounded_and_f1_is_multiset_overlap(pred: dict[str, Any], answer: dict[str, Any]) -> None:
    f1, acc = field_f1([pred], [answer]), ted_accuracy(pred, answer)
    assert 0.0 <= f1 <= 1.0
    assert 0.0 <= acc <= 1.0
    # DONUT's remove-on-match count equals the size of the multiset intersection
    p, a = Counter(flatten(normalize_dict(pred))), Counter(flatten(normalize_dict(answer)))
    tp = sum((p & a).values())
    assert f1 == pytest.approx(2 * tp / (p.total() + a.total()))
