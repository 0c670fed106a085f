"""``langground export CKPT --format onnx --out model.onnx``: an ONNX graph + sidecar, parity-checked."""

from __future__ import annotations

from pathlib import Path

import typer

from langground.cli._common import console, user_errors
from langground.errors import LanggroundError


def read_expressions(values: list[str]) -> list[str]:
    """``--expressions`` values: a text file (one expression a line) or the expressions themselves."""
    out: list[str] = []
    for v in values:
        p = Path(v)
        if p.suffix.lower() in (".txt", ".text") or (p.is_file() and "\n" not in v):
            if not p.is_file():
                raise LanggroundError(f"{p}: expressions file not found")
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            out += [ln for ln in lines if ln]
        else:
            out.append(v)
    if values and not out:
        raise LanggroundError("--expressions: no expression given (the file is empty?)")
    return out


@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory, or a run directory (uses its best/)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format: onnx."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The .onnx file to write (its .json sidecar goes beside)."
    ),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset version."),
    tolerance: float = typer.Option(
        1e-4,
        "--tolerance",
        min=0.0,
        help="Parity bound on |onnxruntime - PyTorch| / max(1, |PyTorch|): absolute for outputs within +-1.",
    ),
    expressions: list[str] | None = typer.Option(
        None,
        "--expressions",
        "-e",
        help="Gated models (LADS): the expressions to export subnets for; each value is an expression or a "
        ".txt file with one per line. Repeat the option for several.",
    ),
    threads: int = typer.Option(
        0, "--threads", min=0, help="onnxruntime threads of the parity check (0: all)."
    ),
) -> None:
    """Export a checkpoint's model to ONNX, then check it against PyTorch (fails over --tolerance)."""
    from langground.export import export_checkpoint

    result = export_checkpoint(
        checkpoint,
        out,
        fmt=fmt,
        opset=opset,
        tolerance=tolerance,
        expressions=read_expressions(expressions or []),
        threads=threads or None,
    )
    console.print(f"exported: {result.approach}", highlight=False, soft_wrap=True)
    for path, report in zip(result.paths, result.reports, strict=True):
        console.print(f"wrote {path} (+ {path.with_suffix('.json').name})", highlight=False)
        console.print(
            f"  parity ok (tolerance {tolerance:g}): {report.line()}", highlight=False, soft_wrap=True
        )
