"""``langground data synth``: generate the built-in synthetic referring world (registered by cli/data.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from langground.cli._common import console, user_errors
from langground.errors import LanggroundError


def parse_size(size: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)``; a one-line error otherwise."""
    parts = size.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise LanggroundError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(parts[0]), int(parts[1])


@user_errors
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (must not exist, or be empty)."),
    images: int = typer.Option(2000, "--images", "-n", help="Number of images to generate."),
    seed: int = typer.Option(0, "--seed", help="World seed: the same seed writes the same bytes."),
    size: str = typer.Option("320x240", "--size", help="Image size WIDTHxHEIGHT in pixels."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", help="Processes (default: all usable cores)."
    ),
    no_target_rate: float = typer.Option(
        0.1, "--no-target-rate", help="Fraction of referring expressions that refer to nothing."
    ),
    cogent: bool = typer.Option(
        True,
        "--cogent/--no-cogent",
        help="CoGenT: draw train/val/testA/testB under condition A and add split cogentB (condition B).",
    ),
) -> None:
    """Generate the synthetic referring world: images, masks, expressions and questions in the COCO /
    gRefCOCO / refer / CLEVR on-disk formats."""
    from langground.data.synthetic import SynthConfig, generate_world
    from langground.data.synthetic.writer import check_output_dir

    if workers is not None and workers < 1:
        raise LanggroundError(f"--workers {workers}: expected at least 1")
    config = SynthConfig(
        images=images, seed=seed, size=parse_size(size), no_target_rate=no_target_rate, cogent=cogent
    )
    check_output_dir(out)  # fail before the progress bar shows
    # auto_refresh=False: no refresh thread, so worker processes can be forked safely.
    progress = Progress(
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeRemainingColumn(),
        console=console,
        auto_refresh=False,
        transient=False,
    )
    task = progress.add_task("synth", total=images)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total, refresh=True)

    start = time.perf_counter()
    with progress:
        path = generate_world(out, config, workers=workers, progress=on_progress)
    elapsed = time.perf_counter() - start
    manifest = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    table = Table(title=f"synthetic world -> {path}")
    cols = ("images", "objects", "refs", "expressions", "no_target_expressions", "questions")
    table.add_column("split")
    for c in cols:
        table.add_column(c.replace("_expressions", ""), justify="right")
    totals = dict.fromkeys(cols, 0)
    for split, counts in manifest["counts"].items():
        table.add_row(split, *(str(counts.get(c, 0)) for c in cols))
        for c in cols:
            totals[c] += counts.get(c, 0)
    table.add_row("all", *(str(totals[c]) for c in cols), style="bold")
    console.print(table)
    fams = ", ".join(f"{k} {v}" for k, v in manifest["expression_families"].items())
    console.print(f"expression families: {fams}")
    console.print(
        f"{images} images in {elapsed:.1f} s ({images / max(elapsed, 1e-9):.1f} images/s), "
        f"{totals['expressions'] / max(images, 1):.2f} expressions/image"
    )
