"""The look shared by every picture: palette, fonts, text colour, line width and label size per image size.

Sizes scale with the image, so a 96-pixel synthetic scene and a 640-pixel photo both stay legible.
"""

from __future__ import annotations

import functools

from PIL import ImageFont

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
