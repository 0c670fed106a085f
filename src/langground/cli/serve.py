"""``langground serve CKPT``: the checkpoint behind a REST API and a web page (FastAPI + uvicorn).

Needs the ``serve`` extra; without it the command says so in one line (the rest of the CLI never needs it).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import typer

from langground.cli._common import err_console, user_errors
from langground.errors import LanggroundError

#: ``--workers N`` hands each worker process its configuration through this variable
SPEC_ENV = "LANGGROUND_SERVE_SPEC"
_SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


def require_serve_extra() -> None:
    """A one-line error naming the extra to install when FastAPI & co. are missing."""
    import importlib.util

    missing = [m for m in _SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        names = {"multipart": "python-multipart", "prometheus_client": "prometheus-client"}
        shown = ", ".join(names.get(m, m) for m in missing)
        from rich.markup import escape  # the CLI prints errors as rich markup: keep "[serve]" visible

        raise LanggroundError(
            escape(
                f"langground serve needs the 'serve' extra (missing: {shown}): pip install 'langground[serve]'"
            )
        )


def load_grounder(checkpoint: str | os.PathLike, device: str, backend: str, batch_size: int) -> Any:
    from langground.inference.grounder import Grounder, resolve_device

    kwargs: dict[str, Any] = {}
    if "backend" in inspect.signature(Grounder.from_pretrained).parameters:
        kwargs["backend"] = backend
    elif backend != "torch":
        raise LanggroundError(f"--backend {backend}: this langground's Grounder only runs the torch backend")
    dev = resolve_device(device, option="--device")
    return Grounder.from_pretrained(checkpoint, device=dev, batch_size=batch_size, **kwargs)


def build_app(spec: dict[str, Any]) -> Any:
    """The app of one server (or one ``--workers`` process) from its JSON-able ``spec``."""
    import torch

    from langground.serve.app import create_app
    from langground.serve.settings import ServeSettings

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    settings = ServeSettings(checkpoint=Path(spec["checkpoint"]), **spec["settings"])
    grounder = load_grounder(spec["checkpoint"], spec["device"], spec["backend"], settings.max_batch)
    return create_app(grounder, settings)


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: each worker process loads the model from ``$LANGGROUND_SERVE_SPEC``."""
    _log_to_stderr()
    return build_app(json.loads(os.environ[SPEC_ENV]))


def _log_to_stderr() -> None:
    logger = logging.getLogger("langground.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@user_errors
def serve(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory, or a run directory (uses its best/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (localhost only by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Server processes, each with its own model copy."
    ),
    max_batch: int = typer.Option(
        8,
        "--max-batch",
        min=1,
        help="(image, expression) pairs per forward: concurrent requests merge up to it.",
    ),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", min=0, help="How long a request waits for others to share its forward pass."
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="LANGGROUND_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (env LANGGROUND_API_KEY).",
        show_envvar=False,
    ),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx (an exported model)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    allow_path: list[Path] = typer.Option(
        [], "--allow-path", help="A folder whose images JSON requests may name by path (repeatable)."
    ),
    max_body_mb: float = typer.Option(
        20.0, "--max-body-mb", min=0.001, help="Largest request body (413 above)."
    ),
    max_pixels: int = typer.Option(
        40_000_000, "--max-pixels", min=1, help="Largest image, in pixels, refused from its header (413)."
    ),
    max_explain_pixels: int = typer.Option(
        1_000_000,
        "--max-explain-pixels",
        min=1,
        help="Largest image for explain (attention maps), in pixels.",
    ),
    max_expressions: int = typer.Option(16, "--max-expressions", min=1, help="Expressions per request."),
    max_expression_chars: int = typer.Option(300, "--max-expression-chars", min=1, help="Characters each."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads per process."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's: debug, info, warning, error."),
    graceful_timeout: float = typer.Option(
        30.0, "--graceful-timeout", min=0, help="Seconds in-flight requests get to finish on shutdown."
    ),
) -> None:
    """Serve a checkpoint: REST API (POST /v1/ground, /v1/answer; GET /v1/model, /healthz, /metrics, /docs)
    and a web page at /."""
    require_serve_extra()
    if backend not in ("torch", "onnx"):
        raise LanggroundError(f"--backend {backend!r}: expected torch or onnx")
    import uvicorn

    from langground.serve.settings import ServeSettings

    settings = {
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "api_key": api_key,
        "allow_paths": [str(p) for p in allow_path],
        "max_body_bytes": int(max_body_mb * 2**20),
        "max_pixels": max_pixels,
        "max_explain_pixels": max_explain_pixels,
        "max_expressions": max_expressions,
        "max_expression_chars": max_expression_chars,
    }
    ServeSettings(checkpoint=checkpoint, **settings)  # bad values: one line, before the model loads
    spec = {
        "checkpoint": str(checkpoint),
        "device": device,
        "backend": backend,
        "threads": threads,
        "settings": settings,
    }
    _log_to_stderr()
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback and api_key is None:
        err_console.print(
            f"[yellow]warning:[/] binding {host} without --api-key: anyone who can reach this port can use "
            "the model",
            highlight=False,
            soft_wrap=True,
        )
    options = {
        "host": host,
        "port": port,
        "timeout_graceful_shutdown": graceful_timeout,
        "log_level": log_level,
    }
    if workers > 1:
        os.environ[SPEC_ENV] = json.dumps(spec)
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
            # each worker imports torch and loads the model before it answers the supervisor's pings
            options["timeout_worker_healthcheck"] = 120
        uvicorn.run("langground.cli.serve:app_from_env", factory=True, workers=workers, **options)
        return
    app = build_app(spec)  # a bad checkpoint: one line, exit 2, before the port is bound
    uvicorn.run(app, **options)
