"""Layout: where labels go (next to their box, never over an object), legend and caption strips, grids.

A label that finds no free spot on the image goes into a legend strip under it (small images, crowded
scenes); tiles are scaled to a common width and stacked in rows.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from langground.inference.style import _text_color, font

Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_extent(draw: ImageDraw.ImageDraw, text: str, size: int) -> tuple[int, int, int, tuple[int, int]]:
    """Width, height and padding of a filled label, and the text's bbox offset."""
    f = font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    pad = max(2, size // 5)
    return right - left + 2 * pad, bottom - top + 2 * pad, pad, (left, top)


def _place(
    w: float,
    h: float,
    candidates: Sequence[tuple[float, float]],
    blocked: Sequence[Rect],
    size: tuple[int, int],
) -> Rect | None:
    """The first candidate top-left corner whose ``w x h`` label lies on the image and covers nothing."""
    for x, y in candidates:
        rect = (x, y, x + w, y + h)
        if x < 0 or y < 0 or rect[2] > size[0] or rect[3] > size[1]:
            continue
        if not any(_overlaps(rect, b) for b in blocked):
            return rect
    return None


def _box_candidates(
    box: Sequence[float], w: float, h: float, size: tuple[int, int]
) -> list[tuple[float, float]]:
    """Label corners around a box, nearest first: above, below (left- then right-aligned), beside."""
    x0, y0, x1, y1 = box
    clamp = lambda x: min(max(0.0, x), max(0.0, size[0] - w))
    xs = list(dict.fromkeys([x0, x1 - w, clamp(x0), clamp(x1 - w)]))
    out = []
    for k in range(3):  # rows further away when the nearest ones are taken by other labels
        out += [(x, y0 - h - k * (h + 1)) for x in xs] + [(x, y1 + k * (h + 1)) for x in xs]
    out += [(x1, y0), (x0 - w, y0), (x1, y1 - h), (x0 - w, y1 - h)]
    return out


def _draw_filled_label(draw: ImageDraw.ImageDraw, rect: Rect, text: str, color, size: int) -> None:
    _, _, pad, (left, top) = _label_extent(draw, text, size)
    draw.rectangle(rect, fill=color)
    draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=_text_color(color), font=font(size))


def _wrap_px(text: str, f: Any, max_width: float) -> list[str]:
    """Greedy word wrap measured in pixels (a word longer than a line gets a line of its own)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}", font=f) <= max_width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def _legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int, size: int) -> Image.Image:
    """A white strip of colour-filled labels, wrapped to ``width``: for labels with no room on the image."""
    f = font(size)
    pad, gap = max(2, size // 5), max(2, size // 4)
    line_h = round(size * 1.25)
    blocks = [(_wrap_px(text, f, width - 2 * (pad + gap)), color) for text, color in entries]
    height = gap + sum(len(lines) * line_h + 2 * pad + gap for lines, _ in blocks)
    strip = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(strip)
    y = gap
    for lines, color in blocks:
        h = len(lines) * line_h + 2 * pad
        d.rectangle((gap, y, width - gap - 1, y + h - 1), fill=color)
        for k, line in enumerate(lines):
            d.text((gap + pad, y + pad + k * line_h), line, fill=_text_color(color), font=f)
        y += h + gap
    return strip


def _fit(image: Image.Image, width: int) -> Image.Image:
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _caption(text: str, width: int, size: int) -> Image.Image:
    """White strip with ``text`` wrapped to ``width`` pixels."""
    f = font(size)
    chars = max(8, int(width / (0.6 * size)))
    lines = textwrap.wrap(text, chars) or [""]
    line_h = round(size * 1.25)
    strip = Image.new("RGB", (width, line_h * len(lines) + size // 2), "white")
    d = ImageDraw.Draw(strip)
    for k, line in enumerate(lines):
        d.text((size // 4, size // 4 + k * line_h), line, fill=(20, 20, 20), font=f)
    return strip


def stack(rows: Sequence[Sequence[Image.Image]], gap: int = 6, background: str = "white") -> Image.Image:
    """Paste rows of images (left-aligned, top-aligned) onto one canvas with ``gap`` pixels between them."""
    widths = [sum(t.width for t in row) + gap * (len(row) - 1) for row in rows]
    heights = [max((t.height for t in row), default=0) for row in rows]
    canvas = Image.new("RGB", (max(widths) + 2 * gap, sum(heights) + gap * (len(rows) + 1)), background)
    y = gap
    for row, h in zip(rows, heights, strict=True):
        x = gap
        for tile in row:
            canvas.paste(tile, (x, y))
            x += tile.width + gap
        y += h + gap
    return canvas


def with_caption(tile: Image.Image, text: str, size: int) -> Image.Image:
    """``tile`` with a wrapped caption underneath."""
    cap = _caption(text, tile.width, size)
    out = Image.new("RGB", (tile.width, tile.height + cap.height), "white")
    out.paste(tile, (0, 0))
    out.paste(cap, (0, tile.height))
    return out


def grid(tiles: Sequence[Image.Image], cols: int, title: str | None = None) -> Image.Image:
    """Tiles in rows of ``cols`` with an optional title strip on top."""
    rows = [list(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    body = stack(rows)
    if not title:
        return body
    head = _caption(title, body.width, max(12, body.width // 60))
    return stack([[head], [body]], gap=0)
