"""``langground predict CKPT IMAGE "expression" [...]``: ground expressions in one image, draw or print them."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image
from rich.table import Table

from langground.cli._common import console, err_console, user_errors
from langground.errors import LanggroundError


def check_output_path(out: Path) -> str:
    """Fail early (before any model work) on an output the picture could not be written to.

    Returns the PIL format name of the output's extension.
    """
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise LanggroundError(
            f"{out}: unknown picture format {out.suffix or '(no extension)'!r}: use .png or .jpg"
        )
    if out.is_dir():
        raise LanggroundError(f"{out}: is a directory, expected a picture file name")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LanggroundError(f"{parent}: cannot create the output directory ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LanggroundError(f"{parent}: output directory is not writable")
    return fmt


def save_atomically(image: Image.Image, out: Path, fmt: str) -> None:
    """Write into a temp file next to ``out`` and rename: a failure never leaves a half-written picture."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=out.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _table(results: list[Any], vqa: bool) -> Table:
    table = Table(show_header=True, header_style="bold")
    if vqa:
        for col in ("question", "answer", "score"):
            table.add_column(col)
        for r in results:
            answers = r["answers"] if isinstance(r, dict) else r
            question = r["expression"] if isinstance(r, dict) else ""
            for k, a in enumerate(answers):
                table.add_row(question if k == 0 else "", a["answer"], f"{a['score']:.3f}")
        return table
    for col in ("expression", "box (xmin, ymin, xmax, ymax)", "score", "no-target", "mask px"):
        table.add_column(col)
    for r in results:
        box = r["box"]
        box_s = (
            "-"
            if box is None
            else f"{box['xmin']:.1f}, {box['ymin']:.1f}, {box['xmax']:.1f}, {box['ymax']:.1f}"
        )
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        nt = "-" if r["no_target"] is None else f"{r['no_target']:.3f}"
        area = "-" if r["mask"] is None else str(int((np.asarray(r["mask"]) > 127).sum()))
        table.add_row(r["expression"], box_s, score, nt, area)
    return table


@user_errors
def predict(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory, or a run directory (uses its best/)."),
    image: Path = typer.Argument(..., help="Image file (any size; RGB, RGBA, grey, palette, 16-bit)."),
    expressions: list[str] = typer.Argument(..., help="One or more referring expressions (or questions)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write a picture of the predictions (.png/.jpg)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (masks as COCO RLE)."),
    explain: bool = typer.Option(
        False, "--explain", help="Add per-word cross-modal attention maps of the last stages to the picture."
    ),
    stages: int = typer.Option(2, "--stages", min=1, help="How many of the last stages --explain shows."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Answers shown per question (VQA models)."),
) -> None:
    """Ground expressions in an image: box, mask and no-target probability in the image's own pixels."""
    from langground.inference.grounder import Grounder
    from langground.inference.images import load_image
    from langground.inference.visualize import draw_explanation, draw_predictions, stack

    fmt = check_output_path(out) if out is not None else None
    pil = load_image(image)  # unreadable / non-image file: one line, before the model is loaded
    grounder = Grounder.from_pretrained(checkpoint, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = grounder.predict(pil, list(expressions), explain=explain, top_k=top_k)
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    vqa = "answer" in grounder.spec.heads

    if out is not None:
        if vqa:
            # Questions have no region: the picture shows the image with the top answer per question.
            from langground.inference.visualize import with_caption

            lines = []
            for r in results:
                answers = r["answers"] if isinstance(r, dict) else r
                q = r["expression"] if isinstance(r, dict) else ""
                lines.append(f"{q} -> {answers[0]['answer']} ({answers[0]['score']:.2f})" if answers else q)
            picture = with_caption(pil, " | ".join(lines) or " ", max(12, pil.width // 40))
            if explain:
                blocks = [picture] + [
                    draw_explanation(pil, None, r["expression"], r["words"], _last(r["attention"], stages))
                    for r in results
                ]
                picture = stack([[b] for b in blocks])
        else:
            picture = draw_predictions(pil, results, list(expressions))
            if explain:
                blocks = [picture] + [
                    draw_explanation(pil, None, r["expression"], r["words"], _last(r["attention"], stages))
                    for r in results
                ]
                picture = stack([[b] for b in blocks])
        save_atomically(picture, out, fmt or "PNG")

    if as_json:
        print(
            json.dumps(
                {
                    "image": str(image),
                    "width": pil.width,
                    "height": pil.height,
                    "results": result_to_json(results),
                },
                indent=1,
            )
        )
    else:
        console.print(f"{image} ({pil.width}x{pil.height})", highlight=False)
        console.print(_table(results, vqa))
        if out is not None:
            console.print(f"wrote {out}", highlight=False)


def _last(attention: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The last ``n`` stages (the model lists them in forward order)."""
    names = list(attention)
    return {k: attention[k] for k in names[-n:]}
