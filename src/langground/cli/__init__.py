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


def _mount() -> None:
    # Each module owns one command group; mounting happens here so `langground --help` lists all.
    from langground.cli import data

    app.add_typer(data.app, name="data")
    from langground.cli.bench import bench

    app.command("bench")(bench)
    from langground.cli.demo import demo
    from langground.cli.predict import predict

    app.command("predict")(predict)
    app.command("demo")(demo)
    from langground.cli import engine

    engine.register(app)  # train, eval, presets


def main() -> None:
    _mount()
    app()
