"""``benchmark_model``: parameters, MACs/FLOPs, latency and peak memory of any registered model."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from langground.bench.macs import count_macs
from langground.bench.measure import PeakRSS, measure_latency, measure_memory, release_free_heap
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
BENCH_VOCAB = 10000  # the paper budgets' (Table 2) GloVe table: `--vocab-size 10000`
BENCH_ANSWERS = 3129  # VQAv2's standard answer vocabulary
BENCH_SIZE = 416


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
    vocab_size: int  # words of the text embedding (part of ``params``)
    vocab_source: str  # where vocab_size came from: the model's default, --vocab-size, a checkpoint
    checkpoint: str | None
    macs: int  # multiply-accumulates: what the papers call "FLOPs"
    flops: int  # 2 x MACs
    macs_by_module: dict[str, int]
    macs_by_formula: dict[str, int]
    latency_ms: float  # median over warm runs, of one call on a batch of ``batch`` samples
    latency_per_sample_ms: float  # latency_ms / batch
    latency_min_ms: float
    latency_p90_ms: float
    first_call_ms: float
    runs: int
    warmup: int
    peak_activation_mb: float  # allocator peak of one warm forward above the weights (activations...)
    memory_method: str  # how: "torch.profiler" (CPU allocator events) | "cuda allocator"
    peak_rss_delta_mb: float  # process RSS growth over that warm forward (after malloc_trim)
    first_call_rss_delta_mb: float  # RSS growth over the first calls (one-time packing, compilation)
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


def check_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` that this machine has; one-line LanggroundError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LanggroundError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise LanggroundError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LanggroundError(
                f"--device {device!r}: CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LanggroundError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def _from_checkpoint(
    checkpoint: str | os.PathLike, name: str | None, task: str | None, vocab_size: int | None, kwargs: dict
) -> tuple[Any, str, str, str]:
    """The checkpoint's model (its weights, task, vocabulary); ``(model, name, task, resolved path)``."""
    from langground.engine.checkpoint import load_checkpoint

    if vocab_size is not None or kwargs:
        raise LanggroundError(
            f"--checkpoint {checkpoint}: its config fixes the model (vocabulary, options); drop --vocab-size "
            "and model options"
        )
    ckpt = load_checkpoint(checkpoint, device="cpu")
    cfg = ckpt.config
    if name is not None and name != cfg.model.name:
        raise LanggroundError(f"--model {name}: checkpoint {ckpt.path} holds a {cfg.model.name!r} model")
    if task is not None and task != cfg.model.task:
        raise LanggroundError(
            f"--task {task}: checkpoint {ckpt.path} was trained for task {cfg.model.task!r}"
        )
    return ckpt.model, cfg.model.name, cfg.model.task, str(ckpt.path)


def benchmark_model(
    name: str | None = None,
    task: str | None = None,
    size: int | None = None,
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
    vocab_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    **model_kwargs: Any,
) -> BenchResult:
    """Build ``name`` for ``task`` (default ``rec``) at ``size``^2 (default 416), count, then time it.

    The vocabulary is the model's default (``laconvnet_t``: 100 words; S/B: 10,000, Table 2's budget)
    unless ``vocab_size`` is given; ``checkpoint`` benches a trained model (its task, vocabulary and
    input size; ``name`` / ``task`` may be omitted). MACs are counted on the eager float32 model (BN
    folding, layout and dtype do not change them). Latency is per call on a batch of ``batch``.
    """
    if dtype not in DTYPES:
        raise LanggroundError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch < 1 or threads < 1 or runs < 1 or (size is not None and size < 1):
        raise LanggroundError("batch, size, threads and runs must be positive")
    if text_length < 1 or text_length > len(BENCH_WORDS):
        raise LanggroundError(f"text_length must be in 1..{len(BENCH_WORDS)}")
    if vocab_size is not None and vocab_size < 2:
        raise LanggroundError(f"--vocab-size {vocab_size}: expected at least 2 (padding and unknown word)")
    check_device(device)  # before minutes of model building
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if checkpoint is not None:
        model, name, task, ckpt_path = _from_checkpoint(checkpoint, name, task, vocab_size, model_kwargs)
        size = size or int(model.input_size)
        source = f"checkpoint {ckpt_path}"
    else:
        if name is None:
            raise LanggroundError(
                "no model: pass --model NAME (`langground models` lists them) or --checkpoint"
            )
        if not is_model(name):
            raise LanggroundError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
        task, size, ckpt_path = task or "rec", size or BENCH_SIZE, None
        kwargs = {"task": task, "input_size": size, **model_kwargs}
        if vocab_size is not None:
            kwargs["vocab_size"] = vocab_size
        if get_task(task).needs_answers:
            kwargs.setdefault("num_answers", BENCH_ANSWERS)
        model = create_model(name, **kwargs)
        source = "--vocab-size" if vocab_size is not None else f"{name}'s default"
    model = model.eval()
    vocab = int(getattr(model, "vocab_size", vocab_size or BENCH_VOCAB))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = bench_text(batch, vocab, text_length)
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
    # The first calls: RSS growth from the built model (one-time weight packing; with compile=True also
    # the compiler's own memory). Freed heap pages are returned first, so pages reused since the MAC
    # count's forward show up again.
    release_free_heap()
    with PeakRSS() as first_mem:
        first = measure_latency(run, warmup=warmup, runs=1, device=device)
    lat = measure_latency(run, warmup=1, runs=runs, device=device)
    mem = measure_memory(run, device=device)  # one warm forward: activations, temporaries, output
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
        vocab_size=vocab,
        vocab_source=source,
        checkpoint=ckpt_path,
        macs=report.total,
        flops=report.flops,
        macs_by_module=report.by_module,
        macs_by_formula=report.explicit,
        latency_ms=lat.median_ms,
        latency_per_sample_ms=lat.median_ms / batch,
        latency_min_ms=lat.min_ms,
        latency_p90_ms=lat.p90_ms,
        first_call_ms=first.first_call_ms,
        runs=runs,
        warmup=warmup,
        peak_activation_mb=mem.peak_bytes / 2**20,
        memory_method=mem.method,
        peak_rss_delta_mb=mem.rss_delta_bytes / 2**20,
        first_call_rss_delta_mb=first_mem.delta / 2**20,
        weights_mb=weights_mb,
        loadavg_before=load_before,
        loadavg_after=load_after,
        environment=env,
    )


@dataclass
class ModelInfo:
    name: str
    tasks: tuple[str, ...]  # the model class's ``supported_tasks``
    params: int | None  # at the factory's defaults; None when not counted
    vocab_size: int | None
    description: str


def _factory_class(name: str) -> Any:
    """The class a registered factory returns, from its return annotation (None when it has none)."""
    import typing

    from langground.registry import _MODELS  # the factories themselves: the registry has no public getter

    try:
        return typing.get_type_hints(_MODELS[name]).get("return")
    except Exception:  # an annotation that does not resolve
        return None


def describe_models(count_params: bool = True) -> list[ModelInfo]:
    """Every registered model: supported tasks and, at its defaults, its parameters (built on the meta
    device: shapes only, no memory or initialisation cost)."""
    from langground.registry import _MODELS  # the factories' docstrings

    out = []
    for name in list_models():
        doc = (_MODELS[name].__doc__ or "").strip().splitlines()
        cls, params, vocab = _factory_class(name), None, None
        if count_params:
            try:
                with torch.device("meta"):
                    model = create_model(name)
            except Exception:  # a factory that needs arguments or real tensors: listed without a count
                model = None
            if model is not None:
                cls = type(model)
                params = sum(p.numel() for p in model.parameters())
                vocab = getattr(model, "vocab_size", None)
        tasks = tuple(getattr(cls, "supported_tasks", ()) or ())
        out.append(ModelInfo(name, tasks, params, vocab, doc[0] if doc else ""))
    return out
