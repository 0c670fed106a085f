"""The papers' comparison rows side by side: LaConvNet-S, LADS-R50 (all-open supernet and mean extracted
subnet) and TransVG-R50, each at its paper's input size, through ``langground bench --json``.

    .venv/bin/python benchmarks/bench_side_by_side.py                       # CPU, 2 threads, 5 runs each
    .venv/bin/python benchmarks/bench_side_by_side.py --runs 20 --json out.json
    .venv/bin/python benchmarks/bench_side_by_side.py --device cuda        # where a GPU is lent

Each row runs in a fresh ``langground bench`` process. LADS's subnets come from its gates over the bench's
fixed expressions (``--lads-checkpoint`` and ``--data/--split`` for a trained model over a split's).
Latency is only meaningful on an idle machine: each row prints the load average it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# (label, model, input side): the sizes the papers report at (LaConvNet Tab. 2: 416; LADS: 512; TransVG: 640)
ROWS = [
    ("LaConvNet-S", "laconvnet_s", 416),
    ("LADS-R50", "lads_r50", 512),
    ("TransVG-R50", "transvg_r50", 640),
]


def bench(model: str, size: int, args: argparse.Namespace, extra: list[str]) -> dict:
    exe = Path(sys.executable).with_name("langground")
    cmd = [str(exe), "bench", "--model", model, "--size", str(size), "--json", "--runs", str(args.runs)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lads-checkpoint", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = p.parse_args()

    rows = []
    for label, model, size in ROWS:
        extra: list[str] = []
        if model.startswith("lads"):
            extra += ["--checkpoint", str(args.lads_checkpoint)] if args.lads_checkpoint else []
            extra += ["--data", str(args.data), "--split", args.split] if args.data and args.split else []
        r = bench(model, size, args, extra)
        rows.append({"label": label, **r})
        gated = r.get("gated")
        if gated:  # both LADS rows over the same expressions: means of their MACs and median latencies
            rows[-1].update(macs=gated["supernet_macs"], latency_ms=gated["supernet_ms"])
            rows.append(
                {
                    "label": f"{label} mean subnet",
                    "params": None,
                    "macs": gated["subnet_macs"],
                    "latency_ms": gated["subnet_ms"],
                    "size": size,
                    "loadavg_before": r["loadavg_before"],
                    "note": f"{gated['expressions']} expressions ({gated['source']}), macs ratio "
                    f"{gated['macs_ratio']:.3f}, latency ratio {gated['latency_ratio']:.3f}",
                }
            )
            rows[-2]["label"] = f"{label} supernet (all open)"
    print("| model | input | params | MACs | latency (ms, batch 1) | load | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "–"
        print(
            f"| {r['label']} | {r['size']}² | {params} | {r['macs'] / 1e9:.1f}G | {r['latency_ms']:.0f} "
            f"| {r['loadavg_before'][0]:.1f} | {r.get('note', '')} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
