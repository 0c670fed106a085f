"""onnxruntime vs PyTorch CPU latency at batch 1 of an exported model (LaConvNet-S, REC, 416^2 by default).

    python benchmarks/bench_onnx.py                                  # laconvnet_s, 416^2, 2 threads
    python benchmarks/bench_onnx.py --model laconvnet_t --size 256 --runs 30
    python benchmarks/bench_onnx.py --json onnx.json

A freshly initialised model of the variant (BatchNorm statistics of random inputs, see calibrate_bn) is
saved as a checkpoint, exported with ``langground export``'s code path (parity check included: its figures
are printed too) and timed both ways on the same input: one image, one expression of ``--words`` words.
PyTorch runs what the Grounder runs (eager fp32, inference mode); onnxruntime the exported graph (CPU
provider, graph optimisations on). Both get ``--threads`` intra-op threads. Median of ``--runs`` calls after
``--warmup``, the two backends' calls interleaved. Latency is only meaningful on an idle machine: the load
average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _median_ms(fns, runs: int, warmup: int) -> list[float]:  # noqa: ANN001
    """Median ms of each callable; calls interleave (a, b, a, b...) so a load change hits both alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def calibrate_bn(model, vocab, size: int, max_words: int):  # noqa: ANN001, ANN201
    """BatchNorm statistics of random inputs, as a trained model has statistics of its data. At init
    they are 0 / 1 and every box logit sits at the head's prior: the best box is then a tie between
    cells that rounding decides, in PyTorch as in onnxruntime, and ``pred_boxes`` cannot agree."""
    import torch

    from langground.types import TextBatch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, len(vocab), (4, max_words), generator=gen)
    with torch.no_grad():
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        model(torch.randn(4, 3, size, size, generator=gen), TextBatch(ids, ids > 0))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="laconvnet_s")
    p.add_argument("--task", default="rec")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--words", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="parity tolerance of the export; loose: this random model amplifies float32 rounding (PyTorch "
        "fp32 vs float64 alone: 0.10 on its ~900 box logits at 416^2); the bar is tests/test_export_families.py",
    )
    p.add_argument("--json", dest="json_path", help="also write the figures to this JSON file")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import load_checkpoint, save_checkpoint
    from langground.export import export_checkpoint
    from langground.export.parity import make_session
    from langground.text.vocab import Vocabulary

    words = [f"w{i}" for i in range(998)]
    vocab = Vocabulary(["<pad>", "<unk>", *words])
    cfg = load_preset(
        "refcoco-laconvnet-s-rec", [f"transforms.input_size={args.size}", "data.max_text_length=15"]
    )
    cfg.model.name, cfg.model.task, cfg.model.kwargs = args.model, args.task, {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = calibrate_bn(build_model(cfg, vocab), vocab, args.size, cfg.data.max_text_length)
        ckpt = save_checkpoint(Path(tmp) / "ckpt", model=model, config=cfg, vocab=vocab)
        t0 = time.perf_counter()
        result = export_checkpoint(
            ckpt, Path(tmp) / "model.onnx", threads=args.threads, tolerance=args.tolerance
        )
        export_s = time.perf_counter() - t0
        size_mb = (Path(tmp) / "model.onnx").stat().st_size / 2**20
        model = load_checkpoint(ckpt).model.eval()
        session = make_session(Path(tmp) / "model.onnx", threads=args.threads)
        text = vocab.batch([" ".join(words[: args.words])], cfg.data.max_text_length)
        image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        feed = {
            "images": image.numpy(),
            "token_ids": text.token_ids.numpy(),
            "attention_mask": text.attention_mask.numpy(),
        }

        def run_torch() -> None:
            with torch.inference_mode():
                model(image, text)

        torch_ms, onnx_ms = _median_ms([run_torch, lambda: session.run(None, feed)], args.runs, args.warmup)
    load_after = os.getloadavg()[0]
    figures = {
        "model": args.model,
        "task": args.task,
        "size": args.size,
        "batch": 1,
        "words": args.words,
        "threads": args.threads,
        "runs": args.runs,
        "torch_ms": round(torch_ms, 2),
        "onnxruntime_ms": round(onnx_ms, 2),
        "onnx_over_torch": round(onnx_ms / torch_ms, 3),
        "export_s": round(export_s, 1),
        "onnx_mb": round(size_mb, 1),
        "parity_max_abs_diff": result.reports[0].max_abs_diff,
        "load_before_after": [round(load_before, 2), round(load_after, 2)],
        "torch": torch.__version__,
    }
    print(
        f"{args.model} {args.task} {args.size}^2 batch 1, {args.words} words, {args.threads} threads, median of "
        f"{args.runs}: PyTorch {torch_ms:.1f} ms, onnxruntime {onnx_ms:.1f} ms, ratio onnx/torch "
        f"{onnx_ms / torch_ms:.2f} (load {load_before:.2f} -> {load_after:.2f})"
    )
    print(f"export {export_s:.1f} s, {size_mb:.1f} MB; parity: {result.reports[0].line()}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
