"""``benchmark_model``: parameters, MACs/FLOPs, latency and peak memory of any registered model."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from langground.bench.macs import count_macs
from langground.bench.measure import PeakRSS, measure_latency
from langground.bench.optimize import DTYPES, bf16_supported, prepare_for_inference, prepare_inputs
from langground.errors import LanggroundError
from langground.registry import create_model, is_model, list_models
from langground.tasks import get_task
from langground.types import TextBatch

#: The expression every benchmark reads (15 words: the authors' REC token limit).
BENCH_WORDS = [
    "the",
    "man",
    "in",
    "a",
    "red",
    "shirt",
    "standing",
    "on",
    "the",
    "left",
    "side",
    "of",
    "the",
    "white",
    "car",
]
BENCH_VOCAB = 10000
BENCH_ANSWERS = 3129  # VQAv2's standard answer vocabulary


@dataclass
class BenchResult:
    model: str
    task: str
    size: int
    batch: int
    threads: int
    dtype: str
    compile: bool
    channels_last: bool
    fuse_bn: bool
    device: str
    params: int
    trainable_params: int
    macs: int  # multiply-accumulates: what the papers call "FLOPs"
    flops: int  # 2 x MACs
    macs_by_module: dict[str, int]
    macs_by_formula: dict[str, int]
    latency_ms: float  # median over warm runs
    latency_min_ms: float
    latency_p90_ms: float
    first_call_ms: float
    runs: int
    warmup: int
    peak_rss_delta_mb: float  # RSS growth over the first (warm-up) calls
    weights_mb: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bench_text(batch: int, vocab_size: int, length: int = len(BENCH_WORDS), device: str = "cpu") -> TextBatch:
    words = BENCH_WORDS[:length]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, max(3, vocab_size), (batch, len(words)), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    return TextBatch(ids.to(device), mask.to(device), [" ".join(words)] * batch, [list(words)] * batch)


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def benchmark_model(
    name: str,
    task: str = "rec",
    size: int = 416,
    batch: int = 1,
    threads: int = 2,
    warmup: int = 5,
    runs: int = 20,
    compile: bool = False,
    channels_last: bool = False,
    dtype: str = "fp32",
    fuse_bn: bool = True,
    device: str = "cpu",
    text_length: int = len(BENCH_WORDS),
    **model_kwargs: Any,
) -> BenchResult:
    """Build ``name`` for ``task`` at ``size``^2 (10,000-word vocabulary), count, then time it.

    MACs are counted on the eager float32 model (BN folding, layout and dtype do not change them).
    """
    if not is_model(name):
        raise LanggroundError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if dtype not in DTYPES:
        raise LanggroundError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch < 1 or size < 1 or threads < 1 or runs < 1:
        raise LanggroundError("batch, size, threads and runs must be positive")
    if text_length < 1 or text_length > len(BENCH_WORDS):
        raise LanggroundError(f"text_length must be in 1..{len(BENCH_WORDS)}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {"task": task, "input_size": size, "vocab_size": BENCH_VOCAB, **model_kwargs}
    if get_task(task).needs_answers:
        kwargs.setdefault("num_answers", BENCH_ANSWERS)
    model = create_model(name, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = bench_text(batch, getattr(model, "vocab_size", BENCH_VOCAB), text_length)
    report = count_macs(model, images, text)

    model.to(device)
    text = text.to(device)
    fn = prepare_for_inference(
        model, fuse_bn=fuse_bn, channels_last=channels_last, dtype=dtype, compile=compile
    )
    x = prepare_inputs(images.to(device), channels_last=channels_last, dtype=dtype)

    def run() -> Any:
        with torch.inference_mode(not compile), torch.no_grad():
            return fn(x, text)

    load_before = _loadavg()
    # Memory: RSS growth from the built model to the peak of the first calls (activations, workspaces,
    # one-time weight packing; with compile=True also the compiler's own memory).
    with PeakRSS() as mem:
        first = measure_latency(run, warmup=warmup, runs=1, device=device)
    lat = measure_latency(run, warmup=1, runs=runs, device=device)
    load_after = _loadavg()
    env = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_supported(device),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    return BenchResult(
        model=name,
        task=task,
        size=size,
        batch=batch,
        threads=threads,
        dtype=dtype,
        compile=compile,
        channels_last=channels_last,
        fuse_bn=fuse_bn,
        device=device,
        params=params,
        trainable_params=trainable,
        macs=report.total,
        flops=report.flops,
        macs_by_module=report.by_module,
        macs_by_formula=report.explicit,
        latency_ms=lat.median_ms,
        latency_min_ms=lat.min_ms,
        latency_p90_ms=lat.p90_ms,
        first_call_ms=first.first_call_ms,
        runs=runs,
        warmup=warmup,
        peak_rss_delta_mb=mem.delta / 2**20,
        weights_mb=weights_mb,
        loadavg_before=load_before,
        loadavg_after=load_after,
        environment=env,
    )
