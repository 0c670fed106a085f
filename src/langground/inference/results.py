"""Shaping what the model returned into Grounder results: top-k answers, attention maps, result dicts.

Everything here is in ORIGINAL image pixels; result dicts are shaped like Hugging Face pipeline outputs
(see :meth:`langground.inference.grounder.Grounder.predict` for their keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from langground.errors import LanggroundError
from langground.postprocess import unletterbox_map
from langground.types import Prediction


@dataclass
class GroundingOutput:
    """Everything one (image, expression) pair produced, before it is shaped into a result dict.

    Attributes:
        prediction: boxes / mask / no-target / answer in original pixels.
        answers: VQA top-k ``[(answer, probability)]``, best first (empty for grounding models).
        words: the tokens the model read (after truncation).
        attention: ``{stage: (len(words), H, W)}`` cross-modal attention in original pixels (explain only).
    """

    prediction: Prediction
    answers: list[tuple[str, float]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    attention: dict[str, np.ndarray] | None = None


def top_answers(logits: Tensor, names: Sequence[str] | None, top_k: int) -> list[list[tuple[str, float]]]:
    """VQA answer logits ``(B, A)`` -> per sample the ``top_k`` ``(answer, probability)``, best first."""
    probs = logits.float().softmax(dim=-1).cpu()
    values, ids = probs.topk(min(max(1, top_k), probs.shape[-1]), dim=-1)
    return [
        [(names[j] if names else str(j), float(v)) for v, j in zip(vs.tolist(), js.tolist(), strict=True)]
        for vs, js in zip(values, ids, strict=True)
    ]


def attention_maps(
    raw: dict[str, Any],
    tokens: list[list[str]],
    transforms: list[tuple[float, float, float]],
    sizes: list[tuple[int, int]],
    input_size: int,
    model_name: str,
) -> list[dict[str, np.ndarray]]:
    """The model's per-stage cross-modal attention, per sample ``{stage: (len(words), H, W)}`` in original
    pixels; a one-line :class:`LanggroundError` when the model (``model_name``) exposes none."""
    maps = (raw.get("aux") or {}).get("attention")
    if not maps and (raw.get("aux") or {}).get(
        "gates"
    ):  # a gated model (LADS): its subnet is the explanation
        from langground.inference.subnet_diagram import gate_explanations

        return gate_explanations(raw) or []
    if not maps:
        raise LanggroundError(
            f"model {model_name} returns no cross-modal attention (outputs['aux']['attention']): "
            "explain needs a model that exposes it, such as LaConvNet"
        )
    out: list[dict[str, np.ndarray]] = []
    for b, words in enumerate(tokens):
        per_stage = {}
        for stage, att in maps.items():
            # (L, h, w) on the canvas -> (n_words, H, W) on the original image.
            a = att[b, : len(words)].float().cpu()
            per_stage[str(stage)] = unletterbox_map(a, transforms[b], sizes[b], input_size).numpy()
        out.append(per_stage)
    return out


def shape_result(
    o: GroundingOutput,
    expression: str,
    *,
    answers_questions: bool,
    heads: set[str] | frozenset[str],
    no_target_threshold: float,
    unknown_words: list[str],
    explain: bool,
) -> dict[str, Any]:
    """One :class:`GroundingOutput` -> its result dict (a VQA one when ``answers_questions``).

    ``has_target`` is the decision taken at ``no_target_threshold`` when the task (``heads``) has a
    no-target head; ``unknown_words`` are the words read as ``<unk>``.
    """
    p = o.prediction
    result: dict[str, Any]
    if answers_questions:
        answers = [{"answer": a, "score": s} for a, s in o.answers]
        result = {
            "expression": expression,  # the question: the same key as every task's results
            "answer": answers[0]["answer"] if answers else None,
            "score": answers[0]["score"] if answers else None,
            "answers": answers,  # top-k, best first
        }
    else:
        boxes = [{"box": _box_dict(b), "score": float(s)} for b, s in zip(p.boxes, p.scores, strict=True)]
        decides = "no_target" in heads and p.no_target is not None
        result = {
            "box": boxes[0]["box"] if boxes else None,
            "score": boxes[0]["score"] if boxes else None,
            "mask": None if p.mask is None else Image.fromarray(p.mask.astype(np.uint8) * 255),
            "no_target": p.no_target,
            # the decision the thresholds took, next to the probability it was taken on
            "has_target": bool(p.no_target < no_target_threshold) if decides else None,
            "expression": expression,
            "boxes": boxes,  # every box, best first (several for generalized REC, none for no target)
        }
    result["unknown_words"] = unknown_words
    if explain:
        result["words"] = o.words
        result["attention"] = o.attention
    return result


def _box_dict(box: np.ndarray) -> dict[str, float]:
    x0, y0, x1, y1 = (round(float(v), 2) for v in box)
    return {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
