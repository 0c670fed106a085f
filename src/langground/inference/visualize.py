"""Pictures of predictions: translucent masks, thick boxes, readable labels, attention heat maps, grids.

Everything is drawn with PIL on the ORIGINAL image (results are in its pixels), so a picture shows exactly
what the numbers say. Sizes (line width, font) scale with the image, so a 96-pixel synthetic scene and a
640-pixel photo both stay legible.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-friendly qualitative palette (Okabe & Ito, 2008): one colour per expression.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (0, 0, 0),
)
GOOD, BAD, TRUTH = (0, 200, 80), (230, 40, 40), (255, 255, 255)

# Anchors of a perceptually ordered dark-blue -> yellow ramp (close to viridis), interpolated linearly.
_RAMP = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32
)


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A bold sans-serif font of ``size`` pixels (DejaVu when installed, else PIL's embedded font)."""
    size = max(8, int(size))
    for name in ("DejaVuSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    # Relative luminance (ITU-R BT.709) decides black or white text on a coloured background.
    lum = 0.2126 * bg[0] + 0.7152 * bg[1] + 0.0722 * bg[2]
    return (0, 0, 0) if lum > 150 else (255, 255, 255)


def line_width(size: tuple[int, int]) -> int:
    """Box outline width for an image of ``(W, H)``: ~0.6% of the long side, at least 2 px."""
    return max(2, round(max(size) / 160))


def label_size(size: tuple[int, int]) -> int:
    """Label font size for an image of ``(W, H)``: ~3.5% of the long side, 11 px at least."""
    return max(11, round(max(size) * 0.035))


def overlay_mask(
    image: Image.Image, mask: Any, color: tuple[int, int, int], alpha: float = 0.45
) -> Image.Image:
    """Blend ``color`` over the pixels of ``mask`` (bool array or PIL "L") and outline the region."""
    m = np.asarray(mask) > (127 if isinstance(mask, Image.Image) else 0)
    if not m.any():
        return image
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    base[m] = (1 - alpha) * base[m] + alpha * np.asarray(color, np.float32)
    out = Image.fromarray(base.round().astype(np.uint8))
    # A 1-px contour makes the region readable even where the colour blends into the scene.
    edge = m & ~_erode(m)
    arr = np.asarray(out).copy()
    arr[edge] = color
    return Image.fromarray(arr)


def _erode(m: np.ndarray) -> np.ndarray:
    padded = np.pad(m, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


Rect = tuple[float, float, float, float]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    image_size: tuple[int, int],
    size: int | None = None,
    above: bool = True,
    taken: list[Rect] | None = None,
) -> Rect:
    """A filled label at the box corner ``xy`` (above it when there is room, else inside), kept on-image.

    ``taken`` holds the rectangles of labels drawn before: the label moves down until it overlaps none of
    them (several expressions often point at the same object), and its own rectangle is appended.
    """
    f = font(size or label_size(image_size))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    pad = max(2, f.size // 5) if hasattr(f, "size") else 3
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, image_size[0] - w))
    y = xy[1] - h if above and xy[1] - h >= 0 else xy[1]
    y = min(max(0.0, y), max(0.0, image_size[1] - h))
    taken = taken if taken is not None else []
    for _ in range(len(taken) + 1):
        rect = (x, y, x + w, y + h)
        hit = next((t for t in taken if _overlaps(rect, t)), None)
        if hit is None:
            break
        y = hit[3] + 1 if hit[3] + 1 + h <= image_size[1] else max(0.0, hit[1] - h - 1)
    rect = (x, y, x + w, y + h)
    taken.append(rect)
    draw.rectangle(rect, fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=f)
    return rect


def draw_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    color: tuple[int, int, int],
    width: int,
    dashed: bool = False,
) -> None:
    """An ``xyxy`` outline drawn inside the box (so it never leaves the image); dashed for ground truth."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not dashed:
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=color, width=width)
        return
    dash = 3 * width
    for a, b, horizontal, fixed in (
        (x0, x1, True, y0),
        (x0, x1, True, y1 - width),
        (y0, y1, False, x0),
        (y0, y1, False, x1 - width),
    ):
        t = a
        while t < b:
            e = min(b, t + dash)
            if horizontal:
                draw.rectangle((t, fixed, e, fixed + width - 1), fill=color)
            else:
                draw.rectangle((fixed, t, fixed + width - 1, e), fill=color)
            t += 2 * dash


def _box_of(result: Mapping[str, Any]) -> list[float] | None:
    box = result.get("box")
    if not box:
        return None
    return [box["xmin"], box["ymin"], box["xmax"], box["ymax"]]


def draw_predictions(
    image: Image.Image, results: Sequence[Mapping[str, Any]], expressions: Sequence[str]
) -> Image.Image:
    """Draw Grounder results (one per expression) on ``image``: mask, box and "expression  score" label.

    A generalized-REC result may carry several ``boxes``; a no-target result (no box) gets its label in
    the top-left corner, saying so.
    """
    out = image.convert("RGB")
    for i, result in enumerate(results):
        if result.get("mask") is not None:
            out = overlay_mask(out, result["mask"], PALETTE[i % len(PALETTE)])
    draw = ImageDraw.Draw(out)
    width = line_width(out.size)
    corner_y = 0.0
    taken: list[Rect] = []
    for i, (result, text) in enumerate(zip(results, expressions, strict=True)):
        color = PALETTE[i % len(PALETTE)]
        boxes = [_box_of(b) for b in result.get("boxes", [])] or [_box_of(result)]
        boxes = [b for b in boxes if b is not None]
        label = _short(text)
        if result.get("score") is not None:
            label += f"  {result['score']:.2f}"
        if not boxes:
            nt = result.get("no_target")
            label += "  (no target" + (f" {nt:.2f})" if nt is not None else ")")
            draw_label(draw, (0, corner_y), label, color, out.size, above=False, taken=taken)
            corner_y += label_size(out.size) * 1.6
            continue
        for box in boxes:
            draw_box(draw, box, color, width)
        draw_label(draw, (boxes[0][0], boxes[0][1]), label, color, out.size, taken=taken)
    return out


def _short(text: str, limit: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def heatmap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 colours on ``[vmin, vmax]`` (default: the map's own range;
    a flat map is all dark)."""
    v = np.asarray(values, np.float32)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    v = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi - lo > 1e-12 else np.zeros_like(v)
    pos = v * (len(_RAMP) - 1)
    i = np.clip(pos.astype(np.int64), 0, len(_RAMP) - 2)
    frac = (pos - i)[..., None]
    return ((1 - frac) * _RAMP[i] + frac * _RAMP[i + 1]).round().astype(np.uint8)


def overlay_heatmap(
    image: Image.Image,
    values: np.ndarray,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Heat map of ``values`` (same size as ``image``) blended over a grey version of the image."""
    grey = np.asarray(image.convert("L").convert("RGB"), np.float32)
    heat = heatmap(values, vmin, vmax).astype(np.float32)
    return Image.fromarray(((1 - alpha) * grey + alpha * heat).round().astype(np.uint8))


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


def draw_explanation(
    image: Image.Image,
    result: Mapping[str, Any] | None,
    expression: str,
    words: Sequence[str],
    stages: Mapping[str, np.ndarray],
    tile_width: int = 200,
) -> Image.Image:
    """LaConvNet Fig. 6: per stage, a row of per-word cross-modal attention overlays.

    Args:
        image: the original image.
        result: the Grounder result for ``expression``, drawn as a first small tile; ``None`` when the
            prediction is shown elsewhere (the block then starts with the expression as a header).
        words: the tokens the model read (after truncation), one column each.
        stages: ``{stage name: (L, H, W)}`` attention in original pixels (L >= len(words)).
    """
    size = max(11, tile_width // 14)
    if result is not None:
        head = with_caption(
            _fit(draw_predictions(image, [result], [expression]), tile_width), expression, size
        )
    else:
        width = max(tile_width, round(tile_width * (len(words) + 0.4)))
        head = _caption(f'attention per word: "{expression}"', width, round(size * 1.2))
    rows: list[list[Image.Image]] = [[head]]
    for name, maps in stages.items():
        label = _caption(name, max(60, tile_width // 3), size)
        row: list[Image.Image] = [label]
        # One colour scale per stage, from 0 to the stage's largest weight: the words compete for each
        # position (softmax over words), so a word that draws little attention stays dark.
        vmax = float(np.max(maps[: len(words)])) if len(words) else 1.0
        for k, word in enumerate(words):
            tile = overlay_heatmap(image, maps[k], vmin=0.0, vmax=vmax)
            row.append(with_caption(_fit(tile, tile_width), f'"{word}"', size))
        rows.append(row)
    return stack(rows)


def draw_grounding_tile(
    image: Image.Image,
    expression: str,
    pred_box: Sequence[float] | None,
    gt_boxes: Sequence[Sequence[float]] = (),
    correct: bool | None = None,
    note: str = "",
    tile_width: int = 240,
) -> Image.Image:
    """One cell of a prediction grid: dashed white ground truth, prediction green (hit) or red (miss)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = line_width(out.size)
    for gt in gt_boxes:
        draw_box(draw, gt, TRUTH, width, dashed=True)
    color = PALETTE[0] if correct is None else (GOOD if correct else BAD)
    if pred_box is not None:
        draw_box(draw, pred_box, color, width)
    size = max(11, tile_width // 17)
    caption = expression + (f"  [{note}]" if note else "")
    return with_caption(_fit(out, tile_width), caption, size)


def grid(tiles: Sequence[Image.Image], cols: int, title: str | None = None) -> Image.Image:
    """Tiles in rows of ``cols`` with an optional title strip on top."""
    rows = [list(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    body = stack(rows)
    if not title:
        return body
    head = _caption(title, body.width, max(12, body.width // 60))
    return stack([[head], [body]], gap=0)
