"""Visual question answering accuracy: exact match (CLEVR, one answer) or VQAv2's human-consensus score.

docs/metrics.md compares both with the released scripts (VQAv2: ``vqaEval.py`` of GT-Vision-Lab/VQA).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from langground.engine.metrics.base import MetricAccumulator, SampleStats
from langground.types import GroundingRecord, Prediction

__all__ = ["VQAMetric", "normalize_answer", "normalize_vqa2", "vqa_accuracy"]

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
    """Canonical form of a single ground-truth answer (CLEVR-style exact match), so that "Two." and "2"
    or "the red one" and "red one" agree.

    Steps: lower-case; every ASCII punctuation mark to a space (keeping ``1.5`` and ``1,000``); number
    words zero..twenty to digits; drop the articles a/an/the; collapse whitespace. ``None`` becomes
    ``""`` (which matches nothing: an empty ground truth is never scored, see :class:`VQAMetric`).
    For VQAv2's several human answers use :func:`normalize_vqa2` (the official steps).
    """
    if answer is None:
        return ""
    words = _PUNCT.sub(" ", str(answer).lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


# The official VQA evaluation's processing (``VQAEval.processPunctuation`` / ``processDigitArticle``),
# re-implemented: its punctuation list (no "-", "!", "." here: "." has its own rule), its number words.
_VQA_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
_VQA_NUMBERS = {"none": "0", **{w: d for w, d in _NUMBER_WORDS.items() if int(d) <= 10}}
_DIGIT_COMMA = re.compile(r"\d,\d")
# The script's pattern "(?!<=\d)(\.)(?!\d)" is a look-AHEAD for "<=": in effect a period not before a digit.
_PERIOD = re.compile(r"\.(?!\d)")


def normalize_vqa2(answer: str) -> str:
    """An answer in the VQAv2 evaluation's normal form.

    As the official ``vqaEval.py``: newlines/tabs to spaces and strip; each mark of its punctuation
    list is deleted when the text has it next to a space or has a digit-comma-digit (``"1,000"`` ->
    ``"1000"``), else replaced by a space; a period not followed by a digit is deleted; lower-case;
    ``none`` and zero..ten to digits; articles a/an/the dropped; single spaces. Not applied: the
    script's contraction map (``"dont"`` -> ``"don’t"``, ...), see docs/metrics.md.
    """
    text = str(answer).replace("\n", " ").replace("\t", " ").strip()
    glue = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _VQA_PUNCT:  # the tests look at the original text, as the script's do
        out = out.replace(p, "" if glue or f"{p} " in text or f" {p}" in text else " ")
    out = _PERIOD.sub("", out)
    words = (_VQA_NUMBERS.get(w, w) for w in out.lower().split())
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(answer: str | None, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one predicted answer against N (VQAv2: 10) human answers, the official way.

    ``Acc = mean over the N leave-one-out subsets of min(#humans in the subset who gave the answer / 3,
    1)`` (the "10 choose 9" average of ``vqaEval.py``), after :func:`normalize_vqa2` on both sides.
    With ``m`` of the N humans agreeing: ``(m * min(m - 1, 3) + (N - m) * min(m, 3)) / (3N)``, exactly
    (fractions), e.g. 10 answers: m = 0, 1, 2, 3, >=4 -> 0, 0.3, 0.6, 0.9, 1. ``None`` scores 0.
    """
    if len(human_answers) < 2:
        raise ValueError(f"vqa_accuracy needs at least 2 human answers, got {len(human_answers)}")
    if answer is None:
        return 0.0
    guess = normalize_vqa2(answer)
    n = len(human_answers)
    m = sum(normalize_vqa2(a) == guess for a in human_answers)
    # Leaving out one of the m agreeing humans leaves m - 1 of them; leaving out another leaves m.
    return float(Fraction(m * min(m - 1, 3) + (n - m) * min(m, 3), 3 * n)) if m else 0.0


class VQAMetric(MetricAccumulator):
    """Answer accuracy, ``vqa/acc`` (and per question family ``vqa/acc/family/<family>``).

    - A record with several human answers (``record.answers``, VQAv2's ten): :func:`vqa_accuracy`,
      the official VQAv2 score (a fraction of a point per question).
    - Otherwise (``record.answer`` only; CLEVR, as LaConvNet reports it, §5.1 "classification
      accuracy"): exact match after :func:`normalize_answer`.

    Records without any answer are skipped; a prediction without an answer is wrong.
    """

    prefix = "vqa"
    family_metrics = ("acc",)

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if len(record.answers) >= 2:
            return {"count": 1, "acc": vqa_accuracy(prediction.answer, record.answers)}
        single = record.answer if record.answer is not None else next(iter(record.answers), None)
        if single is None:
            return None
        truth = normalize_answer(single)
        if not truth:
            raise ValueError(f"vqa: sample {record.sample_id!r} has an empty ground-truth answer {single!r}")
        correct = prediction.answer is not None and normalize_answer(prediction.answer) == truth
        return {"count": 1, "acc": float(correct)}

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        n = sums.get("count", 0)
        return {"acc": sums["acc"] / n} if n else {}
