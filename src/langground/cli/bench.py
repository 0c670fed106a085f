"""``langground bench``: parameters, MACs/FLOPs, latency and peak memory of a registered model."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from langground.cli._common import console, user_errors


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


MEMORY_METHODS = {
    "torch.profiler": "CPU allocator events, torch.profiler",
    "cuda allocator": "CUDA allocator peak",
    "unavailable": "not measurable with this torch",
}


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@user_errors
def bench(
    model: str = typer.Option(
        None, "--model", "-m", help="Registered model name (`langground models` lists them)."
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Bench a trained model: checkpoint or run directory (its task, vocabulary and input size).",
    ),
    task: str = typer.Option(None, help="rec | res | gref | gres | vqa (default rec, or the checkpoint's)."),
    size: int = typer.Option(None, help="Square input side in pixels (default 416, or the checkpoint's)."),
    vocab_size: int = typer.Option(
        None,
        "--vocab-size",
        help="Words in the text embedding (default: the model's own, e.g. 100 for laconvnet_t, 10000 for "
        "S/B as in the paper's Table 2).",
    ),
    batch: int = typer.Option(1, help="Batch size (latency is reported per batch and per sample)."),
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
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    data: Path = typer.Option(None, "--data", help="Gated models (LADS): the dataset root of --split."),
    split: str = typer.Option(
        None, "--split", help="Gated models: the split whose expressions are averaged."
    ),
    gated_expressions: int = typer.Option(
        16, "--expressions", min=1, help="Gated models: expressions (evenly spaced over --split) to average."
    ),
    phrases: int = typer.Option(
        None,
        "--phrases",
        help="Phrase models (RefTR): per-phrase latency, N phrases in one pass vs one each.",
    ),
) -> None:
    """Parameters, MACs and FLOPs (papers' "FLOPs" are MACs), median latency and peak memory; for gated
    models (LADS) also the all-open supernet vs the mean extracted subnet over a split's expressions."""
    from langground.bench import benchmark_model
    from langground.bench.gated import gated_report, gated_rows

    if phrases is not None:
        from langground.bench.phrases import phrase_bench, phrase_rows

        p = phrase_bench(model, phrases, size=size, threads=threads, warmup=warmup, runs=runs, device=device)
        if json_out:
            typer.echo(json.dumps(p.to_dict()))
            return
        ptable = Table(title=f"{p.model} · phrase queries · {p.size}x{p.size}", show_header=False)
        for row in phrase_rows(p):
            ptable.add_row(*row)
        console.print(ptable)
        return
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
        vocab_size=vocab_size,
        checkpoint=checkpoint,
    )
    gated = gated_report(
        model, checkpoint, size=size, data=data, split=split, expressions=gated_expressions, device=device,
        runs=runs,
    )  # fmt: skip
    if json_out:
        typer.echo(json.dumps({**r.to_dict(), **({"gated": gated.to_dict()} if gated else {})}))
        return
    table = Table(title=f"{r.model} · {r.task} · {r.size}x{r.size} · batch {r.batch}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("parameters", f"{_human(r.params)} ({r.params:,}; trainable {r.trainable_params:,})")
    table.add_row("vocabulary", f"{r.vocab_size:,} words ({r.vocab_source}; --vocab-size N to change)")
    table.add_row("MACs (= papers' FLOPs)", f"{_human(r.macs)} ({r.macs:,})")
    table.add_row("FLOPs (2 x MACs)", _human(r.flops))
    for name, macs in r.macs_by_module.items():
        table.add_row(f"  MACs in {name}", _human(macs))
    for name, macs in r.macs_by_formula.items():
        table.add_row(f"  by formula: {name}", _human(macs))
    table.add_row(
        f"latency per batch of {r.batch} (median)",
        f"{r.latency_ms:.1f} ms  (min {r.latency_min_ms:.1f}, p90 {r.latency_p90_ms:.1f}; {r.runs} runs)",
    )
    table.add_row("latency per sample", f"{r.latency_per_sample_ms:.1f} ms  (per batch / {r.batch})")
    table.add_row("first call", f"{r.first_call_ms:.0f} ms")
    table.add_row(
        "settings",
        f"{r.device}, {r.threads} threads, {r.dtype}, compile={r.compile}, channels_last={r.channels_last}, "
        f"fuse_bn={r.fuse_bn}",
    )
    table.add_row("weights", f"{r.weights_mb:.1f} MiB")
    table.add_row(
        "peak activations",
        f"{r.peak_activation_mb:.1f} MiB  (one warm forward: tensor memory allocated on top of the weights; "
        f"{MEMORY_METHODS.get(r.memory_method, r.memory_method)})",
    )
    table.add_row(
        "RSS growth",
        f"{r.peak_rss_delta_mb:.1f} MiB in one warm forward, {r.first_call_rss_delta_mb:.1f} MiB over the "
        "first calls (weight packing, compilation); after returning freed heap to the OS",
    )
    load = ", ".join(f"{v:.2f}" for v in r.loadavg_before)
    table.add_row("load average before", f"{load}  (latency is only meaningful on an idle machine)")
    for what, value in gated_rows(gated) if gated else []:
        table.add_row(what, value)
    console.print(table)


@user_errors
def models(
    count_params: bool = typer.Option(
        True, "--params/--no-params", help="Count parameters (builds each model on the meta device)."
    ),
) -> None:
    """The registered models, the tasks each supports and its parameters at default settings."""
    from langground.bench.core import describe_models

    table = Table(title="registered models")
    table.add_column("model", style="bold", no_wrap=True)
    table.add_column("tasks", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("vocab", justify="right", no_wrap=True)
    table.add_column("description")
    for info in describe_models(count_params=count_params):
        table.add_row(
            info.name,
            ", ".join(info.tasks) or "?",
            "–" if info.params is None else _human(info.params),
            "–" if info.params is None or info.vocab_size is None else f"{info.vocab_size:,}",
            info.description,
        )
    console.print(table)
    console.print(
        "params at the model's defaults (task, input size, vocabulary; – where building one is not cheap); "
        "`langground bench --model NAME --task T --vocab-size N` for others",
        highlight=False,
    )
