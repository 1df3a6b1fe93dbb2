"""Shipping-label layout: carrier header, sender, recipient, tracking barcode and the small details.

Sizes are pixels on the default 480x640 label, multiplied by ``scale``. A portrait page stacks the blocks;
a landscape page puts the addresses left and the barcode and details right. Every value goes through
:meth:`Canvas.text` with its field path; captions are the only other text.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from donut_hole.documents.canvas import FACES, Canvas, Part, scaled

__all__ = ["shipping_label"]

MONO = FACES[2]
FROM_CAPTIONS = ("FROM", "SHIP FROM", "Sender", "From:", "SENDER", "Return address")
TO_CAPTIONS = ("SHIP TO", "Deliver to", "TO:", "Recipient", "SHIP TO:", "DELIVER TO")
TRACKING_CAPTIONS = ("TRACKING #", "Tracking No.", "TRACKING NUMBER", "Consignment no.", "Track / Trace")
DETAIL_CAPTIONS = {
    "weight": ("Weight:", "WT:", "Wgt.", "Weight"),
    "date": ("Date:", "Ship date:", "DATE", "Shipped:"),
    "reference": ("Ref:", "Reference:", "REF #", "Your ref."),
}

Px = Callable[[float], int]


def address(
    c: Canvas,
    x: int,
    y: int,
    *,
    width: int,
    block: dict[str, str],
    prefix: str,
    size: int,
    bold: bool,
    rng: random.Random,
) -> int:
    """Name, street, city and postcode on one line (either order), country: the lines of an address."""
    y = c.text(x, y, [(block["name"], f"{prefix}.name")], size=size, width=width, bold=bold, max_lines=2)
    if "street" in block:
        y = c.text(
            x, y, [(block["street"], f"{prefix}.street")], size=size, width=width, bold=bold, max_lines=2
        )
    town: list[Part] = [(block[key], f"{prefix}.{key}") for key in ("city", "postcode") if key in block]
    if rng.random() < 0.4:
        town.reverse()
    y = c.text(x, y, town, size=size, width=width, bold=bold, max_lines=2)
    if "country" in block:
        y = c.text(x, y, [(block["country"], f"{prefix}.country")], size=size, width=width, bold=bold)
    return y


def _header(c: Canvas, gt: dict[str, Any], rng: random.Random, px: Px, *, y: int) -> int:
    """Carrier and service across the top: white on a black band, or the service in a box."""
    x, width = c.left, c.right - c.left
    head = int(width * 0.6)
    carrier, service = gt.get("carrier"), gt.get("service")
    if rng.random() < 0.5:
        band = max(px(46), c.line_height(px(24), bold=True) + 4)
        c.frame((x, y, c.right, y + band), fill=c.ink)
        if carrier:
            ty = y + (band - c.line_height(px(24), bold=True)) // 2
            c.text(x + px(8), ty, [(carrier, "carrier")], size=px(24), width=head, bold=True, color=c.paper)
        if service:
            ty = y + (band - c.line_height(px(16), bold=True)) // 2
            sw = width - head - px(20)
            line: list[Part] = [(service, "service")]
            c.text(
                c.right - px(8) - sw, ty, line, size=px(16), width=sw, bold=True, color=c.paper, align="right"
            )
        return y + band
    bottom = c.text(x, y, [(carrier, "carrier")], size=px(26), width=head, bold=True) if carrier else y
    if service:
        sw = width - head - px(10)
        boxed: list[Part] = [(service, "service")]
        sx, text_w = c.right - sw + px(6), sw - px(12)
        sy = c.text(sx, y + px(6), boxed, size=px(15), width=text_w, bold=True, align="center", max_lines=2)
        c.frame((c.right - sw, y, c.right, sy + px(4)), width=px(2))
        bottom = max(bottom, sy + px(4))
    return bottom


def _sender(c: Canvas, gt: dict[str, Any], rng: random.Random, px: Px, *, x: int, y: int, width: int) -> int:
    if "ship_from" not in gt:
        return y
    y = c.text(x, y, [(rng.choice(FROM_CAPTIONS), None)], size=px(11), width=width, bold=True)
    block = gt["ship_from"]
    return address(c, x, y, width=width, block=block, prefix="ship_from", size=px(13), bold=False, rng=rng)


def _recipient(
    c: Canvas, gt: dict[str, Any], rng: random.Random, px: Px, *, x: int, y: int, width: int, size: int
) -> int:
    """The recipient in large print, sometimes framed; returns the bottom (frame included)."""
    if "ship_to" not in gt:
        return y
    pad = px(8) if rng.random() < 0.4 else 0
    top = y
    caption: list[Part] = [(rng.choice(TO_CAPTIONS), None)]
    y = c.text(x + pad, y + pad, caption, size=px(13), width=width - 2 * pad, bold=True)
    inner = width - 2 * pad - px(12)
    block, bold = gt["ship_to"], rng.random() < 0.5
    y = address(
        c,
        x + pad + px(12),
        y + px(2),
        width=inner,
        block=block,
        prefix="ship_to",
        size=size,
        bold=bold,
        rng=rng,
    )
    if pad:
        c.frame((x, top, x + width, y + pad), width=px(2))
    return y + pad


def _tracking(
    c: Canvas, gt: dict[str, Any], rng: random.Random, px: Px, *, x: int, y: int, width: int, height: int
) -> int:
    """Caption, Code128 bars (none when ``height`` is under 12 px) and the tracking number in print."""
    tracking = gt["tracking_number"]
    y = c.text(x, y, [(rng.choice(TRACKING_CAPTIONS), None)], size=px(11), width=width, bold=True)
    if height >= 12:
        y = c.barcode(x, y + px(2), data=tracking, width=width, height=height) + px(4)
    face = rng.choice((c.face, MONO))
    line: list[Part] = [(tracking, "tracking_number")]
    return c.text(x, y, line, size=px(16), width=width, bold=True, align="center", face=face)


def _details(c: Canvas, details: list[tuple[str, str, str]], px: Px, *, x: int, y: int, width: int) -> int:
    """Weight, date and reference as ``Caption value`` lines."""
    for caption, value, name in details:
        y = c.text(x, y, [(caption, None), (value, name)], size=px(13), width=width, max_lines=2) + px(3)
    return y


def _details_row(c: Canvas, details: list[tuple[str, str, str]], px: Px, *, y: int) -> int:
    """Weight, date and reference side by side, a small caption over each value."""
    cell = (c.right - c.left) // max(len(details), 1)
    bottoms = [y]
    for k, (caption, value, name) in enumerate(details):
        cx = c.left + k * cell
        cy = c.text(cx, y, [(caption.rstrip(":"), None)], size=px(10), width=cell - px(8), bold=True)
        bottoms.append(c.text(cx, cy, [(value, name)], size=px(13), width=cell - px(8), max_lines=2))
    return max(bottoms)


def shipping_label(c: Canvas, gt: dict[str, Any], rng: random.Random, scale: float) -> None:
    px = scaled(scale)

    def gap() -> int:
        return px(rng.uniform(8, 22))

    x, width = c.left, c.right - c.left
    details = [
        (rng.choice(captions), gt[name], name) for name, captions in DETAIL_CAPTIONS.items() if name in gt
    ]
    y = _header(c, gt, rng, px, y=c.top) + gap()

    if c.size[0] > c.size[1]:  # landscape: addresses left, details right, barcode across the foot
        col = int(width * 0.56)
        left = _sender(c, gt, rng, px, x=x, y=y, width=col)
        left = _recipient(c, gt, rng, px, x=x, y=left + gap(), width=col, size=px(rng.choice((16, 18, 20))))
        rx = x + col + px(14)
        right = _details(c, details, px, x=rx, y=y, width=c.right - rx)
        c.draw.line([(x + col + px(6), y), (x + col + px(6), max(left, right))], fill=c.ink, width=1)
        y = max(left, right) + gap()
        c.rule(y, width=px(2))
        y += gap()
        # the bars take what room the caption and the printed number leave (none if too little)
        lettering = c.line_height(px(11), bold=True) + c.line_height(px(16), bold=True) + px(6)
        height = min(px(rng.uniform(44, 80)), c.bottom - y - lettering)
        _tracking(c, gt, rng, px, x=x, y=y, width=width, height=height)
        return

    beside = rng.random() < 0.5  # details beside the sender, or in a row at the foot
    col = int(width * 0.58)
    bottoms = [y, _sender(c, gt, rng, px, x=x, y=y, width=col - px(10))]
    if beside:
        bottoms.append(_details(c, details, px, x=x + col, y=y, width=width - col))
    y = max(bottoms) + gap()
    c.rule(y, width=px(2))
    y += gap()
    if "ship_to" in gt:
        y = _recipient(c, gt, rng, px, x=x, y=y, width=width, size=px(rng.choice((18, 20, 22, 24)))) + gap()
        c.rule(y, width=px(3))
        y += gap()
    y = _tracking(c, gt, rng, px, x=x, y=y, width=width, height=px(rng.uniform(60, 100)))
    if not beside and details:
        _details_row(c, details, px, y=y + gap())
