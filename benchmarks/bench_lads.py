"""LADS (issue 9): do pruned FLOPs turn into wall-clock time? Subnet vs supernet of ``lads_r50``.

For each expression a gate pattern is forced at a realistic keep rate (default: ~50% of the 12 gated
bottlenecks, ~60% of their conv2 filters, ~83% of the fusion sublayers, i.e. the paper's Fig. 4c-d
averages: 8 of 16 backbone layers, 10 of 12 fusion sublayers), then, at batch 1:

- FLOPs (``torch.utils.flop_counter``, the MHA fast path off so attention is counted) of the whole
  forward (text encoder + Gating Network + subnet) vs the all-open supernet;
- latency, end to end through ``model.forward_with_gates`` with a COLD subnet cache (so slicing the
  subnet's weights is paid per expression), vs the all-open supernet; and the latency of the prebuilt
  static subnets alone (``prebuilt``), the extraction time separately.

Supernet = the all-open pattern through the same static path (BN2 folded like every subnet), so the two
differ only in what is pruned. Median of ``--repeats`` (5) rounds; subnet, supernet and plain runs alternate. The supernet stays
cached (it never pays a build); ``latency_ratio_vs_plain`` compares with the plain unsliced model.

Expressions: ``--data D --split S`` averages over ``--expressions`` evenly spaced expressions of a split
(default: the fixed list below). Gates: ``--checkpoint RUN`` uses a trained model's own gates on those
expressions (its weights, vocabulary and input size); otherwise each expression gets a random pattern at the
keep rates above.

    python benchmarks/bench_lads.py --json                       # lads_r50, 512^2, 2 threads
    python benchmarks/bench_lads.py --model lads_t --size 128    # quick
    python benchmarks/bench_lads.py --checkpoint runs/lads-t --data data/synth --split testA --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from langground.layers.gates import Gates
from langground.registry import create_model
from langground.types import TextBatch

EXPRESSIONS = [
    "the man in the red shirt on the left",
    "small girl held by her father in a green shirt",
    "black car in the back",
    "second banana from the right",
    "the dog lying next to the sofa",
    "woman with an umbrella",
    "blue cup behind the laptop",
    "the tallest tree in the middle of the picture",
]


def _text(sentence: str) -> TextBatch:
    words = sentence.split()
    ids = torch.arange(2, 2 + len(words))[None]
    return TextBatch(ids, torch.ones_like(ids, dtype=torch.bool), [sentence], [words])


def _pattern(model, seed: int, p_layer: float, p_filter: float, p_fusion: float) -> Gates:
    g = torch.Generator().manual_seed(seed)
    n_blocks = len(model.gated_blocks)
    layer = torch.cat(
        [
            (torch.rand(1, n_blocks, generator=g) < p_layer),
            (torch.rand(1, model.gating.num_units - n_blocks, generator=g) < p_fusion),
        ],
        1,
    ).float()
    filt = (torch.rand(1, sum(model.gating.filters), generator=g) < p_filter).float()
    return Gates(layer, filt)


def _flops(model, images, text, gates, executed: bool = False) -> int:
    """FLOPs of the pattern itself (kept filters only), or ``executed``: with the zero filters that
    round kept widths up to ``model.filter_multiple``."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    multiple = model.filter_multiple
    model.filter_multiple = multiple if executed else 1
    model._subnets.clear()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.forward_with_gates(images, text, gates)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        model.filter_multiple = multiple
        model._subnets.clear()
    return fc.get_total_flops()


def _ratio(*fns, repeats: int) -> list[float]:
    """Median times of ``fns`` timed alternately over ``repeats`` rounds (alternating lets load hit all
    alike; the median is robust to the odd disturbed run)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _plain(model, images, text):
    """The plain, unsliced model (no gates, no folding: the timm blocks as they are), channels_last
    like the static path: the baseline a user without LADS would run."""
    tokens, mask = model.encode_text(text)
    x = model._stem()(images.contiguous(memory_format=torch.channels_last))
    for _, block in model._blocks():
        x = block(x)
    v = model.input_proj(x)
    v = (v + model.pos(*v.shape[-2:], v.device, v.dtype)).flatten(2).transpose(1, 2)
    h = torch.cat([tokens, v], 1)
    pad = ~torch.cat([mask, mask.new_ones(1, v.shape[1])], 1)
    for layer in model.fusion:
        h = layer(h, pad)
    return model.box_head(h[:, 0]).sigmoid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lads_r50")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expressions", type=int, default=len(EXPRESSIONS))
    ap.add_argument("--repeats", type=int, default=5, help="rounds per expression (median)")
    ap.add_argument("--keep-layers", type=float, default=0.5)
    ap.add_argument("--keep-filters", type=float, default=0.6)
    ap.add_argument("--keep-fusion", type=float, default=10 / 12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--filter-multiple", type=int, default=None, help="override LADS.filter_multiple")
    ap.add_argument("--checkpoint", default=None, help="a trained LADS: its own gates, not forced ones")
    ap.add_argument("--data", default=None, help="dataset root: expressions of --split")
    ap.add_argument("--split", default=None)
    ap.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's, else synth)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab, source = None, "fixed expressions"
    if args.checkpoint:
        from langground.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        model, vocab, data_cfg = ckpt.model, ckpt.vocab, ckpt.config.data
        args.size, args.model = int(model.input_size), ckpt.config.model.name
    else:
        from langground.config import DataConfig

        model, data_cfg = create_model(args.model, input_size=args.size), DataConfig(dataset="synth")
    model = model.eval().to(args.device)
    if args.filter_multiple is not None:
        model.filter_multiple = args.filter_multiple
    images = torch.randn(1, 3, args.size, args.size, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.data:
        from langground.bench.gated import expression_batches, split_expressions

        if args.dataset:
            data_cfg.dataset, data_cfg.open_kwargs = args.dataset, {}
        sentences, source = split_expressions(data_cfg, args.data, args.split, args.expressions)
        texts = expression_batches(sentences, vocab, model.max_text_length, model.vocab_size)
    elif vocab is not None:
        texts = [vocab.batch([s], model.max_text_length) for s in (EXPRESSIONS * 4)[: args.expressions]]
    else:
        texts = [_text(s) for s in (EXPRESSIONS * 4)[: args.expressions]]
    u, c = model.gating.num_units, sum(model.gating.filters)
    full = Gates(torch.ones(1, u), torch.ones(1, c))
    if args.checkpoint:  # the trained Gating Network's own (evaluation) gates
        patterns = []
        for t in texts:
            g, _ = model.explain_gates(t.to(args.device))
            patterns.append(Gates(g.layer.cpu(), g.filter.cpu()))
    else:
        patterns = [
            _pattern(model, i, args.keep_layers, args.keep_filters, args.keep_fusion)
            for i in range(len(texts))
        ]
    texts = [t.to(args.device) for t in texts]

    full_key = (
        torch.ones(u, dtype=torch.uint8).numpy().tobytes(),
        torch.ones(c, dtype=torch.uint8).numpy().tobytes(),
    )

    def run(text, gates, cold: bool):
        if cold:  # evict every subnet but the supernet's: the supernet never pays a build
            for key in [k for k in model._subnets if k[:2] != full_key]:
                del model._subnets[key]
        with torch.no_grad():
            model.forward_with_gates(images, text, gates)
        sync()

    super_flops = _flops(model, images, texts[0], full)
    rows = []
    with torch.no_grad():
        tokens, mask = model.encode_text(texts[0])
        supernet = model.build_subnet(full.layer[0], full.filter[0])
        for _ in range(2):  # warm-up
            run(texts[0], full, cold=False)
            supernet(images, tokens, mask)
            _plain(model, images, texts[0])
        for text, gates in zip(texts, patterns, strict=True):
            flops, executed = _flops(model, images, text, gates), _flops(model, images, text, gates, True)
            text_super = _flops(model, images, text, full)  # per expression: lengths differ
            run(text, full, cold=False)  # the supernet back in the cache (counting cleared it)
            tokens, mask = model.encode_text(text)
            t0 = time.perf_counter()
            subnet = model.build_subnet(gates.layer[0], gates.filter[0])
            extract = time.perf_counter() - t0
            sub_s, super_s, plain_s = _ratio(
                lambda t=text, g=gates: run(t, g, cold=True),
                lambda t=text: run(t, full, cold=False),
                lambda t=text: (_plain(model, images, t), sync()),
                repeats=args.repeats,
            )
            pre_s, pre_super_s = _ratio(
                lambda s=subnet, k=tokens, m=mask: (s(images, k, m), sync()),
                lambda k=tokens, m=mask: (supernet(images, k, m), sync()),
                repeats=args.repeats,
            )
            rows.append(
                {
                    "flops_ratio": flops / text_super,
                    "executed_flops_ratio": executed / text_super,
                    "subnet_ms": sub_s * 1e3,
                    "supernet_ms": super_s * 1e3,
                    "plain_ms": plain_s * 1e3,
                    "prebuilt_subnet_ms": pre_s * 1e3,
                    "prebuilt_supernet_ms": pre_super_s * 1e3,
                    "extract_ms": extract * 1e3,
                    "keep_layers": float(gates.layer[0, : len(model.gated_blocks)].mean()),
                    "keep_filters": float(gates.filter.mean()),
                }
            )

    def mean(key):
        return statistics.fmean(r[key] for r in rows)

    result = {
        "model": args.model,
        "size": args.size,
        "threads": args.threads,
        "device": args.device,
        "expressions": len(rows),
        "expressions_from": source,
        "gates_from": args.checkpoint or "random patterns at the keep rates",
        "supernet_gflops": super_flops / 1e9,
        "flops_ratio": mean("flops_ratio"),  # the bar's: FLOPs of the kept units only
        "executed_flops_ratio": mean("executed_flops_ratio"),  # incl. zero filters padding widths
        "filter_multiple": model.filter_multiple,
        # issue 9's bar: mean subnet latency / supernet latency, end to end with a cold subnet cache
        "latency_ratio": mean("subnet_ms") / mean("supernet_ms"),
        "prebuilt_latency_ratio": mean("prebuilt_subnet_ms") / mean("prebuilt_supernet_ms"),
        # the same subnets against the plain unsliced model (text encoder + network, no gating)
        "latency_ratio_vs_plain": mean("subnet_ms") / mean("plain_ms"),
        "repeats_median_of": args.repeats,
        "subnet_ms": mean("subnet_ms"),
        "supernet_ms": mean("supernet_ms"),
        "plain_ms": mean("plain_ms"),
        "prebuilt_subnet_ms": mean("prebuilt_subnet_ms"),
        "prebuilt_supernet_ms": mean("prebuilt_supernet_ms"),
        "extract_ms": mean("extract_ms"),
        "keep_layers": mean("keep_layers"),
        "keep_filters": mean("keep_filters"),
    }
    result["bar_latency_le_1.15x_flops"] = result["latency_ratio"] <= 1.15 * result["flops_ratio"]
    # the same bar for prebuilt subnets (a deployment that extracts each expression's subnet once)
    result["bar_prebuilt_le_1.15x_flops"] = result["prebuilt_latency_ratio"] <= 1.15 * result["flops_ratio"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")


if __name__ == "__main__":
    main()
