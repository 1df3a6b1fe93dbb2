"""Drawing primitives for synthetic scans: fitted text that records where each value went, Code128 bars,
and the scanner's faults (tilt, blur, noise).

Fonts are the DejaVu and STIX TrueType files matplotlib ships, so no system font is needed and a seed gives
the same pixels wherever the versions of Pillow, numpy and matplotlib are the same.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import barcode
import matplotlib
import numpy as np
from barcode.errors import BarcodeError
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "FACES",
    "Canvas",
    "Face",
    "LayoutError",
    "Part",
    "Point",
    "TextBox",
    "font_file",
    "scaled",
    "scan",
    "scan_points",
]

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

Part = tuple[str, str | None]
"""A run of text and the ``gt_parse`` field it prints (a dotted path, ``"items.0.sku"``); None: a caption."""

RGB = tuple[int, int, int]
Point = tuple[float, float]
"""(x, y) in pixels on a page."""


@dataclass(frozen=True)
class Face:
    """A typeface as a regular and a bold font file under :data:`FONT_DIR`."""

    name: str
    regular: str
    bold: str


FACES = (
    Face("sans", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    Face("serif", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
    Face("mono", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"),
    Face("times", "STIXGeneral.ttf", "STIXGeneralBol.ttf"),
)


def scaled(scale: float) -> Callable[[float], int]:
    """``px = scaled(0.5)``: ``px(13)`` → 6 (pixels, at least 1), to write layouts in default-page pixels."""
    return lambda value: max(1, round(value * scale))


class LayoutError(RuntimeError):
    """Text or a barcode does not fit where the layout put it (the renderer retries smaller)."""


@dataclass(frozen=True)
class TextBox:
    """Where one run of printed text went: ``group`` numbers the :meth:`Canvas.text` call that drew it."""

    text: str
    field: str | None
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive)
    group: int
    centres: tuple[Point, ...] = ()
    """Where each character of ``text`` is printed (its centre on the clean page), one per character."""


@lru_cache(maxsize=256)
def font_file(file: str, size: int) -> ImageFont.FreeTypeFont:
    """The TrueType font ``file`` (under :data:`FONT_DIR`) at ``size`` pixels, cached."""
    return ImageFont.truetype(str(FONT_DIR / file), size)


@dataclass
class Canvas:
    """A blank page that keeps every text run inside its margins and records a :class:`TextBox` per run."""

    size: tuple[int, int]
    face: Face
    paper: RGB = (255, 255, 255)
    ink: RGB = (0, 0, 0)
    margin: int = 16
    min_size: int = 9
    """No text is drawn smaller than this many pixels, so that small pages stay legible."""
    boxes: list[TextBox] = field(default_factory=list)
    groups: int = 0

    def __post_init__(self) -> None:
        self.image = Image.new("RGB", self.size, self.paper)
        self.draw = ImageDraw.Draw(self.image)

    @property
    def left(self) -> int:
        return self.margin

    @property
    def top(self) -> int:
        return self.margin

    @property
    def right(self) -> int:
        return self.size[0] - self.margin

    @property
    def bottom(self) -> int:
        return self.size[1] - self.margin

    def font(self, size: int, *, bold: bool = False, face: Face | None = None) -> ImageFont.FreeTypeFont:
        face = face or self.face
        return font_file(face.bold if bold else face.regular, max(size, 1))

    def line_height(self, size: int, *, bold: bool = False) -> int:
        ascent, descent = self.font(max(size, self.min_size), bold=bold).getmetrics()
        return round((ascent + descent) * 1.12)

    def fits(self, text: str, *, width: int, bold: bool = False) -> bool:
        """Whether ``text`` fits on one line of ``width`` pixels at :attr:`min_size` or more."""
        return self.font(self.min_size, bold=bold).getlength(text) <= width

    def text(
        self,
        x: int,
        y: int,
        parts: list[Part],
        *,
        size: int,
        width: int,
        bold: bool = False,
        align: str = "left",
        color: RGB | None = None,
        max_lines: int = 1,
        face: Face | None = None,
    ) -> int:
        """Print ``parts`` on one line in the column ``[x, x + width)`` from top ``y``; return the next y.

        The font (never below :attr:`min_size`) shrinks until the line fits, then the words wrap onto up
        to ``max_lines`` lines; raises :class:`LayoutError` when they still do not fit or leave the margins.
        """
        words = [(word, name) for text, name in parts for word in text.split(" ") if text]
        if not words:
            return y
        line = " ".join(word for word, _ in words)
        size_now = max(size, self.min_size)
        while size_now > self.min_size and self.font(size_now, bold=bold, face=face).getlength(line) > width:
            size_now -= 1
        font = self.font(size_now, bold=bold, face=face)
        lines = _wrap(words, font, width)
        if len(lines) > max_lines:
            raise LayoutError(f"{line!r} needs {len(lines)} lines of {width}px, {max_lines} allowed")
        ascent, descent = font.getmetrics()
        step = self.line_height(size_now, bold=bold)
        group, self.groups = self.groups, self.groups + 1
        for words_on_line in lines:
            self._line(x, y, words_on_line, font, width=width, align=align, color=color, group=group)
            self._check((x, y, x + width, y + ascent + descent))
            y += step
        return y

    def _line(
        self,
        x: int,
        y: int,
        words: list[Part],
        font: ImageFont.FreeTypeFont,
        *,
        width: int,
        align: str,
        color: RGB | None,
        group: int,
    ) -> None:
        line = " ".join(word for word, _ in words)
        length = font.getlength(line)
        x0 = x + {"left": 0.0, "center": (width - length) / 2, "right": width - length}[align]
        self.draw.text((x0, y), line, font=font, fill=color or self.ink, anchor="la")
        ascent, descent = font.getmetrics()
        runs: list[tuple[str, str | None]] = []
        for word, name in words:
            if runs and runs[-1][1] == name:
                runs[-1] = (runs[-1][0] + " " + word, name)
            else:
                runs.append((word, name))
        prefix = ""
        for text, name in runs:
            start = x0 + font.getlength(prefix)
            end = x0 + font.getlength(prefix + text)
            box = (int(start), y, int(np.ceil(end)), y + ascent + descent)
            middle = y + (ascent + descent) / 2
            edges = [x0 + font.getlength(prefix + text[:i]) for i in range(len(text) + 1)]
            centres = tuple(((a + b) / 2, middle) for a, b in itertools.pairwise(edges))
            self.boxes.append(TextBox(text=text, field=name, box=box, group=group, centres=centres))
            prefix += text + " "

    def _check(self, box: tuple[int, int, int, int]) -> None:
        left, top, right, bottom = box
        if left < self.left or top < self.top or right > self.right or bottom > self.bottom:
            raise LayoutError(
                f"box {box} leaves the page area {(self.left, self.top, self.right, self.bottom)}"
            )

    def rule(self, y: int, *, x0: int | None = None, x1: int | None = None, width: int = 2) -> None:
        """A horizontal rule across the page (or from ``x0`` to ``x1``)."""
        left, right = self.left if x0 is None else x0, self.right if x1 is None else x1
        self.draw.line([(left, y), (right, y)], fill=self.ink, width=width)

    def frame(self, box: tuple[int, int, int, int], *, width: int = 1, fill: RGB | None = None) -> None:
        self.draw.rectangle(box, outline=self.ink, width=width, fill=fill)

    def barcode(self, x: int, y: int, *, data: str, width: int, height: int, center: bool = True) -> int:
        """Draw ``data`` as Code128 bars in ``[x, x + width)``, as wide as whole modules allow; return the
        bottom y. Bars are decoration (the number is printed as text too), so data that Code128 cannot
        encode or that needs more than ``width`` pixels at one pixel a module draws nothing."""
        try:
            modules = barcode.Code128(data).build()[0]
        except BarcodeError:
            return y
        quiet = 10  # modules of white each side, as Code128 asks
        module = min(width // (len(modules) + 2 * quiet), 3)
        if module < 1:
            return y
        used = len(modules) * module
        x0 = x + (width - used) // 2 if center else x + quiet * module
        self._check((x0, y, x0 + used, y + height))
        for i, bit in enumerate(modules):
            if bit == "1":
                self.draw.rectangle(
                    (x0 + i * module, y, x0 + (i + 1) * module - 1, y + height - 1), fill=self.ink
                )
        return y + height


def _wrap(words: list[Part], font: ImageFont.FreeTypeFont, width: int) -> list[list[Part]]:
    """Greedy word wrap; a single word wider than ``width`` raises :class:`LayoutError`."""
    lines: list[list[Part]] = [[]]
    for word, name in words:
        candidate = " ".join(w for w, _ in [*lines[-1], (word, name)])
        if font.getlength(candidate) <= width:
            lines[-1].append((word, name))
        elif not lines[-1] or font.getlength(word) > width:
            raise LayoutError(f"word {word!r} is wider than {width}px")
        else:
            lines.append([(word, name)])
    return lines


def scan(image: Image.Image, rng: random.Random, *, paper: RGB) -> Image.Image:
    """Make a clean page look scanned: a tilt of up to 2°, sometimes blur, Gaussian noise, a light shift.

    Margins of at least 3.5 % of the longer side keep a 2° tilt from cutting text off.
    """
    return scan_points(image, rng, paper=paper, points=())[0]


def scan_points(
    image: Image.Image, rng: random.Random, *, paper: RGB, points: Sequence[Point]
) -> tuple[Image.Image, list[Point]]:
    """:func:`scan`, and where ``points`` of the clean page land on the scanned one (the tilt moves them).

    The same ``rng`` state gives the same image as :func:`scan`, whatever the points.
    """
    angle = rng.uniform(-2.0, 2.0)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=paper)
    if rng.random() < 0.6:  # less blur on small pages, whose print is small
        radius = rng.uniform(0.3, 1.1) * min(1.0, min(image.size) / 480)
        image = image.filter(ImageFilter.GaussianBlur(radius=radius))
    noise = np.random.default_rng(rng.getrandbits(64))
    pixels = np.asarray(image, dtype=np.float32)
    contrast, shift = rng.uniform(0.85, 1.0), rng.uniform(-12.0, 8.0)
    pixels = (pixels - 128.0) * contrast + 128.0 + shift
    pixels += noise.normal(0.0, rng.uniform(2.0, 9.0), size=pixels.shape[:2])[..., None]
    scanned = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return scanned, rotate_points(points, angle=angle, size=image.size)


def rotate_points(points: Sequence[Point], *, angle: float, size: tuple[int, int]) -> list[Point]:
    """Where ``points`` go when a page of ``size`` is turned ``angle`` degrees anticlockwise about its
    centre, as ``Image.rotate`` turns it: ``rotate_points([(150, 50)], angle=90, size=(100, 100))`` →
    ``[(50.0, -50.0)]`` (right of centre goes up)."""
    turn = math.radians(angle)
    cos, sin = math.cos(turn), math.sin(turn)
    cx, cy = size[0] / 2, size[1] / 2
    return [(cx + (x - cx) * cos + (y - cy) * sin, cy - (x - cx) * sin + (y - cy) * cos) for x, y in points]
