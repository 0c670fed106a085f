"""Benchmark of the LaConv operator (Eq. 2): fast path vs the ``F.unfold`` reference.

Shapes: LaConvNet-S at a 416x416 input (Table 1 at 224 scaled: a stride-2 stem, then stages at /2, /4,
/8, /16, /32), i.e. widths 16/64/128/256/512 at 208/104/52/26/13 pixels, groups 4/4/8/8/16, kernel 3 in
stage 1 and 7 after (Table 1 lists no groups; these are issue 3's). Each case times forward + backward (``grad_x`` and ``grad_W``) of both paths,
alternating them so machine load hits both alike, and reports min and median over the repeats.

Memory is allocation accounting, not RSS: ``torch.profiler`` records every CPU allocation and free;
the running sum over one forward, then one backward, gives each phase's peak above what was live before
it. *Workspace* is that peak minus the phase's own results (the output in forward; ``grad_x`` and
``grad_W`` in backward), i.e. the memory an implementation needs beyond what any implementation must
hand back; the bar is workspace <= 2x the output tensor.

    python benchmarks/bench_dynamic_conv.py                 # batch 1 and 8, 2 threads, table
    python benchmarks/bench_dynamic_conv.py --batch 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from langground.ops.dynamic_conv import laconv_fast, laconv_reference

# (stage, channels, size at 416^2 input, groups, kernel): LaConvNet-S, Table 1; Table 1 gives no group
# counts, these are the ones of issue 3 (4/4/8/8/16)
STAGES = [(1, 16, 208, 4, 3), (2, 64, 104, 4, 7), (3, 128, 52, 8, 7), (4, 256, 26, 8, 7), (5, 512, 13, 16, 7)]
Op = Callable[..., torch.Tensor]


@dataclass
class Row:
    stage: int
    batch: int
    shape: str
    groups: int
    kernel: int
    fast_ms: float  # min over repeats, forward + backward
    fast_median_ms: float
    ref_ms: float
    ref_median_ms: float
    speedup: float  # ref_ms / fast_ms (both minima)
    out_mb: float
    fast_workspace_mb: float
    fast_workspace_x_out: float
    ref_workspace_mb: float
    ref_workspace_x_out: float


def _inputs(n: int, c: int, s: int, g: int, k: int, dtype: torch.dtype, channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, s, s, generator=gen, dtype=dtype)
    w = torch.randn(n, g, k * k, s, s, generator=gen, dtype=dtype) / k
    go = torch.randn(n, c, s, s, generator=gen, dtype=dtype)
    if channels_last:
        x, go = (t.contiguous(memory_format=torch.channels_last) for t in (x, go))
        w = w.view(n, g * k * k, s, s).contiguous(memory_format=torch.channels_last).view(n, g, k * k, s, s)
    return x.requires_grad_(), w.requires_grad_(), go


def _fwd_bwd(op: Op, x: torch.Tensor, w: torch.Tensor, go: torch.Tensor, k: int) -> None:
    out = op(x, w, k)
    torch.autograd.grad(out, (x, w), go)


def _peak(fn: Callable[[], object]) -> tuple[int, object]:
    """Peak bytes allocated (net of frees) while ``fn`` runs, from the profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, result


def _workspace(op: Op, x: torch.Tensor, w: torch.Tensor, go: torch.Tensor, k: int) -> int:
    """max(forward peak - output, backward peak - grad_x - grad_W), in bytes."""
    fwd_peak, out = _peak(lambda: op(x, w, k))
    bwd_peak, (gx, gw) = _peak(lambda: torch.autograd.grad(out, (x, w), go))
    nbytes = lambda t: t.numel() * t.element_size()
    return max(fwd_peak - nbytes(out), bwd_peak - nbytes(gx) - nbytes(gw))


def _time(ops: dict[str, Op], args: tuple, k: int, repeats: dict[str, int]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():  # warm-up (allocator, caches)
        _fwd_bwd(op, *args, k)
    for r in range(max(repeats.values())):
        for name, op in ops.items():
            if r < repeats[name]:
                t0 = time.perf_counter()
                _fwd_bwd(op, *args, k)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def run(
    batches: list[int],
    threads: int,
    repeats: int,
    ref_repeats: int,
    dtype: torch.dtype,
    channels_last: bool,
    stages: list[int],
) -> list[Row]:
    torch.set_num_threads(threads)
    rows = []
    for n in batches:
        for stage, c, s, g, k in STAGES:
            if stage not in stages:
                continue
            x, w, go = _inputs(n, c, s, g, k, dtype, channels_last)
            ops = {"fast": laconv_fast, "ref": laconv_reference}
            times = _time(ops, (x, w, go), k, {"fast": repeats, "ref": ref_repeats})
            out_bytes = x.numel() * x.element_size()
            ws_fast = _workspace(laconv_fast, x, w, go, k)
            ws_ref = _workspace(laconv_reference, x, w, go, k)
            mb = 2.0**20
            rows.append(
                Row(
                    stage=stage,
                    batch=n,
                    shape=f"{c}x{s}x{s}",
                    groups=g,
                    kernel=k,
                    fast_ms=min(times["fast"]),
                    fast_median_ms=statistics.median(times["fast"]),
                    ref_ms=min(times["ref"]),
                    ref_median_ms=statistics.median(times["ref"]),
                    speedup=min(times["ref"]) / min(times["fast"]),
                    out_mb=out_bytes / mb,
                    fast_workspace_mb=ws_fast / mb,
                    fast_workspace_x_out=ws_fast / out_bytes,
                    ref_workspace_mb=ws_ref / mb,
                    ref_workspace_x_out=ws_ref / out_bytes,
                )
            )
            del x, w, go
    return rows


def _markdown(rows: list[Row], meta: dict) -> str:
    head = (
        "| stage | N | C x H x W | g | k | fast f+b ms (min / med) | unfold f+b ms (min / med) | speed-up "
        "| out MB | fast workspace MB (x out) | unfold workspace MB (x out) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.stage} | {r.batch} | {r.shape} | {r.groups} | {r.kernel} "
            f"| {r.fast_ms:.2f} / {r.fast_median_ms:.2f} | {r.ref_ms:.1f} / {r.ref_median_ms:.1f} "
            f"| {r.speedup:.1f}x | {r.out_mb:.2f} | {r.fast_workspace_mb:.2f} ({r.fast_workspace_x_out:.2f}x) "
            f"| {r.ref_workspace_mb:.1f} ({r.ref_workspace_x_out:.1f}x) |"
        )
    for n in sorted({r.batch for r in rows}):
        sel = [r for r in rows if r.batch == n]
        fast, ref = sum(r.fast_ms for r in sel), sum(r.ref_ms for r in sel)
        lines.append(
            f"\nbatch {n}, all stages: fast {fast:.1f} ms, unfold {ref:.1f} ms, speed-up {ref / fast:.1f}x"
        )
    lines.append(
        f"\ntorch {meta['torch']}, {meta['threads']} threads, {meta['dtype']}, channels_last={meta['channels_last']}, "
        f"load average (1 min) before {meta['load_before']:.2f}, after {meta['load_after']:.2f}, "
        f"{meta['cpus']} CPUs"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="timed fast-path runs per case")
    ap.add_argument("--ref-repeats", type=int, default=5, help="timed unfold runs per case")
    ap.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    ap.add_argument(
        "--channels-last", action="store_true", help="x, grad and kernels in channels-last layout"
    )
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = run(
        args.batch,
        args.threads,
        args.repeats,
        args.ref_repeats,
        getattr(torch, args.dtype),
        args.channels_last,
        args.stages,
    )
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
