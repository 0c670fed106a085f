"""The ``langground`` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="langground",
    help="Language-guided visual grounding: data, train, eval, predict, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from langground import __version__

        typer.echo(f"langground {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Language-guided visual grounding: data, train, eval, predict, bench."""


def _mount() -> None:
    # Each module owns one command group; mounting happens here so `langground --help` lists all.
    from langground.cli import data

    app.add_typer(data.app, name="data")
    from langground.cli.bench import bench, models

    app.command("bench")(bench)
    app.command("models")(models)
    from langground.cli.demo import demo
    from langground.cli.predict import predict
    from langground.cli.serve import serve  # FastAPI is imported only when serve runs

    app.command("serve")(serve)
    app.command("predict")(predict)
    from langground.cli.export import export

    app.command("export")(export)
    app.command("demo")(demo)
    from langground.cli import engine

    engine.register(app)  # train, eval, presets
    from langground.cli.lads_stats import lads_stats

    app.command("lads-stats")(lads_stats)


def main() -> None:
    _mount()
    app()
