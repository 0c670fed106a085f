"""Visual question answering accuracy (CLEVR-style: one ground-truth answer per question)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

import numpy as np

from langground.engine.metrics.base import MetricAccumulator, SampleStats
from langground.types import GroundingRecord, Prediction

__all__ = ["VQAMetric", "normalize_answer"]

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
        + ("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
        + ("nineteen", "twenty")
    )
}
_ARTICLES = {"a", "an", "the"}
# Punctuation becomes a space, except a decimal point or thousands comma between digits ("1.5", "1,000").
_PUNCT = re.compile(
    r"(?<!\d)[.,](?!\d)|[" + re.escape(string.punctuation.replace(".", "").replace(",", "")) + "]"
)


def normalize_answer(answer: str | None) -> str:
    """Canonical form of an answer string, so that "Two." and "2" or "the red one" and "red one" agree.

    Steps (a simplified version of the VQA v2 evaluation's normalisation): lower-case; punctuation
    to spaces (keeping ``1.5`` and ``1,000``); number words zero..twenty to digits; drop the
    articles a/an/the; collapse whitespace. ``None`` becomes ``""`` (which matches nothing: an
    empty ground truth is never scored, see :class:`VQAMetric`).
    """
    if answer is None:
        return ""
    words = _PUNCT.sub(" ", str(answer).lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


class VQAMetric(MetricAccumulator):
    """Answer accuracy: the fraction of questions whose normalised predicted answer equals the
    normalised ground truth (:func:`normalize_answer`), as LaConvNet reports on CLEVR ("classification
    accuracy", §5.1).

    Keys: ``vqa/acc`` and, per question family, ``vqa/acc/family/<family>`` (e.g. ``count``).
    Records without an answer are skipped; a prediction without an answer is wrong.
    """

    prefix = "vqa"
    family_metrics = ("acc",)

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if record.answer is None:
            return None
        truth = normalize_answer(record.answer)
        if not truth:
            raise ValueError(
                f"vqa: sample {record.sample_id!r} has an empty ground-truth answer {record.answer!r}"
            )
        correct = prediction.answer is not None and normalize_answer(prediction.answer) == truth
        return {"count": 1, "correct": int(correct)}

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        n = sums.get("count", 0)
        return {"acc": sums["correct"] / n} if n else {}
