"""Where each character of a training target is printed: the signal behind the guided-reading losses.

A synthetic page knows where it printed every character. For a target sequence (DONUT's
``<s_key>value</s_key>...`` or a reading page's plain text), :func:`target_centres` gives one centre (x, y)
or None per character of the sequence; :func:`token_cells` turns those into the encoder cell each decoder
token should look at, for a given token split (``offset_mapping``) and encoder stride.

    >>> token_cells([(0, 1), (1, 2)], [(20.0, 5.0), None], stride=16, grid=(4, 4))
    [1, -1]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from donut_hole.documents.canvas import Point, TextBox
from donut_hole.model.tokens import json2token

__all__ = ["field_centres", "target_centres", "token_cells"]


def field_centres(boxes: Sequence[TextBox]) -> dict[str, list[Point | None]]:
    """Per printed field (dotted path), each character's centre; the joins of wrapped lines are None.

    Runs of one text call join with a space, as :func:`donut_hole.documents.synth.printed_fields` joins
    their text: ``"12"`` and ``"pallets"`` on two lines → centres for ``"12 pallets"``, the space None.
    """
    runs: dict[tuple[int, str], list[Point | None]] = {}
    for box in boxes:
        if box.field is None:
            continue
        centres = runs.setdefault((box.group, box.field), [])
        if centres:
            centres.append(None)
        centres.extend(box.centres or [None] * len(box.text))
    return {field: centres for (_, field), centres in runs.items()}


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, text) of every leaf in the order :func:`json2token` writes them (keys reversed)."""
    if isinstance(node, dict):
        if len(node) == 1 and "text_sequence" in node:
            yield path, str(node["text_sequence"])
            return
        for key in sorted(node, reverse=True):
            yield from _leaves(node[key], f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{path}.{i}" if path else str(i))
    else:
        yield path, str(node)


def target_centres(
    gt_parse: dict[str, Any], printed: dict[str, list[Point | None]]
) -> tuple[str, list[Point | None]]:
    """``json2token(gt_parse)`` and, per character, where it is printed (None: a tag, or not printed).

    ``printed`` maps a leaf's dotted path (``"items.0.sku"``; ``""`` for a ``text_sequence``) to its
    characters' centres, as :func:`field_centres` gives them. A leaf whose centres do not match its text
    in length is left unlocated rather than guessed.
    """
    text = json2token(gt_parse)
    centres: list[Point | None] = [None] * len(text)
    cursor = 0
    for path, value in _leaves(gt_parse):
        if not value:
            continue
        at = text.find(value, cursor) if path == "" else text.find(f">{value}<", cursor) + 1
        if at <= 0 and path != "":
            continue
        cursor = at + len(value)
        located = printed.get(path)
        if located is not None and len(located) == len(value):
            centres[at : at + len(value)] = located
    return text, centres


def cell_grid(image_size: tuple[int, int], *, stride: int) -> tuple[int, int]:
    """(rows, cols) of encoder cells of ``stride`` pixels over an image of ``image_size`` (H, W); a
    partial cell at the edge counts (the encoder pads to whole patches).

    >>> cell_grid((448, 448), stride=16), cell_grid((450, 300), stride=32)
    ((28, 28), (15, 10))
    """
    return -(-image_size[0] // stride), -(-image_size[1] // stride)


def token_cells(
    offsets: Sequence[tuple[int, int]],
    centres: Sequence[Point | None],
    *,
    stride: int,
    grid: tuple[int, int],
) -> list[int]:
    """The encoder cell (row-major index in a ``grid`` of (rows, cols)) each token's characters sit in.

    A token's point is the mean centre of its located characters; a token with none (tags, the task
    token, ``</s>``) gets -1. A space (``▁``) between two located characters is placed between them.
    """
    rows, cols = grid
    out: list[int] = []
    for start, end in offsets:
        points = [c for c in centres[start:end] if c is not None]
        if not points and end - start == 1 and 0 < start < len(centres) - 1:
            before, after = centres[start - 1], centres[start + 1]
            if before is not None and after is not None and abs(before[1] - after[1]) < stride:
                points = [before, after]  # a space between two words of one line
        if not points:
            out.append(-1)
            continue
        x = sum(p[0] for p in points) / len(points)
        y = sum(p[1] for p in points) / len(points)
        row = min(rows - 1, max(0, int(y // stride)))
        col = min(cols - 1, max(0, int(x // stride)))
        out.append(row * cols + col)
    return out
