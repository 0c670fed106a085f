"""``langground data show``: one record drawn for a person to look at.

The image with a translucent mask (and its outline), one numbered box per referent, and a caption
panel below the image (never on top of it) with the expression, the answer for VQA and the ids.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from langground.data.images import load_image
from langground.tasks import get_task
from langground.types import GroundingRecord

MASK_RGB = (30, 144, 255)
BOX_RGB = [(255, 59, 48), (255, 204, 0), (52, 199, 89), (175, 82, 222), (255, 149, 0), (90, 200, 250)]
MIN_WIDTH = 560  # small (synthetic) images are enlarged so the caption stays readable


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def render_record(
    record: GroundingRecord,
    image: Image.Image | None = None,
    mask: np.ndarray | None = None,
    task: str | None = None,
) -> Image.Image:
    """Draw ``record`` (image, mask, boxes, text, answer) and return the picture."""
    img = image if image is not None else load_image(record.image_path, record.sample_id)
    if mask is None and record.mask_loader is not None:
        mask = record.load_mask()
    scale = max(1, math.ceil(MIN_WIDTH / img.width)) if img.width < MIN_WIDTH else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
        if mask is not None:
            mask = np.kron(mask, np.ones((scale, scale), np.uint8))
    w, h = img.size
    line = max(2, round(min(w, h) / 180))
    canvas = img.convert("RGBA")
    if mask is not None and mask.shape == (h, w) and mask.any():
        overlay = np.zeros((h, w, 4), np.uint8)
        overlay[mask != 0] = (*MASK_RGB, 110)
        overlay[_outline(mask, line)] = (*MASK_RGB, 255)
        canvas = Image.alpha_composite(canvas, Image.fromarray(overlay, "RGBA"))
    draw = ImageDraw.Draw(canvas)
    label_font = _font(max(12, line * 7))
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4) * scale
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        color = BOX_RGB[k % len(BOX_RGB)]
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=line + 2)  # dark halo: visible on any photo
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
        if len(boxes) > 1:
            tag = str(k + 1)
            tx, ty = x0 + line, y0 + line
            bb = draw.textbbox((tx, ty), tag, font=label_font)
            draw.rectangle([bb[0] - 2, bb[1] - 2, bb[2] + 2, bb[3] + 2], fill=color)
            draw.text((tx, ty), tag, fill=(0, 0, 0), font=label_font)
    return _with_caption(
        canvas.convert("RGB"),
        record,
        (task is not None and get_task(task).needs_answers) or record.answer is not None,
    )


def _with_caption(img: Image.Image, record: GroundingRecord, question: bool) -> Image.Image:
    w, h = img.size
    size = max(14, min(32, w // 32))
    font, small = _font(size), _font(max(11, int(size * 0.75)))
    chars = max(20, int(w / (size * 0.55)))
    lines: list[tuple[str, object, tuple[int, int, int]]] = []
    kind = "question" if question else "expression"
    for t in textwrap.wrap(f'{kind}: "{record.text}"', chars) or [f"{kind}: (empty)"]:
        lines.append((t, font, (0, 0, 0)))
    if record.answer is not None:
        lines.append((f"answer: {record.answer}", font, (0, 100, 0)))
    n = len(record.boxes)
    if record.no_target:
        lines.append(("no target: the expression refers to nothing in the image", font, (200, 0, 0)))
    elif not question:
        what = f"{n} referent" + ("s" if n != 1 else "")
        lines.append((what + (" (union mask)" if n > 1 and record.mask_loader else ""), small, (60, 60, 60)))
    info = f"{record.dataset} / {record.split} / id {record.sample_id} / image {record.image_id}"
    if record.family:
        info += f" / family {record.family}"
    lines.append((info, small, (110, 110, 110)))
    pad = size // 2
    probe = ImageDraw.Draw(img)
    heights = [probe.textbbox((0, 0), t, font=f)[3] + pad // 2 for t, f, _ in lines]  # type: ignore[arg-type]
    out = Image.new("RGB", (w, h + sum(heights) + 2 * pad), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    y = h + pad
    for (t, f, color), dy in zip(lines, heights, strict=True):
        draw.text((pad, y), t, fill=color, font=f)  # type: ignore[arg-type]
        y += dy
    return out
