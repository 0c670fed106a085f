"""Params / MACs / CPU latency of registered models, and what each inference optimisation contributes.

    python benchmarks/bench_models.py                       # every registered model, REC, 416^2, eager fp32
    python benchmarks/bench_models.py --ladder laconvnet_s  # fp32 -> +fuse BN -> +channels-last -> +bf16 -> +compile
    python benchmarks/bench_models.py --json out.json ...

Each configuration runs in a fresh subprocess (compiled graphs, Inductor settings and allocator state do
not leak between rows). Latency is only meaningful on an idle machine: the load average before and
after each row is printed next to it; re-run rows whose load was high.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

LADDER = [
    ("eager fp32, BN unfused", {"fuse_bn": False}),
    ("+ fuse BN", {}),
    ("+ channels-last", {"channels_last": True}),
    ("+ bf16", {"channels_last": True, "dtype": "bf16"}),
    ("+ torch.compile", {"channels_last": True, "dtype": "bf16", "compile": True}),
    ("bf16 + compile, NCHW", {"dtype": "bf16", "compile": True}),
    ("fp32 + channels-last + compile", {"channels_last": True, "compile": True}),
]


def run_one(model: str, **kwargs: object) -> dict:
    code = (
        "import json, sys; from langground.bench import benchmark_model; "
        "r = benchmark_model(sys.argv[1], **json.loads(sys.argv[2])); print(json.dumps(r.to_dict()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, model, json.dumps(kwargs)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{model} {kwargs} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="model names (default: all registered)")
    p.add_argument("--ladder", action="store_true", help="run the optimisation ladder for each model")
    p.add_argument("--task", default="rec")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", dest="json_path", help="also write all rows to this JSON file")
    args = p.parse_args()

    from langground.registry import list_models

    models = args.models or list_models()
    common = dict(
        task=args.task,
        size=args.size,
        batch=args.batch,
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
    )
    rows = []
    configs = LADDER if args.ladder else [("eager fp32", {})]
    print(
        f"{'model':<14} {'setting':<32} {'params':>8} {'MACs':>7} {'median ms':>10} {'min ms':>8} "
        f"{'RSS+ MiB':>9}  load before/after   (cpu: {os.cpu_count()} cores)"
    )
    for model in models:
        for label, extra in configs:
            r = run_one(model, **common, **extra)
            r["setting"] = label
            rows.append(r)
            print(
                f"{model:<14} {label:<32} {r['params'] / 1e6:7.2f}M {r['macs'] / 1e9:6.2f}G "
                f"{r['latency_ms']:10.1f} {r['latency_min_ms']:8.1f} {r['peak_rss_delta_mb']:9.1f}  "
                f"{r['loadavg_before'][0]:.2f}/{r['loadavg_after'][0]:.2f}",
                flush=True,
            )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
