"""``langground bench``: parameters, MACs/FLOPs, latency and peak memory of a registered model."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.table import Table

from langground.cli._common import console, user_errors


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@user_errors
def bench(
    model: str = typer.Option(
        ..., "--model", "-m", help="Registered model name (see `langground bench --help`)."
    ),
    task: str = typer.Option("rec", help="rec | res | gref | gres | vqa"),
    size: int = typer.Option(416, help="Square input side in pixels."),
    batch: int = typer.Option(1, help="Batch size."),
    threads: int = typer.Option(2, help="torch intra-op threads."),
    warmup: int = typer.Option(5, help="Untimed warm-up calls (compilation happens here)."),
    runs: int = typer.Option(20, help="Timed calls; the median is reported."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile (Inductor, freezing)."),
    channels_last: bool = typer.Option(
        False, "--channels-last/--no-channels-last", help="NHWC memory format."
    ),
    dtype: DType = typer.Option(DType.fp32, help="Weights and activations: fp32 or bf16."),
    fuse_bn: bool = typer.Option(True, "--fuse-bn/--no-fuse-bn", help="Fold BatchNorm into convs."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Parameters, MACs and FLOPs (papers' "FLOPs" are MACs), median latency and peak memory."""
    from langground.bench import benchmark_model

    r = benchmark_model(
        model,
        task=task,
        size=size,
        batch=batch,
        threads=threads,
        warmup=warmup,
        runs=runs,
        compile=compile,
        channels_last=channels_last,
        dtype=dtype.value,
        fuse_bn=fuse_bn,
        device=device,
    )
    if json_out:
        typer.echo(json.dumps(r.to_dict()))
        return
    table = Table(title=f"{r.model} · {r.task} · {r.size}x{r.size} · batch {r.batch}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("parameters", f"{_human(r.params)} ({r.params:,}; trainable {r.trainable_params:,})")
    table.add_row("MACs (= papers' FLOPs)", f"{_human(r.macs)} ({r.macs:,})")
    table.add_row("FLOPs (2 x MACs)", _human(r.flops))
    for name, macs in r.macs_by_module.items():
        table.add_row(f"  MACs in {name}", _human(macs))
    for name, macs in r.macs_by_formula.items():
        table.add_row(f"  by formula: {name}", _human(macs))
    table.add_row(
        "latency (median)",
        f"{r.latency_ms:.1f} ms  (min {r.latency_min_ms:.1f}, p90 {r.latency_p90_ms:.1f}; {r.runs} runs)",
    )
    table.add_row("first call", f"{r.first_call_ms:.0f} ms")
    table.add_row(
        "settings",
        f"{r.device}, {r.threads} threads, {r.dtype}, compile={r.compile}, channels_last={r.channels_last}, "
        f"fuse_bn={r.fuse_bn}",
    )
    table.add_row(
        "peak memory (RSS delta)", f"{r.peak_rss_delta_mb:.1f} MiB  (weights {r.weights_mb:.1f} MiB)"
    )
    load = ", ".join(f"{v:.2f}" for v in r.loadavg_before)
    table.add_row("load average before", f"{load}  (latency is only meaningful on an idle machine)")
    console.print(table)
