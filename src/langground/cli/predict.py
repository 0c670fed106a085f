"""``langground predict CKPT INPUT [EXPRESSIONS...]``: ground expressions in images, draw or print them.

INPUT is an image file (its EXPRESSIONS are grounded in it: a table, or ``--json``, on stdout; ``--out``
a picture), a folder of images (each gets the same EXPRESSIONS) or a ``.jsonl`` file of
``{"image": PATH, "expression": TEXT}`` rows. A folder or a JSONL file gives one JSON line per result, on
stdout or written atomically to ``--results``, with a progress bar on stderr; ``--out`` is then a folder
that receives one picture per image. Nothing ever overwrites an input.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from langground.cli._common import console, err_console, user_errors

# The helpers stay importable from here, as before the split (``demo`` and the tests import some).
from langground.cli._predict_output import _last as _last
from langground.cli._predict_output import _table, mask_to_rle, render, result_to_json
from langground.cli._predict_paths import (
    _file_ids,
    _is_one_of,
    _writable_folder,
    check_output_path,
    plan_pictures,
    refuse_overwriting,
    save_atomically,
)
from langground.errors import LanggroundError

__all__ = [
    "check_output_path",
    "mask_to_rle",
    "plan_pictures",
    "predict",
    "refuse_overwriting",
    "render",
    "result_to_json",
    "save_atomically",
]


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
    backend: str = typer.Option(
        "torch", "--backend", help="torch, or onnx: CHECKPOINT is then a .onnx from `langground export`."
    ),
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

    if explain and backend == "onnx":
        raise LanggroundError(
            "--explain is not supported with --backend onnx (the graph has no attention maps)"
        )
    grounder = Grounder.from_pretrained(checkpoint, device=dev, batch_size=batch_size, backend=backend)
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
