"""The ``lads-stats`` picture (PIL; matplotlib is not a dependency): paper Fig. 4a-d plus Fig. 7's words.

Six panels of :data:`PANEL` pixels on a :data:`SIZE` canvas: (a) filter selection rates, each gated
bottleneck's filters sorted by rate; (b) layer selection rate per gated unit; (c) kept layers per
expression (backbone and fusion histograms); (d) kept filters per expression and stage (min-max range,
mean +- std, as a fraction of the stage's gated filters); (e) words preferring the backbone / the fusion
module (Fig. 7); (f) the counts of never / always / dynamic gates.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from langground.inference.style import PALETTE, font

PANEL = (420, 400)
SIZE = (3 * PANEL[0], 2 * PANEL[1])
_PAD, _GRAY, _AX = 46, (170, 170, 170), (60, 60, 60)
_FUSION = (213, 94, 0)


def _frame(d: ImageDraw.ImageDraw, x0: int, y0: int, title: str) -> tuple[int, int, int, int]:
    """Draw a panel's title and axes; returns the plot area ``(left, top, right, bottom)``."""
    d.text((x0 + 10, y0 + 8), title, fill=(0, 0, 0), font=font(14))
    box = (x0 + _PAD, y0 + 36, x0 + PANEL[0] - 14, y0 + PANEL[1] - 40)
    d.line([(box[0], box[1]), (box[0], box[3]), (box[2], box[3])], fill=_AX, width=1)
    return box


def _yticks(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], top: float, fmt: str = "{:.2f}") -> None:
    for k in range(5):
        v = top * k / 4
        y = box[3] - (box[3] - box[1]) * k / 4
        d.line([(box[0] - 3, y), (box[0], y)], fill=_AX)
        d.text((box[0] - 40, y - 6), fmt.format(v), fill=_AX, font=font(10))


def _filters_panel(d, x0, y0, stats) -> None:
    box = _frame(d, x0, y0, "(a) filter selection rate (sorted per layer)")
    _yticks(d, box, 1.0)
    rows = [u for u in stats["units"] if u.get("filter_rates")]
    w, h = box[2] - box[0], box[3] - box[1]
    for k, u in enumerate(rows):
        rates = sorted(u["filter_rates"], reverse=True)
        n = len(rates)
        pts = [(box[0] + w * (i + 0.5) / n, box[3] - h * r) for i, r in enumerate(rates)]
        d.line(pts if len(pts) > 1 else pts * 2, fill=PALETTE[k % len(PALETTE)], width=2)
    d.text((box[0], box[3] + 6), "filters of each gated bottleneck, by rate", fill=_AX, font=font(10))


def _layers_panel(d, x0, y0, stats) -> None:
    box = _frame(d, x0, y0, "(b) layer selection rate per unit")
    _yticks(d, box, 1.0)
    units = stats["units"]
    w, h = box[2] - box[0], box[3] - box[1]
    bw = w / max(len(units), 1)
    for k, u in enumerate(units):
        colour = PALETTE[0] if u["kind"] == "bottleneck" else _FUSION
        top = box[3] - h * u["rate"]
        d.rectangle([box[0] + k * bw + 1, top, box[0] + (k + 1) * bw - 2, box[3]], fill=colour)
    d.text((box[0], box[3] + 6), "blue: bottlenecks   orange: fusion attn/FFN", fill=_AX, font=font(10))


def _hist(d, box, hist: list[int], colour, frac: tuple[float, float]) -> None:
    """Bars of ``hist`` (expressions keeping k units) in the horizontal slice ``frac`` of ``box``."""
    n = sum(hist) or 1
    left = box[0] + (box[2] - box[0]) * frac[0]
    w = (box[2] - box[0]) * (frac[1] - frac[0])
    h = box[3] - box[1]
    bw = w / max(len(hist), 1)
    for k, c in enumerate(hist):
        top = box[3] - h * c / n
        d.rectangle([left + k * bw + 1, top, left + (k + 1) * bw - 1, box[3]], fill=colour)
        if len(hist) <= 16 or k % 2 == 0:
            d.text((left + k * bw + bw / 2 - 3, box[3] + 4), str(k), fill=_AX, font=font(9))


def _kept_layers_panel(d, x0, y0, stats) -> None:
    box = _frame(d, x0, y0, "(c) kept layers per expression")
    _yticks(d, box, 1.0, "{:.0%}")
    lay = stats["layers"]
    _hist(d, box, lay["backbone"]["histogram"], PALETTE[0], (0.0, 0.48))
    _hist(d, box, lay["fusion"]["histogram"], _FUSION, (0.52, 1.0))
    b, f = lay["backbone"], lay["fusion"]
    d.text(
        (box[0], box[3] + 20),
        f"backbone {b['mean']:.1f}/{b['total']} (min {b['min']})   fusion {f['mean']:.1f}/{f['total']}",
        fill=_AX,
        font=font(10),
    )


def _kept_filters_panel(d, x0, y0, stats) -> None:
    box = _frame(d, x0, y0, "(d) kept filters per stage (fraction)")
    _yticks(d, box, 1.0)
    stages = stats["filters"]
    w, h = box[2] - box[0], box[3] - box[1]
    bw = w / max(len(stages), 1)
    for k, (name, s) in enumerate(stages.items()):
        t = max(s["total"], 1)
        cx = box[0] + bw * (k + 0.5)
        lo, hi = box[3] - h * s["min"] / t, box[3] - h * s["max"] / t
        d.line([(cx, lo), (cx, hi)], fill=_GRAY, width=3)
        lo_f, hi_f = max(0.0, s["mean"] - s["std"]) / t, min(float(t), s["mean"] + s["std"]) / t
        m0, m1 = box[3] - h * lo_f, box[3] - h * hi_f
        d.rectangle([cx - bw * 0.2, m1, cx + bw * 0.2, m0], outline=PALETTE[2], width=2)
        ym = box[3] - h * s["mean"] / t
        d.line([(cx - bw * 0.25, ym), (cx + bw * 0.25, ym)], fill=PALETTE[5], width=3)
        d.text((cx - 24, box[3] + 4), f"{name} /{s['total']}", fill=_AX, font=font(10))


def _words_panel(d, x0, y0, stats) -> None:
    d.text((x0 + 10, y0 + 8), "(e) words -> backbone | fusion (Fig. 7)", fill=(0, 0, 0), font=font(14))
    wa = stats["word_assignment"]
    words = wa["words"]
    for col, (key, colour) in enumerate((("top_backbone", PALETTE[0]), ("top_fusion", _FUSION))):
        x = x0 + 12 + col * (PANEL[0] // 2)
        for i, w in enumerate(wa[key][:14]):
            y = y0 + 40 + i * 23
            score = words[w]["backbone" if col == 0 else "fusion"]
            d.rectangle([x, y + 3, x + 70 * score, y + 17], fill=colour)
            d.text((x + 74, y + 2), f"{w[:14]} {score:.2f}", fill=(0, 0, 0), font=font(11))


def _summary_panel(d, x0, y0, stats) -> None:
    d.text((x0 + 10, y0 + 8), "(f) gates over the split", fill=(0, 0, 0), font=font(14))
    s = stats["summary"]
    lines = [f"expressions: {stats['expressions']}", f"distinct subnets: {stats['distinct_subnets']}"]
    for key, label in (("layer_gates", "layer gates"), ("filter_gates", "filter gates")):
        c = s[key]
        lines.append(f"{label}: {c['gates']}")
        lines.append(f"  never on {c['never']}, always on {c['always']}, dynamic {c['dynamic']}")
    lines.append(f"mean layer rate {s['mean_layer_rate']:.2f}, filter rate {s['mean_filter_rate']:.2f}")
    for i, line in enumerate(lines):
        d.text((x0 + 14, y0 + 44 + i * 24), line, fill=(0, 0, 0), font=font(13))


def draw_gate_stats(stats: dict[str, Any], title: str = "") -> Image.Image:
    """The six panels of :func:`~langground.inference.lads_stats.gate_statistics`'s result, ``SIZE`` px."""
    img = Image.new("RGB", SIZE, (255, 255, 255))
    d = ImageDraw.Draw(img)
    panels = (_filters_panel, _layers_panel, _kept_layers_panel, _kept_filters_panel, _words_panel)
    for k, panel in enumerate((*panels, _summary_panel)):
        x0, y0 = (k % 3) * PANEL[0], (k // 3) * PANEL[1]
        panel(d, x0, y0, stats)
        d.rectangle([x0, y0, x0 + PANEL[0] - 1, y0 + PANEL[1] - 1], outline=(225, 225, 225))
    if title:
        d.text(
            (SIZE[0] - 10 - d.textlength(title, font=font(11)), SIZE[1] - 16), title, fill=_AX, font=font(11)
        )
    return img


__all__ = ["PANEL", "SIZE", "draw_gate_stats"]
