"""``langground data``: list, stats, show and check any supported dataset; ``synth`` generates the world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from langground.cli._common import console, user_errors
from langground.cli.synth_cmd import synth
from langground.errors import DataError, LanggroundError

app = typer.Typer(
    help="Datasets: generate the synthetic world, list layouts, and stats / show / check any dataset.",
    no_args_is_help=True,
)
app.command("synth")(synth)

DATASET_HELP = "Dataset name (see `langground data list`); default: detected from the files under DIR."
TASK_HELP = "Task view for datasets with several (synth: rec, res, gref, gres, vqa)."


def _resolve(root: Path, dataset: str | None) -> list[str]:
    from langground.data import dataset_spec, detect_datasets

    if not root.exists():
        raise DataError(f"{root}: dataset root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is a file, expected a directory")
    if dataset:
        return [dataset_spec(dataset).name]
    found = detect_datasets(root)
    if not found:
        raise DataError(f"{root}: no known dataset layout found; pass --dataset (see `langground data list`)")
    return found


def _open(root: Path, name: str, split: str, task: str | None, **kw: Any) -> Any:
    from langground.data import open_dataset

    if task is not None:
        if name != "synth":
            raise LanggroundError(f"--task {task!r}: only the synth dataset has several task views")
        kw["task"] = task
    return open_dataset(root, name, split, **kw)


def _views(name: str, task: str | None) -> list[str | None]:
    # The synthetic world has three layouts; stats reports each unless one is asked for.
    if name == "synth" and task is None:
        return ["rec", "gref", "vqa"]
    return [task]


@app.command("list")
@user_errors
def list_cmd() -> None:
    """List the dataset names `open_dataset` and `--dataset` accept, with their layouts."""
    from langground.data import dataset_spec, list_datasets

    table = Table(title="datasets")
    for col in ("name", "layout", "description"):
        table.add_column(col)
    for name in list_datasets():
        spec = dataset_spec(name)
        table.add_row(name, spec.layout, spec.description)
    console.print(table)


@app.command("stats")
@user_errors
def stats(
    root: Path = typer.Argument(..., help="Dataset root directory."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    task: str | None = typer.Option(None, "--task", "-t", help=TASK_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts per split, family, no-target, objects and questions, for any layout."""
    from langground.data.stats import dataset_stats

    results = []
    for name in _resolve(root, dataset):
        for view in _views(name, task):
            results.append(dataset_stats(_open(root, name, "all", view)))
    if as_json:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    for st in results:
        _print_stats(st)


def _print_stats(st: dict[str, Any]) -> None:
    unit = "questions" if st["task"] == "vqa" else "expressions"
    cols = ["images", unit, "refs", "no_target", "multi_target", "boxes", "objects"]
    if st["task"] == "vqa":
        cols = ["images", unit, "objects"]
    table = Table(title=f"{st['dataset']} ({st['task']}) - {st['benchmark']} ({st['layout']} layout)")
    table.add_column("split")
    for c in cols:
        table.add_column(c.replace("_", "-"), justify="right")
    totals = dict.fromkeys(cols, 0)
    for split, counts in st["splits"].items():
        table.add_row(split, *(str(counts[c]) for c in cols))
        for c in cols:
            totals[c] += counts[c]
    if len(st["splits"]) > 1:
        table.add_row("all", *(str(totals[c]) for c in cols), style="bold")
    console.print(table)
    if st["families"]:
        splits = list(st["splits"])
        fam = Table(title=f"{st['dataset']} ({st['task']}) per family")
        fam.add_column("family")
        for s in splits:
            fam.add_column(s, justify="right")
        fam.add_column("all", justify="right", style="bold")
        for name, per in st["families"].items():
            fam.add_row(name, *(str(per.get(s, 0)) for s in splits), str(sum(per.values())))
        console.print(fam)
    if st.get("answers"):
        console.print("most frequent answers: " + ", ".join(f"{a} {n}" for a, n in st["answers"].items()))


@app.command("show")
@user_errors
def show(
    root: Path = typer.Argument(..., help="Dataset root directory."),
    split: str = typer.Option(..., "--split", "-s", help="Split name (e.g. train, val, testA)."),
    index: int = typer.Option(0, "--index", "-i", help="Record index within the split."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    task: str | None = typer.Option(None, "--task", "-t", help=TASK_HELP),
) -> None:
    """Draw one record: image, box(es), translucent mask, expression (and answer for VQA)."""
    from langground.data.draw import render_record

    name = _resolve(root, dataset)[0]
    ds = _open(root, name, split, task)
    if not -len(ds) <= index < len(ds):
        raise LanggroundError(
            f"--index {index}: split {split!r} of {name} has {len(ds)} records (0..{len(ds) - 1})"
        )
    if out.exists() and out.is_dir():
        raise LanggroundError(f"--out {out}: is a directory, expected a .png file path")
    rec = ds[index]
    picture = render_record(rec, task=ds.task)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    what = f"{len(rec.boxes)} box(es)" if not rec.no_target else "no target"
    console.print(f"{name}/{rec.split} #{index} (id {rec.sample_id}): {rec.text!r} - {what} -> {out}")


@app.command("check")
@user_errors
def check(
    root: Path = typer.Argument(..., help="Dataset root directory."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    split: str = typer.Option("all", "--split", "-s", help="Split to check (default: all)."),
    task: str | None = typer.Option(None, "--task", "-t", help=TASK_HELP),
    decode: bool = typer.Option(
        True, "--decode/--no-decode", help="Decode every image (slower, finds corrupt files)."
    ),
    masks: bool = typer.Option(True, "--masks/--no-masks", help="Decode masks and compare their areas."),
    area_tol: float = typer.Option(0.02, "--area-tol", help="Allowed relative mask-area disagreement."),
    max_offenders: int = typer.Option(5, "--max-offenders", help="Offenders listed per kind of problem."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Validate a dataset before a long run; exit code 1 when anything is wrong."""
    from langground.data.base import Problem
    from langground.data.check import KINDS, CheckReport, check_dataset

    reports = []
    for name in _resolve(root, dataset):
        try:
            # strict=False: malformed entries are skipped and reported, not fatal.
            ds = _open(root, name, split, task, strict=False)
        except DataError as e:
            # A file that cannot be read at all (not a pickle, not JSON, an unknown split...) is one problem.
            rep = CheckReport(name, split, task or "-", max_offenders=max_offenders)
            rep.add(Problem("unreadable file", name, str(e)))
            reports.append(rep)
            if not as_json:
                _print_report(rep, KINDS)
            continue
        progress = Progress(
            TextColumn(f"[bold]check {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=as_json,
        )
        with progress:
            bar = progress.add_task("records", total=len(ds))
            rep = check_dataset(
                ds,
                decode_images=decode,
                check_masks=masks,
                area_tol=area_tol,
                max_offenders=max_offenders,
                progress=lambda i, bar=bar, progress=progress: (
                    progress.update(bar, completed=i + 1) if i % 256 == 0 else None
                ),
            )
        reports.append(rep)
        if not as_json:
            _print_report(rep, KINDS)
    if as_json:
        data = [r.to_dict() for r in reports]
        typer.echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
    if any(not r.ok for r in reports):
        raise typer.Exit(code=1)


def _print_report(rep: Any, kinds: tuple[str, ...]) -> None:
    title = f"check {rep.dataset} / {rep.split} ({rep.task}): {rep.records} records, {rep.images} images"
    table = Table(title=title + (f", {rep.masks} masks" if rep.masks else ""))
    table.add_column("check")
    table.add_column("problems", justify="right")
    table.add_column("first offenders")
    for kind in kinds:
        n = rep.counts.get(kind, 0)
        offenders = "\n".join(f"{p.item}: {p.message}" for p in rep.offenders.get(kind, []))
        table.add_row(kind, str(n), offenders, style="red" if n else "green")
    console.print(table)
    if rep.ok:
        console.print(f"[green]ok[/]: {rep.dataset} / {rep.split} has no problems")
    else:
        total = sum(rep.counts.values())
        console.print(f"[red]{total} problem(s)[/] in {rep.dataset} / {rep.split}")
