"""Visual question answering: one answer out of the training split's answer vocabulary (CLEVR, VQAv2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from langground.tasks import decode as D
from langground.tasks import terms
from langground.tasks.base import Frame, Task
from langground.tasks.registry import register_task
from langground.types import Prediction, Targets


@register_task
class VQA(Task):
    name = "vqa"
    description = "an answer per question"
    heads = frozenset({"answer"})
    metrics = ("vqa",)
    primary_metric = "vqa/acc"
    loss_weights = {"answer": 1.0}
    needs_answers = True
    record_unit = "question"

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return terms.answer_terms(outputs, targets)

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        pred = D.empty_prediction(D.no_target_prob(outputs, i))
        answer = D.decode_answer(outputs, i, ctx)
        if answer is not None:
            pred.answer, pred.answer_score = answer
        return pred
