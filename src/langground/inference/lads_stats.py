"""LADS gate statistics over a split's expressions (paper Fig. 4 and Fig. 7): ``langground lads-stats``.

Everything is computed from the EVALUATION gates (no noise, hard, Eq. 4-5 at inference) of each expression,
which depend on the expression alone (the image is never read):

- selection rate of each layer gate and of each filter gate (Fig. 4a-b): the fraction of expressions
  whose gate is ON;
- kept layers per expression (Fig. 4c): open gated bottlenecks (``backbone``; ``backbone_total`` adds the
  blocks that always run, the paper's 16-layer count) and open fusion sublayers (``fusion``);
- kept filters per expression and stage (Fig. 4d): the open filters of the OPEN gated bottlenecks of the
  stage (a closed bottleneck computes none of its filters);
- never- / always-selected units: gates ON for no / every expression;
- word-to-layer assignment (Fig. 7), the paper's definition: ``s_w`` = Eq. 1's ``alpha_i`` on word ``w``
  averaged over every occurrence of ``w`` in the split (one value per gated unit; sub-words of a word
  summed, [CLS] left out), ``s_hat_w = softmax(s_w)`` over the ``P + M`` units, and the word's score for
  the visual backbone (the modality interaction module) is the sum of ``s_hat_w`` over the ``P``
  bottleneck units (the ``M`` fusion sublayer units). A word is assigned to the part with the larger score
  relative to its share of units (``backbone / P`` vs ``fusion / M``, so the unequal unit counts do not
  decide it); ``top_unit`` is the unit of the largest ``s_w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from langground.errors import LanggroundError


def is_gated(model: Any) -> bool:
    """A model with LADS-style gates (a Gating Network and ``explain_gates``)."""
    return hasattr(model, "explain_gates") and hasattr(model, "gating") and hasattr(model, "units")


@torch.no_grad()
def collect_gates(
    model: Any, vocab: Any, texts: Sequence[str], max_length: int, batch_size: int = 256
) -> dict[str, Any]:
    """Evaluation gates of every expression: ``layer`` ``(N, U)`` and ``filter`` ``(N, C)`` uint8 arrays,
    and the word statistics of Fig. 7 (``word_sum`` ``{word: (U,) alpha summed}``, ``word_count``)."""
    if not is_gated(model):
        raise LanggroundError(f"model {type(model).__name__} has no LADS gates (a Gating Network)")
    if not texts:
        raise LanggroundError("no expressions to gather gate statistics over")
    model.eval()
    device = next(model.parameters()).device
    layers, filters = [], []
    word_sum: dict[str, np.ndarray] = {}
    word_count: dict[str, int] = {}
    for start in range(0, len(texts), batch_size):
        batch = vocab.batch(list(texts[start : start + batch_size]), max_length).to(device)
        g, alpha = model.explain_gates(batch)
        layers.append(g.layer.cpu().numpy().astype(np.uint8))
        filters.append(g.filter.cpu().numpy().astype(np.uint8))
        a = alpha.float().cpu().numpy()  # (B, U, W)
        for i, words in enumerate(batch.tokens):
            for j, w in enumerate(words):
                if w not in word_sum:
                    word_sum[w], word_count[w] = np.zeros(a.shape[1]), 0
                word_sum[w] += a[i, :, j]
                word_count[w] += 1
    return {
        "layer": np.concatenate(layers),
        "filter": np.concatenate(filters),
        "word_sum": word_sum,
        "word_count": word_count,
    }


def _distribution(values: np.ndarray, total: int) -> dict[str, Any]:
    counts = np.bincount(values.astype(np.int64), minlength=total + 1)
    return {
        "total": int(total),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": int(values.min()),
        "max": int(values.max()),
        "histogram": [int(c) for c in counts],  # histogram[k]: expressions keeping k
    }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def word_assignment(
    word_sum: dict[str, np.ndarray], word_count: dict[str, int], units: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Fig. 7's word-to-layer assignment (definition in the module docstring), per word."""
    backbone = np.array([u["kind"] == "bottleneck" for u in units])
    p, m = int(backbone.sum()), int((~backbone).sum())
    out: dict[str, Any] = {}
    for w in sorted(word_sum, key=lambda k: (-word_count[k], k)):
        s = word_sum[w] / word_count[w]  # s_w: alpha averaged over the word's occurrences
        s_hat = _softmax(s)
        b, f = float(s_hat[backbone].sum()), float(s_hat[~backbone].sum())
        prefers = "backbone" if (b / max(p, 1)) >= (f / max(m, 1)) else "fusion"
        out[w] = {
            "count": int(word_count[w]),
            "backbone": b,
            "fusion": f,
            "assigned": prefers,
            "top_unit": units[int(np.argmax(s))]["name"],
            "s": [float(v) for v in s],
        }
    return out


def gate_statistics(model: Any, gathered: dict[str, Any], top_words: int = 15) -> dict[str, Any]:
    """Everything ``lads-stats`` reports, from :func:`collect_gates`'s ``gathered`` gates."""
    units = model.units()
    layer, filt = gathered["layer"].astype(bool), gathered["filter"].astype(bool)
    n = layer.shape[0]
    if layer.shape[1] != len(units) or filt.shape[1] != sum(u["filters"] for u in units):
        raise LanggroundError(
            f"gate arrays {layer.shape} / {filt.shape} do not fit the model's {len(units)} units"
        )
    offsets = np.cumsum([0] + [u["filters"] for u in units])
    rows: list[dict[str, Any]] = []
    never_f: dict[str, list[int]] = {}
    always_f: dict[str, list[int]] = {}
    for k, u in enumerate(units):
        rate = float(layer[:, k].mean())
        row: dict[str, Any] = {**u, "rate": rate, "never": rate == 0.0, "always": rate == 1.0}
        if u["filters"]:
            fr = filt[:, offsets[k] : offsets[k + 1]].mean(0)
            row["filter_rates"] = [float(v) for v in fr]
            row["filters_never"] = int((fr == 0).sum())
            row["filters_always"] = int((fr == 1).sum())
            if row["filters_never"]:
                never_f[u["name"]] = [int(i) for i in np.flatnonzero(fr == 0)]
            if row["filters_always"]:
                always_f[u["name"]] = [int(i) for i in np.flatnonzero(fr == 1)]
        rows.append(row)
    is_bb = np.array([u["kind"] == "bottleneck" for u in units])
    always_run = len(model._blocks()) - int(is_bb.sum())  # the first block of each stage
    kept_bb = layer[:, is_bb].sum(1)
    layers = {
        "backbone": _distribution(kept_bb, int(is_bb.sum())),
        "backbone_total": _distribution(kept_bb + always_run, int(is_bb.sum()) + always_run),
        "fusion": _distribution(layer[:, ~is_bb].sum(1), int((~is_bb).sum())),
    }
    filters: dict[str, Any] = {}
    for stage in dict.fromkeys(u["stage"] for u in units if u["filters"]):
        kept = np.zeros(n, dtype=np.int64)
        total = 0
        for k, u in enumerate(units):
            if u["stage"] == stage and u["filters"]:
                kept += (filt[:, offsets[k] : offsets[k + 1]].sum(1) * layer[:, k]).astype(np.int64)
                total += u["filters"]
        filters[stage] = _distribution(kept, total)
    layer_rates = layer.mean(0)
    filter_rates = filt.mean(0)

    def _counts(r: np.ndarray) -> dict[str, Any]:
        never, always = int((r == 0).sum()), int((r == 1).sum())
        return {
            "gates": int(r.size),
            "never": never,
            "always": always,
            "dynamic": int(r.size - never - always),
            "dynamic_fraction": float((r.size - never - always) / max(r.size, 1)),
        }

    words = word_assignment(gathered["word_sum"], gathered["word_count"], units)
    frequent = [w for w, v in words.items() if v["count"] >= 2] or list(words)
    by_bb = sorted(frequent, key=lambda w: -words[w]["backbone"])
    patterns = np.unique(np.concatenate([layer, filt], 1), axis=0).shape[0]
    return {
        "expressions": int(n),
        "distinct_subnets": int(patterns),
        "units": rows,
        "layers": layers,
        "filters": filters,
        "never_selected": {
            "layers": [u["name"] for u, r in zip(units, layer_rates, strict=True) if r == 0],
            "filters": never_f,
        },
        "always_selected": {
            "layers": [u["name"] for u, r in zip(units, layer_rates, strict=True) if r == 1],
            "filters": always_f,
        },
        "summary": {
            "layer_gates": _counts(layer_rates),
            "filter_gates": _counts(filter_rates),
            "all_gates": _counts(np.concatenate([layer_rates, filter_rates])),
            "mean_layer_rate": float(layer_rates.mean()),
            "mean_filter_rate": float(filter_rates.mean()) if filter_rates.size else 0.0,
        },
        "word_assignment": {
            "definition": "s_w = Eq. 1 alpha on word w averaged over its occurrences (per unit); "
            "s_hat_w = softmax(s_w) over the P bottleneck + M fusion units; backbone = sum of s_hat_w over "
            "the P units, fusion = over the M units (paper, Fig. 7); assigned = the larger of backbone/P "
            "and fusion/M",
            "units_backbone": int(is_bb.sum()),
            "units_fusion": int((~is_bb).sum()),
            "top_backbone": by_bb[:top_words],
            "top_fusion": by_bb[::-1][:top_words],
            "words": words,
        },
    }


__all__ = ["collect_gates", "gate_statistics", "is_gated", "word_assignment"]
