"""Form layouts: bill of lading and delivery note, with a header, parties and a ruled table of goods.

Sizes are pixels on the default 640x480 page, multiplied by ``scale``. Every value goes through
:meth:`Canvas.text` with its field path; captions, rules, signature lines and the barcode of the document
number are the only other marks.
"""

from __future__ import annotations

import random
from typing import Any

from donut_hole.documents.canvas import Canvas, Part, scaled

__all__ = ["bill_of_lading", "delivery_note"]

BOL_TITLES = ("BILL OF LADING", "STRAIGHT BILL OF LADING", "Bill of Lading", "Bill of Lading - Short Form")
NOTE_TITLES = ("DELIVERY NOTE", "Delivery Note", "PACKING SLIP", "Delivery Slip", "DISPATCH NOTE")


def _table(
    c: Canvas,
    x: int,
    y: int,
    *,
    width: int,
    columns: list[tuple[str, float, str]],
    rows: list[list[Part]],
    size: int,
    pad: int,
    rng: random.Random,
) -> int:
    """A ruled table: ``columns`` are (caption, share of width, alignment); one :class:`Part` per cell."""
    edges = [x]
    for _, share, _ in columns:
        edges.append(edges[-1] + round(share * width))
    edges[-1] = x + width
    top = y
    spans = list(zip(columns, edges, edges[1:], strict=False))
    wrap = not all(
        c.fits(caption, width=right - left - 2 * pad, bold=True) for (caption, *_), left, right in spans
    )
    lines = 2 if wrap else 1
    header = lines * c.line_height(size, bold=True) + 2 * pad
    if rng.random() < 0.6:
        (pr, pg, pb), (ir, ig, ib) = c.paper, c.ink
        shade = (round(0.78 * pr + 0.22 * ir), round(0.78 * pg + 0.22 * ig), round(0.78 * pb + 0.22 * ib))
        c.frame((x, y, x + width, y + header), fill=shade)
    for (caption, _, align), left, right in spans:
        text_w = right - left - 2 * pad
        c.text(
            left + pad,
            y + pad,
            [(caption, None)],
            size=size,
            width=text_w,
            bold=True,
            align=align,
            max_lines=lines,
        )
    y += header
    c.rule(y, x0=x, x1=x + width, width=1)
    for row in rows:
        bottoms = [y + pad]
        for (_, _, align), left, right, cell in zip(columns, edges, edges[1:], row, strict=False):
            text_w = right - left - 2 * pad
            bottoms.append(
                c.text(left + pad, y + pad, [cell], size=size, width=text_w, align=align, max_lines=2)
            )
        y = max(bottoms) + pad
        c.rule(y, x0=x, x1=x + width, width=1)
    c.frame((x, top, x + width, y))
    if rng.random() < 0.7:
        for edge in edges[1:-1]:
            c.draw.line([(edge, top), (edge, y)], fill=c.ink, width=1)
    return y


def _cells(item: dict[str, str], index: int, keys: tuple[str, ...]) -> list[Part]:
    """One table row: ``item[key]`` printed as field ``items.<index>.<key>``, an empty cell when absent."""
    return [(item[key], f"items.{index}.{key}") if key in item else ("", None) for key in keys]


def _signatures(c: Canvas, y: int, captions: tuple[str, ...], *, size: int, gap: int) -> None:
    """Signature lines with captions under them, at the foot of the page when there is room."""
    line_y = c.bottom - c.line_height(size) - gap // 2
    if line_y - gap < y:
        return
    width = (c.right - c.left) // len(captions)
    for k, caption in enumerate(captions):
        left = c.left + k * width
        c.rule(line_y, x0=left, x1=left + width - gap * 2, width=1)
        c.text(left, line_y + gap // 2, [(caption, None)], size=size, width=width - gap * 2)


def bill_of_lading(c: Canvas, gt: dict[str, Any], rng: random.Random, scale: float) -> None:
    px = scaled(scale)
    x, width = c.left, c.right - c.left
    left_w, rx = int(width * 0.55), x + int(width * 0.58)
    right_w = c.right - rx

    def gap() -> int:
        return px(rng.uniform(6, 18))

    y = c.top
    ty = c.text(x, y, [(rng.choice(BOL_TITLES), None)], size=px(22), width=left_w, bold=True, max_lines=2)
    number: list[Part] = [
        (rng.choice(("B/L No.:", "BOL #", "B/L number")), None),
        (gt["bol_number"], "bol_number"),
    ]
    ry = c.text(rx, y, number, size=px(14), width=right_w, bold=True, max_lines=2)
    if "date" in gt:
        date: list[Part] = [
            (rng.choice(("Date:", "Date of issue:", "Ship date:")), None),
            (gt["date"], "date"),
        ]
        ry = c.text(rx, ry, date, size=px(13), width=right_w)
    y = max(ty, ry) + gap()
    c.rule(y, width=px(2))
    y += gap()

    by = c.barcode(rx, y, data=gt["bol_number"], width=right_w, height=px(34), center=False)
    cy = y
    if "carrier" in gt:
        carrier: list[Part] = [
            (rng.choice(("Carrier:", "Carrier name:", "Transported by:")), None),
            (gt["carrier"], "carrier"),
        ]
        cy = c.text(x, y + px(6), carrier, size=px(14), width=left_w, max_lines=2)
    y = max(by, cy) + gap()

    half, pad = (width - px(12)) // 2, px(6)
    boxes: list[tuple[int, int]] = []
    for k, (key, captions) in enumerate(
        (
            ("shipper", ("SHIPPER", "Shipper (from)", "Ship from")),
            ("consignee", ("CONSIGNEE", "Consignee (to)", "Ship to")),
        )
    ):
        if key not in gt:
            continue
        bx = x + k * (half + px(12))
        py = c.text(
            bx + pad, y + pad, [(rng.choice(captions), None)], size=px(11), width=half - 2 * pad, bold=True
        )
        py = c.text(
            bx + pad,
            py + px(2),
            [(gt[key]["name"], f"{key}.name")],
            size=px(14),
            width=half - 2 * pad,
            max_lines=2,
        )
        if "city" in gt[key]:
            py = c.text(bx + pad, py, [(gt[key]["city"], f"{key}.city")], size=px(13), width=half - 2 * pad)
        boxes.append((bx, py + pad))
    if boxes:
        bottom = max(b for _, b in boxes)
        for bx, _ in boxes:
            c.frame((bx, y, bx + half, bottom))
        y = bottom + gap()

    if gt.get("items"):
        columns = [
            (rng.choice(("Description", "Description of goods", "Commodity")), 0.56, "left"),
            (rng.choice(("Qty", "Quantity", "Packages")), 0.2, rng.choice(("left", "right"))),
            (rng.choice(("Weight", "Gross wt.", "Weight (gross)")), 0.24, "right"),
        ]
        rows = [_cells(item, i, ("description", "quantity", "weight")) for i, item in enumerate(gt["items"])]
        y = _table(
            c,
            x,
            y,
            width=width,
            columns=columns,
            rows=rows,
            size=px(rng.choice((13, 14, 15))),
            pad=px(rng.uniform(4, 7)),
            rng=rng,
        )
    if "total_weight" in gt:
        total: list[Part] = [
            (rng.choice(("Total weight:", "TOTAL WEIGHT", "Total gross weight:")), None),
            (gt["total_weight"], "total_weight"),
        ]
        y = c.text(x, y + px(5), total, size=px(14), width=width, bold=True, align="right")
    _signatures(c, y, ("Shipper signature", "Carrier signature"), size=px(10), gap=px(12))


def delivery_note(c: Canvas, gt: dict[str, Any], rng: random.Random, scale: float) -> None:
    px = scaled(scale)
    x, width = c.left, c.right - c.left
    left_w, rx = int(width * 0.5), x + int(width * 0.55)
    right_w = c.right - rx

    def gap() -> int:
        return px(rng.uniform(6, 18))

    y = c.top
    ty = c.text(x, y, [(rng.choice(NOTE_TITLES), None)], size=px(24), width=left_w, bold=True, max_lines=2)
    heads = (
        ("note_number", ("Delivery note no.:", "Note #", "DN No.:", "Number:"), True),
        ("date", ("Date:", "Delivery date:", "Dispatched:"), False),
        ("order_number", ("Order no.:", "Your order:", "PO number:"), False),
    )
    ry = y
    for name, captions, bold in heads:
        if name in gt:
            ry = c.text(
                rx,
                ry,
                [(rng.choice(captions), None), (gt[name], name)],
                size=px(14),
                width=right_w,
                bold=bold,
                max_lines=2,
            )
    if rng.random() < 0.5:
        ry = c.barcode(rx, ry + px(4), data=gt["note_number"], width=right_w, height=px(26), center=False)
    y = max(ty, ry) + gap()
    c.rule(y, width=px(2))
    y += gap()

    bottoms = [y]
    if "customer" in gt:
        cy = c.text(
            x,
            y,
            [(rng.choice(("Customer", "Sold to", "CUSTOMER:", "Bill to")), None)],
            size=px(11),
            width=left_w,
            bold=True,
        )
        bottoms.append(
            c.text(
                x,
                cy,
                [(gt["customer"], "customer")],
                size=px(14),
                width=left_w,
                bold=rng.random() < 0.5,
                max_lines=2,
            )
        )
    if "delivery_address" in gt:
        ay = c.text(
            rx,
            y,
            [(rng.choice(("Deliver to", "Delivery address", "SHIP TO:", "Delivery to")), None)],
            size=px(11),
            width=right_w,
            bold=True,
        )
        bottoms.append(
            c.text(
                rx,
                ay,
                [(gt["delivery_address"], "delivery_address")],
                size=px(14),
                width=right_w,
                max_lines=3,
            )
        )
    y = max(bottoms) + gap()

    if gt.get("items"):
        columns = [
            (rng.choice(("SKU", "Item no.", "Article", "Code")), 0.24, "left"),
            (rng.choice(("Description", "Item", "Product")), 0.56, "left"),
            (rng.choice(("Qty", "Quantity", "Qty delivered")), 0.2, rng.choice(("left", "right"))),
        ]
        rows = [_cells(item, i, ("sku", "description", "quantity")) for i, item in enumerate(gt["items"])]
        y = _table(
            c,
            x,
            y,
            width=width,
            columns=columns,
            rows=rows,
            size=px(rng.choice((13, 14, 15))),
            pad=px(rng.uniform(4, 7)),
            rng=rng,
        )
    _signatures(c, y + gap(), ("Received by", "Date and signature"), size=px(10), gap=px(12))
