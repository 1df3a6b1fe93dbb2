"""Where each field was read on the page, from the decoder's cross-attention while it wrote the field.

The default models were trained to look, at each step, at the encoder cell where the next token is printed
(:mod:`donut_hole.compression.guided`), so the last decoder layer's cross-attention (heads averaged) at the
step that chose a token points at that token's characters. :func:`token_points` turns a reading's tokens
into one point per token (the attention-weighted centre of the 3 x 3 cells around the peak, in the model's
input pixels); :func:`span_box` turns the points of a field's tokens into a box; :class:`InputGeometry`
maps the model's input pixels back to fractions of the page (undoing the processor's fit and padding).

A field's box is ``[x0, y0, x1, y1]`` as fractions of the page's width and height (origin top left), so it
holds at any resolution; multiply by the page's size in pixels for pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Box = list[float]  # [x0, y0, x1, y1]: fractions of the page's width and height


@dataclass(frozen=True)
class InputGeometry:
    """How a page of ``page_size`` (width, height) was placed in the model's input by DONUT's processor:
    turned a quarter clockwise (``align_long_axis``), scaled by ``scale`` and pasted at ``offset``."""

    page_size: tuple[int, int]
    turned: bool
    scale: tuple[float, float]
    offset: tuple[float, float]

    def to_page(self, x: float, y: float) -> tuple[float, float]:
        """Input pixels → fractions of the page (clamped to [0, 1])."""
        u = (x - self.offset[0]) / self.scale[0]
        v = (y - self.offset[1]) / self.scale[1]
        width, height = self.page_size
        if self.turned:  # the processor turned the page clockwise: input (u, v) is page (v, W - u)
            fx, fy = v / width, 1.0 - u / height
        else:
            fx, fy = u / width, v / height
        return min(1.0, max(0.0, fx)), min(1.0, max(0.0, fy))

    def box_to_page(self, box: Sequence[float]) -> Box:
        """A box in input pixels → a box in page fractions (the corners reordered after a turn)."""
        (ax, ay), (bx, by) = self.to_page(box[0], box[1]), self.to_page(box[2], box[3])
        return [round(min(ax, bx), 4), round(min(ay, by), 4), round(max(ax, bx), 4), round(max(ay, by), 4)]


def input_geometry(image_processor: Any, page_size: tuple[int, int]) -> InputGeometry:
    """Where DONUT's processor puts a page of ``page_size`` (width, height) in its (H, W) input: the same
    arithmetic as :meth:`donut_hole.model.pixels.DonutPixels.fit` (align, resize, thumbnail, centre-pad)."""
    ip = image_processor
    out_h, out_w = int(ip.size["height"]), int(ip.size["width"])
    width, height = page_size
    turned = bool(getattr(ip, "do_align_long_axis", False)) and (
        (out_w < out_h and width > height) or (out_w > out_h and width < height)
    )
    w, h = (height, width) if turned else (width, height)
    fw, fh = float(w), float(h)
    if getattr(ip, "do_resize", True):
        short = min(out_h, out_w)
        if fw <= fh:
            fw, fh = short, int(short * fh / fw)
        else:
            fw, fh = int(short * fw / fh), short
    if getattr(ip, "do_thumbnail", True) and (fh > out_h or fw > out_w):
        new_h, new_w = min(fh, out_h), min(fw, out_w)
        if fh > fw:
            new_w = int(fw * new_h / fh)
        elif fw > fh:
            new_h = int(fh * new_w / fw)
        fw, fh = new_w, new_h
    offset = ((out_w - int(fw)) // 2, (out_h - int(fh)) // 2)
    return InputGeometry(page_size, turned, (fw / w, fh / h), (float(offset[0]), float(offset[1])))


def last_cross_attention(decoder: Any, cells: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """The last decoder layer's cross-attention, heads averaged, of a teacher-forced pass over ``ids``
    (the prompt, then every chosen token but the last): (T, S), row t the step that chose token t.

    Computed from the layer's own projections on its input (a hook), whatever attention kernel the model
    runs with; ``cells`` (1, S, C) are the encoder's cells at the decoder's width.
    """
    import torch

    layer = decoder.model.decoder.layers[-1].encoder_attn
    seen: dict[str, torch.Tensor] = {}

    def grab(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            decoder(
                input_ids=torch.tensor([list(ids)], dtype=torch.long, device=cells.device),
                encoder_hidden_states=cells,
                use_cache=False,
            )
            hidden = seen["hidden"][0].float()  # (T, C)
            heads = int(layer.num_heads)
            q = torch.nn.functional.linear(hidden, layer.q_proj.weight.float(), _bias(layer.q_proj))
            k = torch.nn.functional.linear(cells[0].float(), layer.k_proj.weight.float(), _bias(layer.k_proj))
            t, s = q.shape[0], k.shape[0]
            q = q.view(t, heads, -1).transpose(0, 1)  # (H, T, D)
            k = k.view(s, heads, -1).transpose(0, 1)  # (H, S, D)
            scores = (q @ k.transpose(1, 2)) * (q.shape[-1] ** -0.5)  # (H, T, S)
            return scores.softmax(dim=-1).mean(dim=0)  # (T, S)
    finally:
        handle.remove()


def _bias(linear: Any) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.float()


def token_points(
    attention: torch.Tensor, *, grid: tuple[int, int], stride: int
) -> list[tuple[float, float, float]]:
    """Per row of ``attention`` (T, rows*cols), the centre of its mass in the 3 x 3 cells around its peak,
    in input pixels, and that mass: (x, y, mass). A token printed on the page draws most of its step's
    attention there; one that is not (a tag, a value the page does not print) spreads it."""
    import torch

    rows, cols = grid
    maps = attention.reshape(-1, rows, cols)
    points: list[tuple[float, float, float]] = []
    for m in maps:
        peak = int(m.argmax())
        r, c = divmod(peak, cols)
        r0, r1, c0, c1 = max(0, r - 1), min(rows, r + 2), max(0, c - 1), min(cols, c + 2)
        block = m[r0:r1, c0:c1]
        total = float(block.sum()) or 1.0
        ys = torch.arange(r0, r1, dtype=block.dtype)[:, None]
        xs = torch.arange(c0, c1, dtype=block.dtype)[None, :]
        y = float((block * ys).sum()) / total
        x = float((block * xs).sum()) / total
        points.append(((x + 0.5) * stride, (y + 0.5) * stride, round(float(block.sum()), 4)))
    return points


PRINTED_MASS = 0.5
"""A token whose step put less of its attention than this in the 3 x 3 cells around its peak is taken as
not printed (the shipped models: about 1.0 on printed characters, 0.2-0.4 on an unprinted value such as
``document_type``)."""
HEIGHT_PER_CHAR = 1.2
"""Half a line's height in character advances (a line box is about twice a character's advance)."""
X_SHIFT = 0.25
"""Points sit this many cells left of the print's middle, on average (measured on unseen scans of seed
4242 against the generator's boxes: 3-5 pixels at 672x672); boxes are moved right by it."""


def span_box(
    points: Sequence[tuple[float, float, float]], widths: Sequence[int], *, stride: int
) -> list[float] | None:
    """A box in input pixels around the points of one field's tokens, or None when most of them were not
    read from the page (:data:`PRINTED_MASS`); ``widths`` are the tokens' lengths in characters (a token's
    point is the middle of its characters, so the ends reach half a token further).

    The character advance is read from the field's longest run of tokens on one line (else 0.55 of a
    cell); a line's height from it (:data:`HEIGHT_PER_CHAR`), at least a cell.
    """
    kept = [(x, y, w) for (x, y, mass), w in zip(points, widths, strict=True) if mass >= PRINTED_MASS]
    if not kept or len(kept) < 0.5 * len(points):
        return None
    char_w = 0.55 * stride
    lines: list[list[tuple[float, float, int]]] = []
    for point in kept:  # consecutive tokens within most of a cell vertically share a line
        if lines and abs(point[1] - lines[-1][-1][1]) < 0.75 * stride:
            lines[-1].append(point)
        else:
            lines.append([point])
    longest = max(lines, key=len)
    if len(longest) > 1:
        left, right = min(longest, key=lambda p: p[0]), max(longest, key=lambda p: p[0])
        chars = sum(p[2] for p in longest) - (left[2] + right[2]) / 2
        if right[0] > left[0] and chars > 0:
            char_w = min(2.0 * stride, max(0.2 * stride, (right[0] - left[0]) / chars))
    x0 = min(x - w * char_w / 2 for x, _, w in kept)
    x1 = max(x + w * char_w / 2 for x, _, w in kept)
    half = max(stride / 2, HEIGHT_PER_CHAR * char_w)
    shift = X_SHIFT * stride
    return [x0 + shift, min(y for _, y, _ in kept) - half, x1 + shift, max(y for _, y, _ in kept) + half]


def is_finite_box(box: Sequence[float]) -> bool:
    return len(box) == 4 and all(math.isfinite(v) for v in box)
