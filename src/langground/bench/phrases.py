"""``langground bench --phrases N``: per-phrase latency of a phrase-query model (RefTR) with N phrases of
one caption answered in ONE pass, against one expression per inference (each phrase its own forward
pass over the image, as REC models answer). The Referring Transformer reports 37 ms per expression
vs 14 ms per phrase on Flickr30k (the lecture's REC table, "37(14)").

The caption is N three-word phrases joined by "and" ("the red cube and the small ball and ..."); the
multi-phrase pass gets its N spans as :class:`~langground.types.PhraseQueries`; the single pass reads
one phrase's three words with no queries (a referring expression is one phrase covering it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from langground.bench.core import check_device
from langground.bench.measure import measure_latency
from langground.errors import LanggroundError
from langground.registry import create_model, is_model, list_models
from langground.types import PhraseQueries, TextBatch

_WORDS = [
    ("the", "red", "cube"),
    ("a", "small", "ball"),
    ("the", "green", "cylinder"),
    ("one", "blue", "cone"),
]


@dataclass
class PhraseBenchResult:
    model: str
    size: int
    phrases: int
    threads: int
    device: str
    multi_ms: float  # one pass answering all N phrases (median)
    multi_per_phrase_ms: float  # multi_ms / N
    single_ms: float  # one expression per inference (median of one pass)
    speedup: float  # single_ms / multi_per_phrase_ms
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def caption(n: int, vocab_size: int) -> tuple[TextBatch, PhraseQueries, TextBatch]:
    """The N-phrase caption with its spans, and the first phrase alone (all ids below ``vocab_size``)."""
    words: list[str] = []
    spans = []
    for k in range(n):
        if k:
            words.append("and")
        start = len(words)
        words.extend(_WORDS[k % len(_WORDS)])
        spans.append((start, len(words)))
    ids = torch.tensor([[2 + sum(map(ord, w)) % max(1, vocab_size - 2) for w in words]])
    text = TextBatch(ids, torch.ones_like(ids, dtype=torch.bool), [" ".join(words)], [words])
    queries = PhraseQueries(torch.tensor([spans]), torch.ones(1, n, dtype=torch.bool))
    a, b = spans[0]
    alone = TextBatch(
        ids[:, a:b], torch.ones(1, b - a, dtype=torch.bool), [" ".join(words[a:b])], [words[a:b]]
    )
    return text, queries, alone


def phrase_bench(
    name: str,
    phrases: int,
    size: int | None = None,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
    device: str = "cpu",
    **model_kwargs: Any,
) -> PhraseBenchResult:
    """Median latency of one N-phrase pass and of one single-expression pass of model ``name`` (task
    ``phrase``, random weights: timing does not depend on them)."""
    if phrases < 1:
        raise LanggroundError(f"--phrases {phrases}: expected at least 1")
    if not is_model(name):
        raise LanggroundError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    dev = check_device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {"task": "phrase", **model_kwargs}
    if size is not None:
        kwargs["input_size"] = size
    kwargs.setdefault("max_text_length", 4 * phrases)
    try:
        model = create_model(name, **kwargs).eval().to(dev)
    except LanggroundError as e:
        if "does not support task 'phrase'" in str(e):
            raise LanggroundError(f"--phrases: model {name} has no phrase queries (task 'phrase')") from None
        raise
    side = int(model.input_size)
    text, queries, alone = caption(phrases, int(model.vocab_size))
    image = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
    text, queries, alone = text.to(dev), queries.to(dev), alone.to(dev)

    def multi() -> Any:
        with torch.inference_mode():
            return model(image, text, phrases=queries)

    def single() -> Any:
        with torch.inference_mode():
            return model(image, alone)

    many = measure_latency(multi, warmup=warmup, runs=runs, device=str(dev)).median_ms
    one = measure_latency(single, warmup=warmup, runs=runs, device=str(dev)).median_ms
    per = many / phrases
    return PhraseBenchResult(name, side, phrases, threads, str(dev), many, per, one, one / per, runs)


def phrase_rows(r: PhraseBenchResult) -> list[tuple[str, str]]:
    return [
        (
            f"{r.phrases} phrases in one pass",
            f"{r.multi_ms:.1f} ms ({r.multi_per_phrase_ms:.1f} ms per phrase)",
        ),
        ("one expression per inference", f"{r.single_ms:.1f} ms per phrase"),
        ("per-phrase speed-up", f"{r.speedup:.2f}x  (RefTR on Flickr30k: 37 / 14 ms = 2.64x)"),
        ("settings", f"{r.device}, {r.threads} threads, {r.size}x{r.size}, median of {r.runs} runs"),
    ]
