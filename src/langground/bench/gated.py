"""``langground bench`` rows for gated models (LADS): all-open supernet vs the extracted subnets.

For each expression (a split's, evenly spaced, or :data:`SYNTHETIC_EXPRESSIONS` when no data is given)
the model computes its gates from the expression alone; then, at batch 1:

- MACs of the whole forward (text encoder + Gating Network + the static subnet of the pattern: closed
  layers skipped, closed filters sliced out; counted with ``torch.utils.flop_counter``, the MHA fast path
  off so attention is seen, kept widths not padded) vs the same forward with every gate open;
- latency of that forward with the pattern's subnet prebuilt (the extraction is timed separately, once
  per pattern), median of ``runs``, alternating with the all-open supernet on the same expression.

Means over the expressions give ``macs_ratio`` and ``latency_ratio`` (issue 9's bar: latency ratio <=
1.15 x MACs ratio). The gates are the model's own: a checkpoint's learned ones, or, for an untrained model,
whatever its initial Gating Network gives (every gate opens at init, so the ratios are ~1).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langground.errors import LanggroundError
from langground.types import TextBatch

#: The fallback expressions when ``--data`` is not given (the synthetic world's and RefCOCO-like words).
SYNTHETIC_EXPRESSIONS = (
    "the red cube left of the ball",
    "the small metal sphere",
    "the second cylinder from the left",
    "the big green rubber thing behind the cube",
    "the man in the red shirt on the left",
    "black car in the back",
    "woman with an umbrella",
    "the tallest tree in the middle of the picture",
)


@dataclass
class GatedBench:
    expressions: int
    source: str  # where the expressions came from
    distinct_subnets: int
    supernet_macs: int  # mean over the expressions (their lengths differ)
    subnet_macs: float  # mean over the expressions
    macs_ratio: float  # mean subnet MACs / supernet MACs
    supernet_ms: float  # mean over the expressions of the median latency
    subnet_ms: float
    latency_ratio: float  # mean subnet latency / mean supernet latency
    extract_ms: float  # mean time to build one pattern's static subnet
    keep_layers: float  # mean share of open gated bottlenecks
    keep_filters: float  # mean share of open filter gates
    keep_fusion: float  # mean share of open fusion sublayers
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Forward(nn.Module):
    """``model.forward_with_gates(images, text, gates)`` as a module (for the MAC counter)."""

    def __init__(self, model: nn.Module, gates: Any):
        super().__init__()
        self.model, self.gates = model, gates

    def forward(self, images: torch.Tensor, text: TextBatch) -> Any:
        return self.model.forward_with_gates(images, text, self.gates)


def _macs(model: Any, images: torch.Tensor, text: TextBatch, gates: Any) -> int:
    from langground.bench.macs import count_macs

    fast, multiple = torch.backends.mha.get_fastpath_enabled(), model.filter_multiple
    torch.backends.mha.set_fastpath_enabled(False)
    model.filter_multiple = 1  # the pattern's own widths, not the zero filters that pad them
    model._subnets.clear()
    try:
        return count_macs(_Forward(model, gates).eval(), images, text).total  # eval: count_macs restores it
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        model.filter_multiple = multiple
        model._subnets.clear()


def _median_ms(fn: Any, runs: int, sync: Any) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def expression_batches(
    texts: Sequence[str], vocab: Any | None, max_length: int, vocab_size: int
) -> list[TextBatch]:
    """One :class:`TextBatch` per expression: through ``vocab`` when known, else hashed word ids."""
    out = []
    for t in texts:
        if vocab is not None:
            out.append(vocab.batch([t], max_length))
            continue
        words = t.split()[:max_length]
        ids = torch.tensor([[2 + sum(map(ord, w)) % max(1, vocab_size - 2) for w in words]])
        out.append(TextBatch(ids, torch.ones_like(ids, dtype=torch.bool), [t], [words]))
    return out


@torch.no_grad()
def bench_gated(
    model: Any,
    texts: Sequence[TextBatch],
    size: int,
    *,
    source: str,
    runs: int = 5,
    warmup: int = 2,
    device: str = "cpu",
) -> GatedBench:
    """Supernet vs subnets of ``model`` (a LADS) over ``texts`` (one expression each), batch 1."""
    if not texts:
        raise LanggroundError("no expressions to bench the gated model on")
    model = model.eval().to(device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    gates = []
    for t in texts:
        g, _ = model.explain_gates(t.to(device))
        gates.append(type(g)(g.layer.cpu(), g.filter.cpu()))
    full = model.open_gates(1)
    n_bb = len(model.gated_blocks)
    rows = []
    for t, g in zip(texts, gates, strict=True):
        t = t.to(device)
        gd = type(g)(g.layer.to(device), g.filter.to(device))
        fd = type(full)(full.layer.to(device), full.filter.to(device))
        macs, super_macs = _macs(model, images, t, gd), _macs(model, images, t, fd)  # same text length
        t0 = time.perf_counter()
        model.build_subnet(g.layer[0], g.filter[0])  # extraction alone (the forward below caches its own)
        extract = (time.perf_counter() - t0) * 1e3
        for _ in range(warmup):
            model.forward_with_gates(images, t, gd), model.forward_with_gates(images, t, fd)
        sync()
        sub_ms, super_ms = [], []
        for _ in range(runs):  # alternate, so a load change hits both alike
            sub_ms.append(_median_ms(lambda t=t, g=gd: model.forward_with_gates(images, t, g), 1, sync))
            super_ms.append(_median_ms(lambda t=t, g=fd: model.forward_with_gates(images, t, g), 1, sync))
        layer = g.layer[0]
        rows.append(
            {
                "macs": macs,
                "super_macs": super_macs,
                "sub_ms": statistics.median(sub_ms),
                "super_ms": statistics.median(super_ms),
                "extract_ms": extract,
                "keep_layers": float(layer[:n_bb].float().mean()) if n_bb else 1.0,
                "keep_filters": float(g.filter.float().mean()),
                "keep_fusion": float(layer[n_bb:].float().mean()),
            }
        )

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    patterns = {(g.layer.numpy().tobytes(), g.filter.numpy().tobytes()) for g in gates}
    return GatedBench(
        expressions=len(rows),
        source=source,
        distinct_subnets=len(patterns),
        supernet_macs=round(mean("super_macs")),
        subnet_macs=mean("macs"),
        macs_ratio=mean("macs") / mean("super_macs"),
        supernet_ms=mean("super_ms"),
        subnet_ms=mean("sub_ms"),
        latency_ratio=mean("sub_ms") / mean("super_ms"),
        extract_ms=mean("extract_ms"),
        keep_layers=mean("keep_layers"),
        keep_filters=mean("keep_filters"),
        keep_fusion=mean("keep_fusion"),
        runs=runs,
    )


def split_expressions(cfg_data: Any, data: Path, split: str, count: int) -> tuple[list[str], str]:
    """``count`` evenly spaced expressions of ``split`` (all when fewer) and a description."""
    from langground.engine.builders import open_split

    cfg_data.root = str(data)
    records = open_split(cfg_data, split)
    n = len(records)
    idx = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    return [records[i].text for i in idx], f"{len(idx)} of {n} expressions of {cfg_data.dataset} {split}"


def _gated_name(name: str | None) -> bool:
    import langground.models  # noqa: F401  (registers the model zoo)
    from langground.bench.core import _factory_class

    cls = _factory_class(name) if name else None
    return cls is not None and hasattr(cls, "explain_gates")


def gated_report(
    name: str | None,
    checkpoint: Path | None,
    *,
    size: int | None,
    data: Path | None,
    split: str | None,
    expressions: int,
    dataset: str | None = None,
    runs: int = 5,
    device: str = "cpu",
) -> GatedBench | None:
    """The gated rows of ``langground bench`` (None for a model without gates)."""
    from langground.inference.lads_stats import is_gated

    if (data is None) != (split is None):
        raise LanggroundError("--data and --split go together: the split whose expressions gate the model")
    if checkpoint is None and not _gated_name(name):  # no second build of an ungated model
        if data is not None:
            raise LanggroundError(f"--data/--split: model {name} has no gates to bench")
        return None
    vocab = None
    if checkpoint is not None:
        from langground.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint, device="cpu")
        model, vocab, data_cfg = ckpt.model, ckpt.vocab, ckpt.config.data
    else:
        from langground.config import DataConfig
        from langground.registry import create_model

        model = create_model(name, input_size=size) if size else create_model(name)
        data_cfg = DataConfig()
        if data is not None and dataset is None:
            raise LanggroundError("--data without --checkpoint: also pass --dataset NAME (e.g. synth)")
    if not is_gated(model):
        if data is not None:
            raise LanggroundError(f"--data/--split: model {type(model).__name__} has no gates to bench")
        return None
    if dataset is not None:
        data_cfg.dataset, data_cfg.open_kwargs = dataset, {}
    if data is not None:
        texts, source = split_expressions(data_cfg, data, split, expressions)
    else:
        texts = list(SYNTHETIC_EXPRESSIONS[:expressions])
        source = f"{len(texts)} fixed synthetic expressions (no --data)"
    max_length = int(getattr(model, "max_text_length", 40))
    batches = expression_batches(texts, vocab, max_length, int(getattr(model, "vocab_size", 100)))
    return bench_gated(model, batches, size or int(model.input_size), source=source, runs=runs, device=device)


def gated_rows(r: GatedBench) -> list[tuple[str, str]]:
    """Table rows (what, value) of a :class:`GatedBench`."""
    return [
        ("gated: expressions", f"{r.source}; {r.distinct_subnets} distinct subnets"),
        ("gated: supernet MACs (all open)", f"{r.supernet_macs / 1e9:.3f}G"),
        ("gated: mean subnet MACs", f"{r.subnet_macs / 1e9:.3f}G  (ratio {r.macs_ratio:.3f})"),
        ("gated: supernet latency", f"{r.supernet_ms:.2f} ms (median of {r.runs}, mean over expressions)"),
        ("gated: mean subnet latency", f"{r.subnet_ms:.2f} ms  (ratio {r.latency_ratio:.3f}; prebuilt)"),
        ("gated: subnet extraction", f"{r.extract_ms:.1f} ms per pattern (once)"),
        (
            "gated: kept",
            f"{100 * r.keep_layers:.0f}% gated layers, {100 * r.keep_filters:.0f}% filter gates, "
            f"{100 * r.keep_fusion:.0f}% fusion sublayers",
        ),
    ]


__all__ = [
    "SYNTHETIC_EXPRESSIONS",
    "GatedBench",
    "bench_gated",
    "expression_batches",
    "gated_report",
    "gated_rows",
]
