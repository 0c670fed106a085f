"""Pictures of predictions: translucent masks, thick boxes, readable labels, attention heat maps, grids.

Everything is drawn with PIL on the ORIGINAL image (results are in its pixels), so a picture shows exactly
what the numbers say. Sizes (line width, font) scale with the image, so a 96-pixel synthetic scene and a
640-pixel photo both stay legible; a label never covers a predicted object: it sits next to its box, or in
a legend strip under the image when there is no room (small images, crowded scenes).

This module draws the explanation figure (:func:`draw_explanation`) and is the one place to import every
picture helper from; they live in :mod:`~langground.inference.style` (palette, fonts, sizes),
:mod:`~langground.inference.draw` (masks, boxes, labels), :mod:`~langground.inference.layout` (label
placement, legend and caption strips, grids) and :mod:`~langground.inference.heatmaps` (colour ramp,
heat-map overlays, colour bar).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

# ``name as name``: private helpers stay importable from here, as before the split (tests reach some).
from langground.inference.draw import _box_of as _box_of
from langground.inference.draw import _boxes_of as _boxes_of
from langground.inference.draw import _erode as _erode
from langground.inference.draw import _short as _short
from langground.inference.draw import (
    draw_box,
    draw_grounding_tile,
    draw_label,
    draw_predictions,
    overlay_mask,
    prediction_label,
)
from langground.inference.heatmaps import _RAMP as _RAMP
from langground.inference.heatmaps import colour_bar, heatmap, overlay_heatmap
from langground.inference.layout import Rect, _caption, _fit, grid, stack, with_caption
from langground.inference.layout import _box_candidates as _box_candidates
from langground.inference.layout import _draw_filled_label as _draw_filled_label
from langground.inference.layout import _label_extent as _label_extent
from langground.inference.layout import _legend as _legend
from langground.inference.layout import _overlaps as _overlaps
from langground.inference.layout import _place as _place
from langground.inference.layout import _wrap_px as _wrap_px
from langground.inference.style import BAD, GOOD, PALETTE, TRUTH, font, label_size, line_width
from langground.inference.style import _text_color as _text_color
from langground.text.tokenizer import tokenize

__all__ = [
    "BAD",
    "GOOD",
    "PALETTE",
    "TRUTH",
    "Rect",
    "colour_bar",
    "draw_box",
    "draw_explanation",
    "draw_grounding_tile",
    "draw_label",
    "draw_predictions",
    "font",
    "grid",
    "heatmap",
    "label_size",
    "line_width",
    "overlay_heatmap",
    "overlay_mask",
    "prediction_label",
    "stack",
    "with_caption",
]


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
