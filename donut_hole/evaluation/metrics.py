"""Field F1 and tree-edit-distance accuracy, giving the same numbers as DONUT's ``JSONParseEvaluator``.

Reference: clovaai/donut, ``donut/util.py`` (``JSONParseEvaluator``). The definitions are reproduced here,
including DONUT's quirks, so that numbers in our reports can be compared with published DONUT numbers:

* ``normalize_dict`` sorts keys by ``(len(key), key)``, turns every leaf into a list of stripped strings,
  drops falsy values (``""``, ``0``, ``None``, ``[]``, ``{}``) and, inside lists of strings, drops items
  that are not ``str``/``int``/``float`` (so ``bool`` and nested lists vanish). A whitespace-only *scalar*
  becomes ``[""]`` and is kept (DONUT strips after its emptiness check); inside a list it is dropped.
* ``field_f1`` is micro-averaged over all documents: a predicted pair counts as a true positive when an
  equal pair is still in the answer list (which it is then removed from), so duplicates count as a multiset.
* ``ted_accuracy`` is ``max(0, 1 - TED(pred, answer) / TED(<root>, answer))`` with DONUT's costs.

Empty ground truth: every score is 0.0 when there is nothing to find. That is DONUT's own number for nTED
accuracy (its ``TED / TED(<root>, {})`` is NaN or inf, and ``max(0, ·)`` turns both into 0), and we use the
same value where DONUT would raise ``ZeroDivisionError`` (F1 with no field on either side) and for zero
documents. So ``field_f1([x], [x]) == ted_accuracy(x, x) == 1.0`` holds for every ``x`` with at least one
non-empty value, and an empty validation set can never look perfect; ``EvalResult.n`` shows the count.
Lists of different lengths raise ``ValueError`` (DONUT silently truncates with ``zip``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zss

ROOT_LABEL = "<root>"
SUBTREE_LABEL = "<subtree>"
LEAF_MARK = "<leaf>"

Normalized = dict[str, Any] | list[Any]


def normalize_dict(data: Any) -> Normalized:
    """Put a parse into DONUT's canonical form (see the module docstring for the exact rules).

    Example:
        ``{"total": " 3 ", "menu": {"nm": "cake", "cnt": 0}, "x": ""}``
        → ``{"menu": [{"nm": ["cake"]}], "total": ["3"]}``
    """
    if not data:
        return {}
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key in sorted(data, key=lambda k: (len(k), k)):
            value = normalize_dict(data[key])
            if value:
                out[key] = value if isinstance(value, list) else [value]
        return out
    if isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            return [item for item in (normalize_dict(d) for d in data) if item]
        return [str(item).strip() for item in data if type(item) in (str, int, float) and str(item).strip()]
    return [str(data).strip()]


def flatten(data: Any) -> list[tuple[str, Any]]:
    """Flatten nested dicts/lists into ``(dotted key path, leaf)`` pairs, in document order.

    Example:
        ``{"menu": [{"name": ["cake"], "count": ["2"]}, {"name": ["juice"], "count": ["1"]}]}``
        → ``[("menu.name", "cake"), ("menu.count", "2"), ("menu.name", "juice"), ("menu.count", "1")]``
    """
    pairs: list[tuple[str, Any]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, f"{key}.{child_key}" if key else child_key)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        else:
            pairs.append((key, value))

    walk(data, "")
    return pairs


def _check_lengths(preds: Sequence[Any], answers: Sequence[Any]) -> None:
    if len(preds) != len(answers):
        raise ValueError(f"got {len(preds)} predictions for {len(answers)} answers; they must pair up")


def field_f1(preds: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> float:
    """Micro F1 over flattened, normalised ``(key path, value)`` pairs of all documents (DONUT's ``cal_f1``).

    ``F1 = tp / (tp + (fp + fn) / 2)``, which equals ``2tp / (2tp + fp + fn)``.

    Example:
        pred ``{"a": "x", "c": "z"}``, answer ``{"a": "x", "b": "y"}``: tp=1 ("a"), fp=1 ("c"), fn=1 ("b")
        → ``1 / (1 + 2/2) = 0.5``.
    """
    _check_lengths(preds, answers)
    tp, fn_or_fp = 0, 0
    for pred, answer in zip(preds, answers, strict=True):
        remaining = flatten(normalize_dict(answer))
        for pair in flatten(normalize_dict(pred)):
            if pair in remaining:
                tp += 1
                remaining.remove(pair)
            else:
                fn_or_fp += 1
        fn_or_fp += len(remaining)
    if tp + fn_or_fp == 0:
        return 0.0  # no field on either side: DONUT divides by zero here (see the module docstring)
    return tp / (tp + fn_or_fp / 2)


def construct_tree_from_dict(data: Normalized, node_name: str = ROOT_LABEL) -> zss.Node:
    """Build DONUT's ordered tree from a *normalised* parse.

    Dict keys become nodes, a list of dicts becomes one ``<subtree>`` node per dict, and every string of a
    list of strings becomes a ``<leaf>{value}`` node.

    Example:
        ``{"menu": [{"nm": ["cake"]}, {"nm": ["tea"]}]}`` →
        ``<root>(menu(<subtree>(nm(<leaf>cake)), <subtree>(nm(<leaf>tea))))``
    """
    node = zss.Node(node_name)
    if isinstance(data, dict):
        for key, value in data.items():
            node.addkid(construct_tree_from_dict(value, key))
    elif isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            for item in data:
                node.addkid(construct_tree_from_dict(item, SUBTREE_LABEL))
        else:
            for item in data:
                node.addkid(zss.Node(f"{LEAF_MARK}{item}"))
    else:
        raise TypeError(f"expected a normalised dict or list under {node_name!r}, got {type(data).__name__}")
    return node


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute, each cost 1); ``("juice", "juce")`` → 1."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def insert_remove_cost(node: zss.Node) -> int:
    """DONUT's insert/remove cost: the label length for ``<leaf>`` nodes, else 1 (``<leaf>cake`` → 4)."""
    label: str = node.label
    return len(label.replace(LEAF_MARK, "")) if LEAF_MARK in label else 1


def update_cost(node1: zss.Node, node2: zss.Node) -> int:
    """DONUT's update cost.

    Two leaves: edit distance of their strings (``<leaf>3`` → ``<leaf>4``: 1). A leaf and a non-leaf:
    1 + the leaf's length (``menu`` → ``<leaf>ab``: 3). Two non-leaves: 0 if the labels agree, else 1.
    """
    label1, label2 = node1.label, node2.label
    leaf1, leaf2 = LEAF_MARK in label1, LEAF_MARK in label2
    if leaf1 and leaf2:
        return levenshtein(label1.replace(LEAF_MARK, ""), label2.replace(LEAF_MARK, ""))
    if leaf1 != leaf2:
        return 1 + len((label1 if leaf1 else label2).replace(LEAF_MARK, ""))
    return int(label1 != label2)


def tree_edit_distance(tree1: zss.Node, tree2: zss.Node) -> float:
    """Zhang–Shasha ordered tree edit distance with DONUT's costs."""
    return float(
        zss.distance(
            tree1,
            tree2,
            get_children=zss.Node.get_children,
            insert_cost=insert_remove_cost,
            remove_cost=insert_remove_cost,
            update_cost=update_cost,
        )
    )


def ted_accuracy(pred: dict[str, Any], answer: dict[str, Any]) -> float:
    """DONUT's nTED accuracy of one document: ``max(0, 1 - TED(pred, answer) / TED(<root>, answer))``.

    Example:
        pred ``{"a": "x", "c": "zz"}``, answer ``{"a": "x", "b": "yy"}``: TED = 1 (c→b) + 2 (zz→yy) = 3,
        TED(<root>, answer) = a + x + b + yy = 1 + 1 + 1 + 2 = 5 → ``1 - 3/5 = 0.4``.
    An empty answer scores 0.0, whatever the prediction (as in DONUT).
    """
    answer_tree = construct_tree_from_dict(normalize_dict(answer))
    distance = tree_edit_distance(construct_tree_from_dict(normalize_dict(pred)), answer_tree)
    normaliser = tree_edit_distance(construct_tree_from_dict(normalize_dict({})), answer_tree)
    if normaliser == 0:
        return 0.0  # empty answer: DONUT's NaN / -inf, clipped to 0 by its max(0, ·)
    return max(0.0, 1.0 - distance / normaliser)


def corpus_ted_accuracy(preds: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> float:
    """Mean per-document ``ted_accuracy`` (how DONUT reports nTED accuracy); 0.0 for no documents."""
    _check_lengths(preds, answers)
    if not answers:
        return 0.0
    return sum(ted_accuracy(p, a) for p, a in zip(preds, answers, strict=True)) / len(answers)


def _values_by_key(data: dict[str, Any]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for key, value in flatten(normalize_dict(data)):
        grouped[key].append(value)
    return {key: sorted(values) for key, values in grouped.items()}


def per_field_exact_match(
    preds: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Per flattened key path, the fraction of documents whose values for it equal the ground truth.

    Both sides are normalised and flattened as for ``field_f1``. In a document, all values under one key
    path are compared as a multiset (order ignored, duplicates counted): ``{"items": ["x", "y"]}`` matches
    ``{"items": ["y", "x"]}`` but not ``{"items": ["x"]}``; in a list of dicts, ``menu.name`` collects the
    names of all items. A document counts towards a key when the key is in its answer or its prediction
    (so a hallucinated field counts as a miss); documents with the key on neither side are left out.

    Example:
        preds ``[{"a": "1", "b": "3"}, {"a": "5", "c": "9"}]``, answers ``[{"a": "1", "b": "2"}, {"a": "5"}]``
        → ``{"a": 1.0, "b": 0.0, "c": 0.0}``
    """
    _check_lengths(preds, answers)
    seen: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    for pred, answer in zip(preds, answers, strict=True):
        pred_values, answer_values = _values_by_key(pred), _values_by_key(answer)
        for key in pred_values.keys() | answer_values.keys():
            seen[key] += 1
            matched[key] += pred_values.get(key) == answer_values.get(key)
    return {key: matched[key] / seen[key] for key in sorted(seen)}


@dataclass(frozen=True)
class EvalResult:
    """Scores of one set of predictions against its ground truth (``n`` documents)."""

    f1: float
    ted_accuracy: float
    field_exact_match: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"f1": ..., "ted_accuracy": ..., "field_exact_match": {...}, "n": ...}``."""
        return {
            "f1": self.f1,
            "ted_accuracy": self.ted_accuracy,
            "field_exact_match": dict(self.field_exact_match),
            "n": self.n,
        }


def evaluate(preds: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> EvalResult:
    """Field F1, mean nTED accuracy and per-field exact match of paired predictions and answers.

    Example:
        ``evaluate([{"a": "x"}], [{"a": "x"}])`` → ``EvalResult(f1=1.0, ted_accuracy=1.0,
        field_exact_match={"a": 1.0}, n=1)``
    """
    _check_lengths(preds, answers)
    return EvalResult(
        f1=field_f1(preds, answers),
        ted_accuracy=corpus_ted_accuracy(preds, answers),
        field_exact_match=per_field_exact_match(preds, answers),
        n=len(answers),
    )
