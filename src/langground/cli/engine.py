"""``langground train`` / ``eval`` / ``presets``: the engine on the command line.

Distributed: ``torchrun --nproc_per_node N $(which langground) train --preset P --out RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from langground.cli._common import console, err_console, fail, user_errors
from langground.errors import LanggroundError


def _resolve_train_config(preset: str | None, overrides: list[str], resume_dir: Path | None):  # -> Config
    from langground.config import apply_overrides, load_config, load_preset

    if preset is not None:
        return load_preset(preset, overrides)
    if resume_dir is not None:
        config_file = resume_dir / "config.yaml"
        if not config_file.is_file():
            raise LanggroundError(f"{resume_dir}: cannot resume: not a run directory (config.yaml missing)")
        return apply_overrides(load_config(config_file), overrides).validate()
    raise LanggroundError("no config: pass --preset NAME (see `langground presets`) or --resume RUN_DIR")


def _resume_dir(resume: bool, run_dir: Path | None, out: Path | None) -> Path | None:
    """The run directory ``--resume`` continues: ``RUN_DIR`` or ``--out`` (the same one if both)."""
    if not resume:
        if run_dir is not None:
            raise LanggroundError(
                f"unexpected argument {run_dir}: a run directory argument is for --resume; a new run takes "
                "--out RUN_DIR"
            )
        return None
    if run_dir is not None and out is not None and run_dir.resolve() != out.resolve():
        raise LanggroundError(f"--out {out} and --resume {run_dir} name different run directories")
    where = run_dir or out
    if where is None:
        raise LanggroundError("--resume needs the run directory: --resume RUN_DIR, or --out RUN_DIR --resume")
    return where


@user_errors
def train(
    run_dir: Path = typer.Argument(
        None, metavar="RUN_DIR", help="With --resume: the run directory to continue (or use --out)."
    ),
    preset: str = typer.Option(
        None, "--preset", "-p", help="Preset name (`langground presets`) or a YAML file."
    ),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.path=value."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (new or empty; with --resume, the run to continue)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in RUN_DIR / --out from its newest checkpoint (its config.yaml, or --preset "
        "with the same settings). A finished run (all steps, or run.max_minutes spent) is refused: raise "
        "run.max_steps / run.epochs / run.max_minutes with --set.",
    ),
) -> None:
    """Train a model from a preset; checkpoints, metrics.jsonl and config.yaml go to the run directory.

    Continue a stopped run with `train --resume RUN_DIR` or `train --preset P --out RUN_DIR --resume`.
    """
    from langground.engine.distributed import env_world
    from langground.engine.train import TrainingDiverged
    from langground.engine.train import train as run_training

    resume_dir = _resume_dir(resume, run_dir, out)
    config = _resolve_train_config(preset, overrides, resume_dir)
    target = resume_dir or out or (Path(config.run.out_dir) if config.run.out_dir else None)
    if target is None:
        raise LanggroundError("no run directory: pass --out RUN_DIR")
    try:
        result = run_training(config, target, resume=resume, console=err_console)
    except TrainingDiverged as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if not env_world().is_main:  # the process group is gone by now: ask torchrun's environment
        return
    if result.status == "interrupted":
        err_console.print(
            f"interrupted at step {result.step}/{result.total_steps}; checkpoint {result.last_checkpoint}\n"
            f"continue with: langground train --resume {target}",
            highlight=False,
        )
        raise typer.Exit(code=130)
    summary = Table(title=f"run {target}", show_header=False)
    summary.add_row("status", result.status)
    summary.add_row(
        "steps",
        f"{result.step}/{result.total_steps} ({result.epoch:.2f} epochs, "
        f"{result.train_seconds / 60:.1f} min)",
    )
    if result.status == "time_limit":
        summary.add_row(
            "time limit",
            f"run.max_minutes={config.run.max_minutes:g} spent; to train on: langground train --resume "
            f"{target} --set run.max_minutes=M",
        )
    if result.best_value is not None:
        summary.add_row(
            f"best val {result.main_metric}", f"{100 * result.best_value:.2f}% (step {result.best_step})"
        )
    if result.best_checkpoint is not None:
        summary.add_row("best checkpoint", str(result.best_checkpoint))
    summary.add_row("last checkpoint", str(result.last_checkpoint))
    console.print(summary)
    for split, res in result.test.items():
        print_eval_result(res, console, title=f"test {split}")


def print_eval_result(result, console, title: str | None = None) -> None:  # result: EvalResult
    """The task's own primary metric first, then the table: its metric family first, metrics derived
    from other outputs (a RES model's boxes: the bounding boxes of its masks) after it, named as such."""
    from langground.engine.metrics.evaluator import metric_rows
    from langground.tasks import get_task

    main, name = result.main_value, result.main_metric
    own = name.split("/")[0]
    derived_families = set(get_task(result.task).derived_metrics)
    heading = title or f"{result.dataset} {result.split} ({result.task})".strip()
    if main is not None:
        console.print(
            f"{heading}: {name} = {100 * main:.2f}%  (primary metric of task {result.task}; "
            f"{result.count} samples, {result.seconds:.1f}s)",
            highlight=False,
        )
    rows = metric_rows(result.metrics)
    derived = sorted({family for family, _, _ in rows if family in derived_families})
    table = Table(title=heading)
    table.add_column("task", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    primary = [r for r in rows if r[0] == own and f"{r[0]}/{r[1]}" == name]
    for family, metric, value in [
        *primary,
        *(r for r in rows if r[0] == own and r not in primary),
        *(r for r in rows if r[0] != own),
    ]:
        label = f"{family} (derived)" if family in derived_families else family
        table.add_row(label, metric, value, style="bold" if f"{family}/{metric}" == name else None)
    console.print(table)
    if derived:
        console.print(
            f"derived: {', '.join(f'{d}/*' for d in derived)} score this {result.task} model's outputs with "
            f"another task's metric (e.g. the bounding box of each predicted mask); the task's own metric is "
            f"{name}",
            highlight=False,
            soft_wrap=True,
        )
    if result.protocol:
        console.print(f"protocol: {result.protocol}", highlight=False, soft_wrap=True)


@user_errors
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory, or a run directory (its best/)."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root directory."),
    split: str = typer.Option(..., "--split", help="Split to evaluate (e.g. val, testA, cogentB)."),
    dataset: str = typer.Option(
        None, "--dataset", help="Dataset name for open_dataset (default: the run's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    save_predictions: Path = typer.Option(None, "--save-predictions", help="Write every prediction (JSONL)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Evaluation batch size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    workers: int = typer.Option(None, "--workers", min=0, help="Data-loader workers (default: the run's)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N records of the split."),
    mask_threshold: float = typer.Option(
        None, "--mask-threshold", min=0.0, max=1.0, help="Binarise masks at this probability (RES, GRES)."
    ),
    pick_threshold_on: str = typer.Option(
        None,
        "--pick-threshold-on",
        help="Pick the mask threshold with the best oIoU on this split first (DMN's protocol: val).",
    ),
) -> None:
    """Evaluate a checkpoint on a split: every metric of its task, overall and per family."""
    from langground.engine.distributed import env_world
    from langground.engine.evaluate import evaluate_checkpoint

    if pick_threshold_on is not None:
        if mask_threshold is not None:
            raise LanggroundError("--mask-threshold and --pick-threshold-on: give one of them, not both")
        from langground.engine.metrics.threshold_sweep import pick_mask_threshold

        sweep = pick_mask_threshold(checkpoint, data, pick_threshold_on, dataset=dataset, device=device)
        mask_threshold = sweep["best_threshold"]
        err_console.print(
            f"mask threshold {mask_threshold:g}: best oIoU {100 * sweep['best']['res/oiou']:.2f} "
            f"on {pick_threshold_on}",
            highlight=False,
        )

    result = evaluate_checkpoint(
        checkpoint,
        data,
        split,
        dataset=dataset,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        limit=limit,
        save_predictions=save_predictions,
        progress=not as_json,
        console=err_console,
        mask_threshold=mask_threshold,
    )
    if not env_world().is_main:
        return
    if as_json:
        payload = result.to_json()
        if mask_threshold is not None:
            payload["mask_threshold"] = mask_threshold
        typer.echo(json.dumps(payload, indent=1))
    else:
        print_eval_result(result, console)
        if save_predictions is not None:
            console.print(f"predictions: {save_predictions}", highlight=False)


@user_errors
def presets(
    name: str = typer.Argument(None, help="Show this preset's resolved config (YAML)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.path=value."),
) -> None:
    """List the shipped presets, or print one fully resolved."""
    from langground.config import config_to_yaml, list_presets, load_preset

    if name is None:
        if overrides:
            raise fail("--set needs a preset NAME")
        table = Table(title="presets")
        table.add_column("name", style="bold")
        table.add_column("description")
        for preset, description in list_presets().items():
            table.add_row(preset, description)
        console.print(table)
        return
    typer.echo(config_to_yaml(load_preset(name, overrides)), nl=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("presets")(presets)
