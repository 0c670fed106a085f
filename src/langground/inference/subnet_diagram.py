"""The subnet LADS chose for one expression (paper Fig. 6), drawn for ``langground predict --explain``.

:func:`subnet_layout` reads a gate pattern against the model's structure: per backbone stage its blocks
(gated or always run, open or closed, kept / total conv2 filters) and per fusion layer its attention and
FFN gates. :func:`draw_subnet` draws it: one row per stage, a box per block whose filled height is the
kept share of its filters (grey: closed, outlined: always runs), the stage's kept filter count at the
right, then the fusion layers as attention / FFN boxes (coloured: kept, grey: skipped). The layout keeps
the pixel rectangle of every box (``rect``), so what is drawn can be checked against the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from langground.inference.style import PALETTE, font

KEY_LAYER, KEY_FILTER = "subnet/layer", "subnet/filter"  # where the gates travel in a result's "attention"
OPEN, CLOSED, ALWAYS = PALETTE[0], (200, 200, 200), (90, 90, 90)
ATTN, FFN = PALETTE[1], PALETTE[2]
_BOX, _GAP, _ROW, _LEFT = 34, 8, 56, 70


def is_subnet_explanation(explanation: Mapping[str, Any] | None) -> bool:
    return bool(explanation) and KEY_LAYER in explanation


def gate_explanations(raw: dict[str, Any]) -> list[dict[str, np.ndarray]] | None:
    """Per sample ``{KEY_LAYER: (U,), KEY_FILTER: (C,)}`` hard gates from a gated model's outputs."""
    gates = (raw.get("aux") or {}).get("gates")
    if not gates:
        return None
    layer, filt = gates["layer"].float().cpu().numpy(), gates["filter"].float().cpu().numpy()
    return [{KEY_LAYER: layer[i], KEY_FILTER: filt[i]} for i in range(layer.shape[0])]


def subnet_layout(model: Any, layer: np.ndarray, filt: np.ndarray) -> dict[str, Any]:
    """The diagram's data for one pattern (``layer`` ``(U,)``, ``filt`` ``(C,)`` 0/1 gates)."""
    layer, filt = np.asarray(layer) > 0.5, np.asarray(filt) > 0.5
    units = model.units()
    index = {u["name"]: k for k, u in enumerate(units)}
    offsets = np.cumsum([0] + [u["filters"] for u in units])
    stages: dict[str, dict[str, Any]] = {}
    for name, block in model._blocks():
        stage = name.split(".")[0]
        width = int(block.conv2.out_channels)
        k = index.get(name)
        if k is None:  # the stage's first block: projection shortcut, always runs
            b = {"name": name, "gated": False, "open": True, "kept": width, "filters": width}
        else:
            on = bool(layer[k])
            kept = int(filt[offsets[k] : offsets[k + 1]].sum()) if on else 0
            b = {"name": name, "gated": True, "open": on, "kept": kept, "filters": width}
        s = stages.setdefault(stage, {"blocks": [], "kept_filters": 0, "filters": 0, "kept_layers": 0})
        s["blocks"].append(b)
        s["kept_filters"] += b["kept"]
        s["filters"] += width
        s["kept_layers"] += int(b["open"])
    fusion = [
        {
            "layer": j,
            "attention": bool(layer[index[f"fusion{j}.attention"]]),
            "ffn": bool(layer[index[f"fusion{j}.ffn"]]),
        }
        for j in range(len(model.fusion))
    ]
    return {"stages": stages, "fusion": fusion}


def draw_subnet(layout: dict[str, Any], expression: str = "") -> Image.Image:
    """Fig. 6 for one expression; fills ``layout``'s blocks / fusion entries with their ``rect``."""
    stages, fusion = layout["stages"], layout["fusion"]
    most = max([len(s["blocks"]) for s in stages.values()] + [2 * len(fusion)])
    width = max(_LEFT + most * (_BOX + _GAP) + 150, 620)
    height = 40 + _ROW * (len(stages) + 1) + 30
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((8, 6), f'subnet: "{expression}"'[:90], fill=(0, 0, 0), font=font(13))
    y = 34
    for name, s in stages.items():
        d.text((8, y + 10), name, fill=(0, 0, 0), font=font(12))
        x = _LEFT
        for b in s["blocks"]:
            rect = (x, y, x + _BOX, y + _BOX)
            b["rect"] = rect
            d.rectangle(rect, fill=CLOSED if not b["open"] else (255, 255, 255))
            if b["open"]:
                top = rect[3] - round(_BOX * b["kept"] / max(b["filters"], 1))
                d.rectangle((rect[0], top, rect[2], rect[3]), fill=OPEN if b["gated"] else ALWAYS)
            d.rectangle(rect, outline=(0, 0, 0) if b["gated"] else ALWAYS, width=1 if b["gated"] else 3)
            d.text((x, y + _BOX + 3), f"{b['kept']}", fill=(0, 0, 0), font=font(10))
            x += _BOX + _GAP
        d.text(
            (x + 6, y + 4),
            f"{s['kept_filters']}/{s['filters']} filters\n{s['kept_layers']}/{len(s['blocks'])} layers",
            fill=(0, 0, 0),
            font=font(11),
        )
        y += _ROW
    d.text((8, y + 10), "fusion", fill=(0, 0, 0), font=font(12))
    x = _LEFT
    for f in fusion:
        for kind, colour, tag in (("attention", ATTN, "A"), ("ffn", FFN, "F")):
            rect = (x, y, x + _BOX, y + _BOX)
            f[f"{kind}_rect"] = rect
            d.rectangle(rect, fill=colour if f[kind] else CLOSED, outline=(0, 0, 0))
            d.text((x + 11, y + 9), tag, fill=(0, 0, 0), font=font(13))
            x += _BOX + (2 if kind == "attention" else _GAP)
    kept = sum(int(f["attention"]) + int(f["ffn"]) for f in fusion)
    d.text((x + 6, y + 4), f"{kept}/{2 * len(fusion)} sublayers", fill=(0, 0, 0), font=font(11))
    d.text(
        (8, height - 20),
        "blue: kept share of a gated block's filters  grey: skipped  dark: always runs  A/F: attention/FFN",
        fill=(80, 80, 80),
        font=font(10),
    )
    return img


def draw_subnet_explanation(model: Any, explanation: Mapping[str, Any], expression: str) -> Image.Image:
    """:func:`draw_subnet` of the gates a result carries (``explanation`` from :func:`gate_explanations`)."""
    return draw_subnet(subnet_layout(model, explanation[KEY_LAYER], explanation[KEY_FILTER]), expression)


__all__ = [
    "KEY_FILTER",
    "KEY_LAYER",
    "draw_subnet",
    "draw_subnet_explanation",
    "gate_explanations",
    "is_subnet_explanation",
    "subnet_layout",
]
