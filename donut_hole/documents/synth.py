r"""Seeded synthetic scans of logistics documents, written in DONUT's dataset format.

``generate("shipping_label", n=1000, out=Path("data/train"), seed=0)`` writes ``000000.jpg`` ... and
``metadata.jsonl``, one line per image::

    {"file_name": "000000.jpg", "ground_truth": "{\"gt_parse\": {\"document_type\": \"delivery_note\", ...}}"}

Ground truth is exactly what is printed: every value in ``gt_parse`` is drawn in full (shrunk or wrapped to
fit, never clipped) and no other value is drawn; captions ("SHIP TO", "Qty") and barcodes of printed numbers
are the only other marks. Sample ``i`` depends only on ``(seed, kind, i)``, so the same seed gives
byte-identical files, and a longer run starts with the same samples as a shorter one.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from PIL import Image

from donut_hole.documents.canvas import FACES, Canvas, LayoutError, Point, TextBox, scan, scan_points
from donut_hole.documents.forms import bill_of_lading, delivery_note
from donut_hole.documents.label import shipping_label
from donut_hole.documents.locations import field_centres, target_centres
from donut_hole.documents.reading import LEVELS, reading_page
from donut_hole.documents.schemas import DOCUMENT_TYPES, validate_document
from donut_hole.documents.values import sample_document
from donut_hole.progress import track

__all__ = [
    "DEFAULT_SIZES",
    "SOURCES",
    "Located",
    "check_source",
    "generate",
    "jpeg_round_trip",
    "printed_fields",
    "render",
    "render_layout",
    "render_sample",
    "sample_document",
    "sample_layout",
    "sample_scan",
]

DEFAULT_SIZES: dict[str, tuple[int, int]] = {
    "shipping_label": (480, 640),
    "bill_of_lading": (640, 480),
    "delivery_note": (640, 480),
}
"""Default (width, height) per kind: labels are portrait, the A4-like forms landscape (a scanned top half)."""

LAYOUTS: dict[str, Callable[[Canvas, dict[str, Any], random.Random, float], None]] = {
    "shipping_label": shipping_label,
    "bill_of_lading": bill_of_lading,
    "delivery_note": delivery_note,
}
"""``layout(canvas, gt, rng, scale)`` per kind: draws ``gt`` on a clean canvas, sizes times ``scale``."""

SOURCES = (*sorted(DOCUMENT_TYPES), *(f"reading/{level}" for level in LEVELS))
"""What synth renders: the document kinds, and reading pages per level (text in reading order)."""

PROGRESS_FROM = 200
"""``generate`` shows a progress bar from this many images on (when ``progress`` is true)."""


def render_layout(
    kind: str, doc: dict[str, Any], rng: random.Random, image_size: tuple[int, int] | None = None
) -> Canvas:
    """Lay out ``doc`` on a clean page; the canvas's ``boxes`` record where each printed value went.

    The layout starts at full scale and shrinks by steps until everything fits; ``rng`` draws the
    same choices on every attempt.
    """
    gt = validate_document(kind, doc).gt_parse()
    width, height = image_size or DEFAULT_SIZES[kind]
    base_w, base_h = DEFAULT_SIZES[kind]
    state = rng.getstate()
    for shrink in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        rng.setstate(state)
        level, yellow = rng.randint(238, 255), rng.randint(0, 10)
        paper = (level, level, level - yellow)
        shade = rng.randint(0, 50)
        canvas = Canvas(
            size=(width, height),
            face=rng.choice(FACES),
            paper=paper,
            ink=(shade, shade, shade + rng.randint(0, 20)),
            margin=max(12, round(0.036 * max(width, height))),
        )
        scale = min(width / base_w, height / base_h) * shrink
        try:
            LAYOUTS[kind](canvas, gt, rng, scale)
        except LayoutError:
            continue
        return canvas
    raise LayoutError(f"{kind} does not fit on a {width}x{height} page even at half scale")


def render(
    kind: str, doc: dict[str, Any], rng: random.Random, image_size: tuple[int, int] | None = None
) -> Image.Image:
    """Render ``doc`` (a ``gt_parse`` of ``kind``) as a scanned RGB image of ``image_size`` (width, height).

    ``rng`` chooses fonts, captions, layout jitter and scanner faults; the same state gives the same image.
    """
    canvas = render_layout(kind, doc, rng, image_size)
    return scan(canvas.image, rng, paper=canvas.paper)


def printed_fields(boxes: list[TextBox]) -> list[tuple[str, str]]:
    """(field, text) for every printed value, joining the runs of one text call (wrapped lines included).

    ``[TextBox("12", "items.0.quantity", ..., 3), TextBox("pallets", "items.0.quantity", ..., 3)]`` →
    ``[("items.0.quantity", "12 pallets")]``.
    """
    joined: dict[tuple[int, str], list[str]] = {}
    for box in boxes:
        if box.field is not None:
            joined.setdefault((box.group, box.field), []).append(box.text)
    return [(name, " ".join(texts)) for (_, name), texts in joined.items()]


def sample_layout(
    kind: str, rng: random.Random, image_size: tuple[int, int] | None = None, *, tries: int = 20
) -> tuple[dict[str, Any], Canvas]:
    """A document's values and their clean page; values are drawn again (from ``rng``) while they do not fit.

    At the default sizes nearly every first draw fits; small or oddly shaped pages redraw more often, which
    favours shorter documents there. Raises :class:`LayoutError` after ``tries`` draws.
    """
    for _ in range(tries):
        gt = sample_document(kind, rng)
        try:
            return gt, render_layout(kind, gt, rng, image_size)
        except LayoutError:
            continue
    raise LayoutError(f"no {kind} fitted on a {image_size} page in {tries} draws; use a larger image_size")


def sample_scan(
    kind: str, rng: random.Random, image_size: tuple[int, int] | None = None
) -> tuple[dict[str, Any], Image.Image]:
    """A document's ``gt_parse`` and its scanned image, as :func:`generate` writes them."""
    gt, canvas = sample_layout(kind, rng, image_size)
    return gt, scan(canvas.image, rng, paper=canvas.paper)


def check_source(source: str) -> str:
    """``source`` if synth can render it, else a ``ValueError`` naming the choices."""
    if source not in SOURCES:
        raise ValueError(f"unknown document type {source!r}; choose from {', '.join(SOURCES)}")
    return source


@dataclass(frozen=True)
class Located:
    """A rendered sample before its JPEG step: the scan, its parse, where each character of
    ``json2token(gt_parse)`` is printed (None: tags, unprinted), every printed glyph (captions too) with
    its centre, and the JPEG quality drawn for it."""

    image: Image.Image
    gt_parse: dict[str, Any]
    target: str
    centres: list[Point | None]
    glyphs: list[tuple[str, Point]]
    quality: int
    field_boxes: dict[str, tuple[float, float, float, float]] = dataclass_field(default_factory=dict)
    """Per printed field (dotted path, list positions included: ``items.0.sku``), the box around its
    print on the scanned page (left, top, right, bottom; the tilt's corners included)."""


def render_sample(source: str, *, seed: int, index: int, size: tuple[int, int] | None = None) -> Located:
    """Sample ``index`` of ``source`` (a document kind or ``reading/<level>``) for ``seed``, at ``size``
    (width, height; default per kind, 448x448 for reading pages). It depends only on these, so
    :func:`generate` and a training run rendering on the fly (then :func:`jpeg_round_trip`) see the
    same pixels."""
    rng = random.Random(f"{seed}/{source}/{index}")
    if source.startswith("reading/"):
        page = reading_page(rng, size=size or (448, 448), level=LEVELS[source.split("/", 1)[1]])
        glyphs = [
            (ch, c) for ch, c in zip(page.text, page.centres, strict=True) if c is not None and ch != " "
        ]
        gt = {"text_sequence": page.text}
        return Located(page.image, gt, page.text, list(page.centres), glyphs, rng.randint(40, 95))
    gt, canvas = sample_layout(source, rng, size)
    flat = [(ch, c) for box in canvas.boxes for ch, c in zip(box.text, box.centres, strict=False)]
    corners = [
        (float(x), float(y)) for box in canvas.boxes if box.field for x in box.box[::2] for y in box.box[1::2]
    ]
    image, moved_all = scan_points(
        canvas.image, rng, paper=canvas.paper, points=[c for _, c in flat] + corners
    )
    moved, moved_corners = moved_all[: len(flat)], moved_all[len(flat) :]
    where = dict(zip([c for _, c in flat], moved, strict=True))  # clean page → scanned page
    boxes: dict[str, tuple[float, float, float, float]] = {}
    located = [box for box in canvas.boxes if box.field]
    for i, box in enumerate(located):
        quad = moved_corners[4 * i : 4 * i + 4]
        xs, ys = [p[0] for p in quad], [p[1] for p in quad]
        assert box.field is not None
        old = boxes.get(box.field)
        new = (min(xs), min(ys), max(xs), max(ys))
        boxes[box.field] = (
            new
            if old is None
            else (min(old[0], new[0]), min(old[1], new[1]), max(old[2], new[2]), max(old[3], new[3]))
        )
    printed = {
        field: [None if c is None else where.get(c) for c in centres]
        for field, centres in field_centres(canvas.boxes).items()
    }
    target, centres = target_centres(gt, printed)
    glyphs = [(ch, m) for (ch, _), m in zip(flat, moved, strict=True) if ch != " "]
    return Located(image, gt, target, centres, glyphs, rng.randint(40, 95), boxes)


def jpeg_round_trip(sample: Located) -> Image.Image:
    """The sample's image as :func:`generate` stores it and a reader decodes it (JPEG at its quality)."""
    buffer = io.BytesIO()
    sample.image.save(buffer, format="JPEG", quality=sample.quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _write_scan(job: tuple[str, int, int, tuple[int, int] | None, str]) -> str:
    """Render and save sample ``i``; return its ``metadata.jsonl`` line (its RNG: seed, kind and i)."""
    kind, seed, i, image_size, out = job
    sample = render_sample(kind, seed=seed, index=i, size=image_size)
    name = f"{i:06d}.jpg"
    sample.image.save(Path(out) / name, format="JPEG", quality=sample.quality)
    return json.dumps({"file_name": name, "ground_truth": json.dumps({"gt_parse": sample.gt_parse})})


def generate(
    kind: str | Sequence[str],
    *,
    n: int,
    out: Path,
    seed: int,
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write ``n`` synthetic scans of ``kind`` and their ``metadata.jsonl`` to ``out``; return ``out``.

    ``kind`` may be a list: sample ``i`` is then of ``kind[i % len(kind)]`` (a mixed dataset). A
    ``reading/<level>`` kind writes reading pages, whose ground truth is ``{"text_sequence": text}``.

    Images are JPEG (quality 40-95, drawn per sample) of ``image_size`` (width, height) or
    :data:`DEFAULT_SIZES`; a progress bar shows from :data:`PROGRESS_FROM` images on when ``progress``.
    Every sample has its own RNG, so ``workers`` processes (0: one per core) write the same bytes as one.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds:
        raise ValueError("at least one document kind is needed")
    for name in kinds:
        check_source(name)
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(kinds[i % len(kinds)], seed, i, image_size, str(out)) for i in range(n)]
    show = progress and n >= PROGRESS_FROM
    description = f"synth {', '.join(kinds)}"
    processes = min(workers or os.cpu_count() or 1, max(1, n // 16))  # a process per 16 scans at most
    if processes <= 1:
        lines = [_write_scan(job) for job in track(jobs, description, total=n, enabled=show)]
    else:
        spawn = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
        with ProcessPoolExecutor(processes, mp_context=spawn) as pool:
            done = pool.map(_write_scan, jobs, chunksize=16)
            lines = list(track(done, description, total=n, enabled=show))
    (out / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out
