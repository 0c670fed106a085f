"""Explanation maps: values -> a perceptually ordered colour ramp, blended over the image; colour bars."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from langground.inference.style import font

# Anchors of a perceptually ordered dark-blue -> yellow ramp (close to viridis), interpolated linearly.
_RAMP = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32
)


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
