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


def _resolve_train_config(preset: str | None, overrides: list[str], resume: Path | None):  # -> Config
    from langground.config import apply_overrides, load_config, load_preset

    if preset is not None:
        return load_preset(preset, overrides)
    if resume is not None:
        config_file = resume / "config.yaml"
        if not config_file.is_file():
            raise LanggroundError(f"{resume}: cannot resume: not a run directory (config.yaml missing)")
        return apply_overrides(load_config(config_file), overrides).validate()
    raise LanggroundError("no config: pass --preset NAME (see `langground presets`) or --resume RUN_DIR")


@user_errors
def train(
    preset: str = typer.Option(
        None, "--preset", "-p", help="Preset name (`langground presets`) or a YAML file."
    ),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.path=value."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (must be new or empty)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this directory."),
) -> None:
    """Train a model from a preset; checkpoints, metrics.jsonl and config.yaml go to the run directory."""
    from langground.engine.distributed import env_world
    from langground.engine.evaluate import print_result
    from langground.engine.train import TrainingDiverged
    from langground.engine.train import train as run_training

    if resume is not None and out is not None and resume.resolve() != out.resolve():
        raise LanggroundError(f"--out {out} and --resume {resume} name different run directories")
    config = _resolve_train_config(preset, overrides, resume)
    run_dir = resume or out or (Path(config.run.out_dir) if config.run.out_dir else None)
    if run_dir is None:
        raise LanggroundError("no run directory: pass --out RUN_DIR")
    try:
        result = run_training(config, run_dir, resume=resume is not None, console=err_console)
    except TrainingDiverged as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if not env_world().is_main:  # the process group is gone by now: ask torchrun's environment
        return
    if result.status == "interrupted":
        err_console.print(
            f"interrupted at step {result.step}/{result.total_steps}; checkpoint {result.last_checkpoint}\n"
            f"continue with: langground train --resume {run_dir}",
            highlight=False,
        )
        raise typer.Exit(code=130)
    summary = Table(title=f"run {run_dir}", show_header=False)
    summary.add_row("status", result.status)
    summary.add_row(
        "steps",
        f"{result.step}/{result.total_steps} ({result.epoch:.2f} epochs, "
        f"{result.train_seconds / 60:.1f} min)",
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
        print_result(res, console, title=f"test {split}")


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
) -> None:
    """Evaluate a checkpoint on a split: every metric of its task, overall and per family."""
    from langground.engine.distributed import env_world
    from langground.engine.evaluate import evaluate_checkpoint, print_result

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
    )
    if not env_world().is_main:
        return
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    else:
        print_result(result, console)
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
