"""Our SRU (layers/sru.py) against ``nn.LSTM`` of the same size on CPU: forward and forward+backward.

DMN §5.3 says SRUs "can be up to 3x faster than LSTMs". Both stacks here have ``--layers`` layers of
``--hidden`` units on ``(T, B, hidden)`` inputs; the ratio printed is LSTM time / SRU time (> 1: the
SRU is faster). ``--scripted`` also times the Eq. 5 scan as a TorchScript function.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_sru.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from langground.layers import sru as sru_mod
from langground.layers.sru import SRU, masked_scan

_scan_scripted = torch.jit.script(masked_scan)  # the same recurrence, compiled by TorchScript


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1000)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="sequence length (words)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--scripted", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = args.hidden
    x = torch.randn(args.steps, args.batch, d)
    models = {"sru": SRU(d, d, args.layers), "lstm": nn.LSTM(d, d, args.layers)}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        xi = x.clone().requires_grad_(True)
        m(xi)[0].sum().backward()

    results: dict[str, dict[str, float]] = {}
    for name, m in models.items():
        results[name] = {
            "fwd": _time(lambda m=m: fwd(m), args.repeats),
            "fwd+bwd": _time(lambda m=m: fwd_bwd(m), args.repeats),
        }
    if args.scripted:
        plain = sru_mod.masked_scan
        sru_mod.masked_scan = _scan_scripted
        try:
            m = models["sru"]
            results["sru_scripted"] = {
                "fwd": _time(lambda m=m: fwd(m), args.repeats),
                "fwd+bwd": _time(lambda m=m: fwd_bwd(m), args.repeats),
            }
        finally:
            sru_mod.masked_scan = plain
    print(
        f"T={args.steps} B={args.batch} hidden={d} layers={args.layers} threads={args.threads} "
        f"params sru={params['sru'] / 1e6:.2f}M lstm={params['lstm'] / 1e6:.2f}M"
    )
    for name, r in results.items():
        print(f"{name:13s} fwd {1e3 * r['fwd']:8.2f} ms   fwd+bwd {1e3 * r['fwd+bwd']:8.2f} ms")
    for name in [k for k in results if k != "lstm"]:
        print(
            f"lstm / {name}: fwd {results['lstm']['fwd'] / results[name]['fwd']:.2f}x   "
            f"fwd+bwd {results['lstm']['fwd+bwd'] / results[name]['fwd+bwd']:.2f}x"
        )


if __name__ == "__main__":
    main()
