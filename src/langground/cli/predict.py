"""``langground predict CKPT INPUT [EXPRESSIONS...]``: ground expressions in images, draw or print them.

INPUT is an image file (its EXPRESSIONS are grounded in it: a table, or ``--json``, on stdout; ``--out``
a picture), a folder of images (each gets the same EXPRESSIONS) or a ``.jsonl`` file of
``{"image": PATH, "expression": TEXT}`` rows. A folder or a JSONL file gives one JSON line per result, on
stdout or written atomically to ``--results``, with a progress bar on stderr; ``--out`` is then a folder
that receives one picture per image. Nothing ever overwrites an input.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
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
    _writable_folder(out.parent, "output directory")
    return fmt


def _writable_folder(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise LanggroundError(f"{folder}: is a file, expected an {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LanggroundError(f"{folder}: cannot create the {what} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LanggroundError(f"{folder}: {what} is not writable")


def _file_ids(paths: Sequence[Path]) -> set[tuple[int, int]]:
    """(device, inode) of each existing path: the identity ``os.path.samefile`` compares."""
    ids = set()
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _is_one_of(path: Path, ids: set[tuple[int, int]]) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False  # does not exist (yet): it cannot be an input
    return (st.st_dev, st.st_ino) in ids


def refuse_overwriting(path: Path, inputs: set[tuple[int, int]], option: str) -> None:
    """A one-line error when ``path`` is one of the inputs (same file, whatever the spelling or link)."""
    if _is_one_of(path, inputs):
        raise LanggroundError(f"{path}: is an input file: {option} would overwrite it; choose another name")


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
    if explain:
        blocks = [picture] + [
            draw_explanation(image, None, q, r["words"], _last(r["attention"], stages))
            for r, q in zip(results, shown, strict=True)
        ]
        picture = stack([[b] for b in blocks])
    return picture


class _WarningPrinter:
    """Prints caught warnings as one ``warning:`` line each, every distinct message once per run."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, caught: Sequence[warnings.WarningMessage]) -> None:
        for w in caught:
            text = str(w.message)
            if text not in self.seen:
                self.seen.add(text)
                err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def plan_pictures(jobs: Sequence[Any], folder: Path, inputs: set[tuple[int, int]]) -> list[Path]:
    """``FOLDER/<image stem>.png`` per job; ``-2``, ``-3``... on name clashes and never an input file."""
    taken: set[str] = set()
    paths = []
    for job in jobs:
        stem, k = job.image.stem, 1
        while True:
            name = f"{stem}.png" if k == 1 else f"{stem}-{k}.png"
            if name not in taken and not _is_one_of(folder / name, inputs):
                break
            k += 1
        taken.add(name)
        paths.append(folder / name)
    return paths


@user_errors
def predict(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory, or a run directory (uses its best/)."),
    source: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help="An image file (any size and mode), a folder of images (each gets the EXPRESSIONS) or a .jsonl "
        'file of {"image": PATH, "expression": TEXT} rows (paths relative to the file).',
    ),
    expressions: list[str] | None = typer.Argument(
        None, help="Referring expressions (or questions); none for a .jsonl INPUT."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="A picture of the predictions (.png/.jpg); for a folder or .jsonl INPUT a folder that gets "
        "one <image name>.png per image. Never overwrites an input.",
    ),
    results_path: Path | None = typer.Option(
        None,
        "--results",
        help="Write one JSON line per result to this file, atomically (folder and .jsonl INPUTs print them "
        "on stdout otherwise).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (masks as COCO RLE)."),
    explain: bool = typer.Option(
        False, "--explain", help="Add per-word cross-modal attention maps of the last stages to the picture."
    ),
    stages: int = typer.Option(2, "--stages", min=1, help="How many of the last stages --explain shows."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Answers shown per question (VQA models)."),
    box_threshold: float | None = typer.Option(
        None,
        "--box-threshold",
        help="Generalized REC: keep the boxes scoring at least this (default: the checkpoint's "
        "postprocess.box_set_threshold).",
    ),
    no_target_threshold: float | None = typer.Option(
        None,
        "--no-target-threshold",
        help="Generalized REC/RES: answer 'no target' when its probability is at least this (default: the "
        "checkpoint's postprocess.no_target_threshold).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="(image, expression) pairs per forward."),
) -> None:
    """Ground expressions in images: boxes, masks and no-target decisions in each image's own pixels."""
    from langground.inference.batch import collect_jobs
    from langground.inference.grounder import Grounder, resolve_device
    from langground.inference.images import check_expressions, load_image

    # Everything the user handed over is checked before the model is loaded.
    kind, jobs = collect_jobs(source, expressions or [])
    if kind != "jsonl":
        check_expressions(jobs[0].expressions, None)
    inputs = _file_ids([j.image for j in jobs] + ([source] if kind == "jsonl" else []))
    fmt = None
    if out is not None and kind == "image":
        fmt = check_output_path(out)
        refuse_overwriting(out, inputs, "--out")
    elif out is not None:
        if Image.registered_extensions().get(out.suffix.lower()) and not out.is_dir():
            raise LanggroundError(
                f"{out}: for a {kind} INPUT, --out is a folder (one picture per image), not a picture file"
            )
        if kind == "folder" and _is_one_of(out, _file_ids([source])):
            raise LanggroundError(f"{out}: is the input folder: choose another folder for the pictures")
        _writable_folder(out, "output folder")
    if results_path is not None:
        if results_path.is_dir():
            raise LanggroundError(f"{results_path}: is a directory, expected a file name for the results")
        refuse_overwriting(results_path, inputs, "--results")
        _writable_folder(results_path.parent, "results folder")
    dev = resolve_device(device, option="--device")
    show_warnings = _WarningPrinter()
    if kind == "image":  # an unreadable image: one line, before the model is loaded
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pil = load_image(source)
        show_warnings(caught)

    grounder = Grounder.from_pretrained(checkpoint, device=dev, batch_size=batch_size)
    config = grounder.thresholds(box_threshold=box_threshold, no_target_threshold=no_target_threshold)
    if grounder.synthetic_only:
        err_console.print(
            f"[dim]note: this checkpoint was trained on the synthetic world only (config data.dataset="
            f"'synth', {len(grounder.vocab)}-word vocabulary): it knows that world's words and rendered "
            "scenes, not real photos[/]",
            highlight=False,
            soft_wrap=True,
        )
    options = {
        "explain": explain,
        "top_k": top_k,
        "box_threshold": box_threshold,
        "no_target_threshold": no_target_threshold,
    }
    if kind != "image":
        _predict_many(grounder, kind, jobs, out, results_path, inputs, options, stages, config, show_warnings)
        return

    texts = jobs[0].expressions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = grounder.predict(pil, texts, **options)
    show_warnings(caught)
    if out is not None:
        picture = render(grounder, pil, results, texts, explain, stages, config.box_set_threshold)
        save_atomically(picture, out, fmt or "PNG")
    if results_path is not None:
        from langground.inference.batch import JsonLinesWriter

        with JsonLinesWriter(results_path) as sink:
            for r in results:
                sink.write(
                    {"image": str(source), "width": pil.width, "height": pil.height, **result_to_json(r)}
                )
    if as_json:
        doc = {
            "image": str(source),
            "width": pil.width,
            "height": pil.height,
            "results": result_to_json(results),
        }
        print(json.dumps(doc, indent=1))
    else:
        console.print(f"{source} ({pil.width}x{pil.height})", highlight=False)
        shown = [grounder.read_form(t) for t in texts]
        console.print(_table(results, shown, grounder.answers_questions, config.box_set_threshold))
        for path in (out, results_path):
            if path is not None:
                console.print(f"wrote {path}", highlight=False)


def _predict_many(
    grounder: Any,
    kind: str,
    jobs: list[Any],
    out: Path | None,
    results_path: Path | None,
    inputs: set[tuple[int, int]],
    options: dict[str, Any],
    stages: int,
    config: Any,
    show_warnings: _WarningPrinter,
) -> None:
    """Folder / JSONL input: chunks of images through the model, a JSON line per result, a progress bar."""
    from langground.inference.batch import JsonLinesWriter, chunks
    from langground.inference.images import load_image

    pictures = dict(zip(map(id, jobs), plan_pictures(jobs, out, inputs), strict=True)) if out else {}
    progress = Progress(
        TextColumn("[bold]predict[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no bar in logs and pipes: it would only add blank lines
    )
    with JsonLinesWriter(results_path) as sink, progress:
        bar = progress.add_task("predict", total=len(jobs))
        for chunk in chunks(jobs, grounder.batch_size):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                images = []
                for job in chunk:
                    try:
                        images.append(load_image(job.image))
                    except LanggroundError as e:
                        prefix = f"{job.where}: " if job.source is not None else ""
                        raise LanggroundError(f"{prefix}{e}") from None
                per_image = grounder.predict(images, [job.expressions for job in chunk], **options)
            show_warnings(caught)
            for job, image, results in zip(chunk, images, per_image, strict=True):
                picture = pictures.get(id(job))
                if picture is not None:
                    drawn = render(
                        grounder, image, results, job.expressions, options["explain"], stages,
                        config.box_set_threshold,
                    )  # fmt: skip
                    save_atomically(drawn, picture, "PNG")
                for line, r in zip(job.lines, results, strict=True):
                    row: dict[str, Any] = {"image": str(job.image)}
                    if line is not None:
                        row["line"] = line
                    row.update(width=image.width, height=image.height, **result_to_json(r))
                    if picture is not None:
                        row["picture"] = str(picture)
                    sink.write(row)
                progress.advance(bar)
    where = f" to {results_path}" if results_path is not None else ""
    pics = f", {len(pictures)} pictures in {out}" if out is not None else ""
    err_console.print(f"{sink.count} results for {len(jobs)} images{where}{pics}", highlight=False)


def _last(attention: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The last ``n`` stages (the model lists them in forward order)."""
    names = list(attention)
    return {k: attention[k] for k in names[-n:]}
