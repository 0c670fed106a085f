"""What ``langground predict`` shows: the results table, JSON (masks as COCO RLE) and the picture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table


def result_to_json(result: Any) -> Any:
    """Grounder result -> JSON-able: masks as COCO RLE (+ area), attention maps dropped (words kept)."""
    if isinstance(result, list):
        return [result_to_json(r) for r in result]
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key == "attention":
            continue
        if key == "mask":
            out[key] = None if value is None else mask_to_rle(np.asarray(value) > 127)
        else:
            out[key] = value
    return out


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": rle["counts"].decode("ascii"),
        "area": int(mask.sum()),
    }


def _table(results: list[dict[str, Any]], shown: list[str], vqa: bool, box_threshold: float) -> Table:
    table = Table(show_header=True, header_style="bold")
    if vqa:
        for col in ("question", "answer", "score"):
            table.add_column(col)
        for r, question in zip(results, shown, strict=True):
            for k, a in enumerate(r["answers"]):
                table.add_row(question if k == 0 else "", a["answer"], f"{a['score']:.3f}")
        return table
    for col in ("expression", "box (xmin, ymin, xmax, ymax)", "score", "no-target", "mask px"):
        table.add_column(col)
    for r, text in zip(results, shown, strict=True):
        box, has_target = r["box"], r.get("has_target")
        if box is not None:
            box_s = f"{box['xmin']:.1f}, {box['ymin']:.1f}, {box['xmax']:.1f}, {box['ymax']:.1f}"
        elif has_target and r["mask"] is None:
            box_s = f"- (none above {box_threshold:.2f})"
        else:
            box_s = "-"
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        nt = "-" if r["no_target"] is None else f"{r['no_target']:.3f}"
        if has_target is not None:
            nt += " (target)" if has_target else " (no target)"
        area = "-" if r["mask"] is None else str(int((np.asarray(r["mask"]) > 127).sum()))
        table.add_row(text, box_s, score, nt, area)
    return table


def render(
    grounder: Any,
    image: Image.Image,
    results: list[dict[str, Any]],
    expressions: Sequence[str],
    explain: bool,
    stages: int,
    box_threshold: float,
) -> Image.Image:
    """The picture of one image's results (+ the attention rows with ``explain``)."""
    from langground.inference.visualize import draw_explanation, draw_predictions, stack, with_caption

    shown = [grounder.read_form(e) for e in expressions]
    if grounder.answers_questions:
        # Questions have no region: the picture shows the image with the top answer per question.
        lines = [
            f"{q} -> {r['answer']} ({r['score']:.2f})" if r["answer"] is not None else q
            for r, q in zip(results, shown, strict=True)
        ]
        picture = with_caption(image, " | ".join(lines) or " ", max(12, image.width // 40))
    else:
        picture = draw_predictions(image, results, shown, box_threshold=box_threshold)
    from langground.inference.subnet_diagram import draw_subnet_explanation, is_subnet_explanation

    if explain and results and is_subnet_explanation(results[0].get("attention")):
        # LADS: the subnet each expression chose (Fig. 6), next to the boxes
        pairs = zip(results, shown, strict=True)
        diagrams = [draw_subnet_explanation(grounder.model, r["attention"], q) for r, q in pairs]
        return stack([[picture, stack([[dg] for dg in diagrams])]])
    if explain:
        blocks = [picture] + [
            draw_explanation(image, None, q, r["words"], _last(r["attention"], stages))
            for r, q in zip(results, shown, strict=True)
        ]
        picture = stack([[b] for b in blocks])
    return picture


def _last(attention: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The last ``n`` stages (the model lists them in forward order)."""
    names = list(attention)
    return {k: attention[k] for k in names[-n:]}
