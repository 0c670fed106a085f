"""Drawing of predictions: translucent masks, thick boxes and readable labels, on the ORIGINAL image.

Results are in the original image's pixels, so a picture shows exactly what the numbers say; a label never
covers a predicted object (see :mod:`langground.inference.layout` for where it goes instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from langground.inference.layout import (
    Rect,
    _box_candidates,
    _draw_filled_label,
    _fit,
    _label_extent,
    _legend,
    _overlaps,
    _place,
    with_caption,
)
from langground.inference.style import BAD, GOOD, PALETTE, TRUTH, _text_color, font, label_size, line_width


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


def draw_grounding_tile(
    image: Image.Image,
    expression: str,
    pred_box: Sequence[float] | Sequence[Sequence[float]] | None,
    gt_boxes: Sequence[Sequence[float]] = (),
    correct: bool | None = None,
    note: str = "",
    tile_width: int = 240,
    pred_mask: Any = None,
) -> Image.Image:
    """One cell of a prediction grid: dashed white ground truth, prediction green (hit) or red (miss).

    ``pred_box``: one xyxy box, a list of them (generalized REC) or None; ``pred_mask`` (bool array or
    PIL "L") is blended in the same colour under the boxes.
    """
    color = PALETTE[0] if correct is None else (GOOD if correct else BAD)
    out = image.convert("RGB")
    if pred_mask is not None:
        out = overlay_mask(out, pred_mask, color)
    draw = ImageDraw.Draw(out)
    width = line_width(out.size)
    for gt in gt_boxes:
        draw_box(draw, gt, TRUTH, width, dashed=True)
    boxes = [] if pred_box is None or not len(pred_box) else pred_box
    if boxes and not isinstance(boxes[0], Sequence | np.ndarray):
        boxes = [boxes]
    for box in boxes:
        draw_box(draw, box, color, width)
    size = max(11, tile_width // 17)
    caption = expression + (f"  [{note}]" if note else "")
    return with_caption(_fit(out, tile_width), caption, size)
