r"""Reading pages: printed text whose target is the text itself, in reading order (DONUT's pre-task).

DONUT learns to read before it learns fields: its SynthDoG pages carry ``{"text_sequence": "..."}`` and the
decoder writes every printed word, top to bottom, left to right. These pages do the same for logistics
print: words shaped like the values on labels and forms (codes, numbers, names, dates), in the document
fonts, on scanned-looking paper. A :class:`ReadingLevel` sets how hard a page is, from a few large lines
(``EASY``) to many small ones like a bill of lading (``DOCUMENT``).

Every character's centre on the final (tilted) image is known, so training may tell the decoder where each
character it writes is printed (see :mod:`donut_hole.documents.locations`)::

    >>> page = reading_page(random.Random(0), size=(448, 448), level=LEVELS["easy"])  # doctest: +SKIP
    >>> page.text, page.centres[0]                                                    # doctest: +SKIP
    ('K7-204 Mill Drive', (61.5, 40.2))
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from PIL import Image, ImageDraw

from donut_hole.documents.canvas import FACES, Point, font_file, scan_points

__all__ = ["LEVELS", "ReadingLevel", "ReadingPage", "reading_page", "word"]

WORDS = (
    "Street", "Road", "Drive", "Lane", "Dock", "Quay", "Pallet", "Pallets", "Cartons", "Boxes", "Drums",
    "Crates", "pcs", "ea", "kg", "LBS", "Ltd", "GmbH", "Inc.", "Supply", "Foods", "Metals", "Paper",
    "Harbor", "Summit", "Berlin", "Leeds", "Lyon", "Denver", "Toronto", "Madrid", "Ground", "Express",
    "Priority", "Standard", "Freight", "Prepaid", "Collect", "Order", "Invoice", "Ref", "Total", "Net",
)  # fmt: skip


def word(rng: random.Random) -> str:
    """One word shaped like logistics print: a code, a number, a date, a name or a common word.

    ``word(random.Random(1))`` → ``'Crates'``; codes mix capitals and digits (``'WO-6223-B'``).
    """
    roll, n = rng.random(), rng.randint(2, 9)
    if roll < 0.25:  # codes: tracking numbers, SKUs, postcodes
        body = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))
        return body if rng.random() < 0.6 else f"{body[:3]}-{body[3:] or rng.choice(string.digits)}"
    if roll < 0.45:  # numbers, weights, dates
        digits = "".join(rng.choice(string.digits) for _ in range(n))
        return rng.choice((digits, f"{digits[:2]}.{digits[2:4] or '0'}", f"#{digits}", f"{digits[:4]}/{n}"))
    if roll < 0.7:  # names and places: capitalised random letters (no language prior to lean on)
        first = rng.choice(string.ascii_uppercase)
        rest = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        return first + rest if rng.random() < 0.75 else (first + rest).upper()
    if roll < 0.85:
        return rng.choice(WORDS)
    return "".join(rng.choice(string.ascii_letters + string.digits + "-/.,:#") for _ in range(n))


@dataclass(frozen=True)
class ReadingLevel:
    """How hard a reading page is: line count, print size (pixels) and words per line."""

    lines: tuple[int, int]
    px: tuple[int, int]
    words: tuple[int, int]
    line_gap: tuple[float, float] = (1.15, 1.8)


LEVELS: dict[str, ReadingLevel] = {
    "easy": ReadingLevel(lines=(1, 3), px=(18, 28), words=(1, 3)),
    "medium": ReadingLevel(lines=(2, 8), px=(12, 22), words=(1, 5)),
    "document": ReadingLevel(lines=(4, 12), px=(9, 16), words=(1, 5), line_gap=(1.1, 1.6)),
}
"""The named levels ``donut-hole synth --kind reading`` and training curricula use."""


@dataclass(frozen=True)
class ReadingPage:
    """A scanned reading page: the image, its text in reading order and each character's centre.

    ``centres[i]`` is where ``text[i]`` is printed on ``image`` (x, y in pixels), None for the space that
    joins two lines (it is printed nowhere).
    """

    image: Image.Image
    text: str
    centres: list[Point | None]


def reading_page(rng: random.Random, *, size: tuple[int, int], level: ReadingLevel) -> ReadingPage:
    """Render one page of ``size`` (width, height) at ``level``; the same ``rng`` state, the same page."""
    width, height = size
    shade = rng.randint(232, 255)
    paper = (shade, shade, shade - rng.randint(0, 10))
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    face = rng.choice(FACES)
    margin = max(8, round(0.036 * max(size)))  # as the document layouts: a 2° tilt cuts nothing off
    y = margin + rng.randint(0, max(0, height // 8))
    text: list[str] = []
    centres: list[Point | None] = []
    for _ in range(rng.randint(*level.lines)):
        px = round(rng.randint(*level.px) * min(1.0, min(size) / 448) ** 0.5)
        font = font_file(face.bold if rng.random() < 0.3 else face.regular, max(px, 9))
        ascent, descent = font.getmetrics()
        if y + ascent + descent > height - margin:
            break
        x = margin + rng.randint(0, max(0, width // 3))
        line = ""
        for _ in range(rng.randint(*level.words)):
            candidate = f"{line} {word(rng)}".strip()
            if font.getlength(candidate) > width - margin - x:
                break
            line = candidate
        if not line:  # the first word was too long for what is left of the line
            continue
        ink = rng.randint(0, 60)
        draw.text((x, y), line, font=font, fill=(ink, ink, ink + rng.randint(0, 20)), anchor="la")
        if text:
            text.append(" ")
            centres.append(None)
        middle = y + (ascent + descent) / 2
        for i in range(len(line)):
            left, right = font.getlength(line[:i]), font.getlength(line[: i + 1])
            centres.append((x + (left + right) / 2, middle))
        text.append(line)
        y += round((ascent + descent) * rng.uniform(*level.line_gap))
    if not text:
        raise ValueError(f"a {width}x{height} page holds no line of this level's print: use a larger page")
    scanned, moved = scan_points(image, rng, paper=paper, points=[c for c in centres if c is not None])
    it = iter(moved)
    return ReadingPage(
        image=scanned, text="".join(text), centres=[None if c is None else next(it) for c in centres]
    )
