"""Pictures of predictions: translucent masks, thick boxes, readable labels, attention heat maps, grids.

Everything is drawn with PIL on the ORIGINAL image (results are in its pixels), so a picture shows exactly
what the numbers say. Sizes (line width, font) scale with the image, so a 96-pixel synthetic scene and a
640-pixel photo both stay legible; a label never covers a predicted object: it sits next to its box, or in
a legend strip under the image when there is no room (small images, crowded scenes).
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from langground.text.tokenizer import tokenize

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


def prediction_label(result: Mapping[str, Any], text: str, box_threshold: float | None = None) -> str:
    """The label of one result: "expression  score"; with a no-target head, the decision next to its
    probability: ``no target (p=0.87)``, or ``target (p(no target)=0.13), 0 boxes above 0.70``."""
    label = _short(text)
    n = len(_boxes_of(result))
    if n and result.get("score") is not None:
        label += f"  {result['score']:.2f}" + (f" ({n} boxes)" if n > 1 else "")
    nt = result.get("no_target")
    if nt is not None:
        has_target = result.get("has_target")
        if has_target is None:
            has_target = nt < 0.5
        if not has_target:
            label += f"  no target (p={nt:.2f})"
        elif not n:
            if result.get("mask") is not None:
                what = "empty mask"
            else:
                what = "0 boxes" + (f" above {box_threshold:.2f}" if box_threshold is not None else "")
            label += f"  target (p(no target)={nt:.2f}), {what}"
    elif not n:
        label += "  (nothing found)"
    return label


def _boxes_of(result: Mapping[str, Any]) -> list[list[float]]:
    boxes = [_box_of(b) for b in result.get("boxes", [])] or [_box_of(result)]
    return [b for b in boxes if b is not None]


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


def draw_predictions(
    image: Image.Image,
    results: Sequence[Mapping[str, Any]],
    expressions: Sequence[str],
    box_threshold: float | None = None,
) -> Image.Image:
    """Draw Grounder results (one per expression) on ``image``: mask, box and a :func:`prediction_label`.

    Labels never cover a predicted object (nor each other): each goes next to its box (above, below,
    beside), a no-target one into a free corner; a label with no such room (small images, crowded
    scenes) goes into a legend strip under the image, in its box's colour. ``box_threshold`` is named in
    the label of a generalized-REC result that kept no box.
    """
    out = image.convert("RGB")
    for i, result in enumerate(results):
        if result.get("mask") is not None:
            out = overlay_mask(out, result["mask"], PALETTE[i % len(PALETTE)])
    draw = ImageDraw.Draw(out)
    width, size = line_width(out.size), label_size(out.size)
    all_boxes = [_boxes_of(r) for r in results]
    for i, boxes in enumerate(all_boxes):
        for box in boxes:
            draw_box(draw, box, PALETTE[i % len(PALETTE)], width)
    blocked: list[Rect] = [tuple(b) for boxes in all_boxes for b in boxes]  # type: ignore[misc]
    legend: list[tuple[str, tuple[int, int, int]]] = []
    for i, (result, text, boxes) in enumerate(zip(results, expressions, all_boxes, strict=True)):
        color = PALETTE[i % len(PALETTE)]
        label = prediction_label(result, text, box_threshold)
        w, h, _, _ = _label_extent(draw, label, size)
        if boxes:
            candidates = _box_candidates(boxes[0], w, h, out.size)
        else:
            rows = range(int(out.size[1] // (h + 1)))
            candidates = [(x, k * (h + 1)) for k in rows for x in (0.0, out.size[0] - w)]
        rect = _place(w, h, candidates, blocked, out.size)
        if rect is None:
            legend.append((label, color))
            continue
        blocked.append(rect)
        _draw_filled_label(draw, rect, label, color, size)
    if not legend:
        return out
    strip = _legend(legend, out.width, size)
    canvas = Image.new("RGB", (out.width, out.height + strip.height), "white")
    canvas.paste(out, (0, 0))
    canvas.paste(strip, (0, out.height))
    return canvas


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


def colour_bar(height: int, vmin: float, vmax: float, size: int) -> Image.Image:
    """A vertical bar of :func:`heatmap`'s ramp, ``vmax`` at the top and ``vmin`` at the bottom, with the
    values at both ends and the middle written beside it."""
    f = font(size)
    height = max(3 * size, int(height))
    bar_w = max(8, size)
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    texts = [f"{vmax:.3g}", f"{(vmin + vmax) / 2:.3g}", f"{vmin:.3g}"]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), t, font=f)[2] for t in texts)
    canvas = Image.new("RGB", (bar_w + 4 + text_w + 2, height), "white")
    canvas.paste(Image.fromarray(heatmap(ramp, 0.0, 1.0)), (0, 0))
    d = ImageDraw.Draw(canvas)
    for text, y in zip(texts, (0, (height - size) // 2, height - size - 2), strict=True):
        d.text((bar_w + 4, max(0, y)), text, fill=(20, 20, 20), font=f)
    return canvas


def draw_explanation(
    image: Image.Image,
    result: Mapping[str, Any] | None,
    expression: str,
    words: Sequence[str],
    stages: Mapping[str, np.ndarray],
    tile_width: int = 200,
) -> Image.Image:
    """LaConvNet Fig. 6: per stage, a row of per-word cross-modal attention overlays and its colour bar.

    Args:
        image: the original image.
        result: the Grounder result for ``expression``, drawn as a first small tile; ``None`` when the
            prediction is shown elsewhere (the block then starts with the expression as a header).
        expression: shown as the model read it: cut to ``words`` with an ellipsis when it was truncated.
        words: the tokens the model read (after truncation), one column each.
        stages: ``{stage name: (L, H, W)}`` attention in original pixels (L >= len(words)).
    """
    size = max(11, tile_width // 14)
    if len(tokenize(expression)) > len(words):
        expression = " ".join(words) + " …"
    if result is not None:
        head = with_caption(
            _fit(draw_predictions(image, [result], [expression]), tile_width), expression, size
        )
    else:
        width = max(tile_width, round(tile_width * (len(words) + 0.4)))
        head = _caption(f'attention per word: "{expression}"', width, round(size * 1.2))
    rows: list[list[Image.Image]] = [[head]]
    tile_h = max(1, round(image.height * tile_width / image.width))
    for name, maps in stages.items():
        # One colour scale per stage, from 0 to the stage's largest weight: the words compete for each
        # position (softmax over words), so a word that draws little attention stays dark.
        vmax = float(np.max(maps[: len(words)])) if len(words) else 1.0
        label = _caption(f"{name}: 0 to {vmax:.3g}", max(60, tile_width // 3), size)
        row: list[Image.Image] = [label]
        for k, word in enumerate(words):
            tile = overlay_heatmap(image, maps[k], vmin=0.0, vmax=vmax)
            row.append(with_caption(_fit(tile, tile_width), f'"{word}"', size))
        if words:
            row.append(colour_bar(tile_h, 0.0, vmax, size))
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
