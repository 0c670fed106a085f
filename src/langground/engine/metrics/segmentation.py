"""Mask metrics: classic referring segmentation (RES) and generalized RES (gRefCOCO / GRES).

All masks are compared in ORIGINAL image pixels: a pixel is foreground when its value is non-zero
(``bool``/``uint8`` masks, as :class:`langground.types.Prediction` and ``GroundingRecord.load_mask``
give them; threshold logits before handing them over).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from langground.engine.metrics.base import MetricAccumulator, SampleStats, at_least
from langground.types import GroundingRecord, Prediction

__all__ = ["NO_TARGET_RULES", "GRESMetric", "RESMetric", "mask_inter_union", "predicts_no_target"]


def _fmt(t: float) -> str:
    return f"{t:g}"


def _check_thresholds(thresholds: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(t) for t in thresholds)
    if not all(0.0 <= t <= 1.0 for t in out):
        raise ValueError(f"{name}: IoU thresholds must lie in [0, 1], got {out}")
    return out


def mask_inter_union(pred: np.ndarray | None, gt: np.ndarray | None) -> tuple[int, int]:
    """Pixel counts ``(|P ∩ G|, |P ∪ G|)`` of two ``(H, W)`` masks; ``None`` stands for an empty mask.

    Raises ``ValueError`` when both are given with different shapes.
    """
    if pred is None and gt is None:
        return 0, 0
    if pred is None or gt is None:
        only = pred if gt is None else gt
        return 0, int(np.count_nonzero(only))
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}")
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


#: How GRES decides that a prediction says "no target" (docs/metrics.md, "GRES").
NO_TARGET_RULES = ("head", "min_pixels")


def predicts_no_target(
    prediction: Prediction, rule: str = "head", threshold: float = 0.5, min_mask_pixels: int = 50
) -> bool:
    """Whether a prediction says "nothing is referred to", by one of :data:`NO_TARGET_RULES`.

    - ``"head"`` (default; ReLA's released ``ReferEvaluator.process``, which takes the argmax of its
      two-way ``nt_label``): ``prediction.no_target >= threshold``; the mask is not looked at. A
      prediction without a no-target head (a mask-only model) says "no target" iff its mask is
      empty (0 foreground pixels).
    - ``"min_pixels"`` (LaConvNet Table 6, "output masks with less than 50 positive pixels are
      regarded as non-target predictions"): fewer than ``min_mask_pixels`` foreground pixels, or the
      head, when the prediction has one (Table 6's rows marked with the no-target classifier).

    A prediction without a mask (a box-only model) says "no target" only through its head.
    """
    if rule not in NO_TARGET_RULES:
        raise ValueError(f"gres no-target rule {rule!r}: expected one of {', '.join(NO_TARGET_RULES)}")
    head = prediction.no_target is not None and at_least(prediction.no_target, threshold)
    if prediction.mask is None:  # a box-only model: only its head can say it
        return head
    pixels = int(np.count_nonzero(prediction.mask))
    if rule == "head":
        return head if prediction.no_target is not None else pixels == 0
    return head or pixels < min_mask_pixels


def _gt_mask(task: str, record: GroundingRecord, gt_mask: np.ndarray | None) -> np.ndarray | None:
    """The ground-truth mask, loaded from the record when not passed; None only for no-target records."""
    mask = gt_mask if gt_mask is not None else record.load_mask()
    if mask is None and not record.no_target:
        raise ValueError(
            f"{task}: sample {record.sample_id!r} has no ground-truth mask "
            "(pass gt_mask= or give the record a mask_loader)"
        )
    if mask is not None and mask.ndim != 2:
        raise ValueError(
            f"{task}: sample {record.sample_id!r}: expected an (H, W) mask, got shape {mask.shape}"
        )
    return mask


def _pred_mask(task: str, record: GroundingRecord, prediction: Prediction) -> np.ndarray:
    if prediction.mask is None:
        raise ValueError(
            f"{task}: the prediction for sample {record.sample_id!r} has no mask (box-only model?)"
        )
    mask = np.asarray(prediction.mask)
    if mask.ndim != 2:
        raise ValueError(
            f"{task}: sample {record.sample_id!r}: expected an (H, W) predicted mask, got shape {mask.shape}"
        )
    return mask


class RESMetric(MetricAccumulator):
    """Referring expression segmentation (DMN, Margffoy-Tuay et al. ECCV 2018, §4.2; LaConvNet §5.1).

    Per expression ``IoU_i = |P_i ∩ G_i| / |P_i ∪ G_i|``; if both masks are empty (``U_i = 0``),
    ``IoU_i = 1`` (the prediction is exactly right; same rule as gIoU's no-target case).

    - ``res/miou``: mean of the per-expression IoUs.
    - ``res/oiou``: overall IoU ``Σ I_i / Σ U_i`` over the split (LaConvNet's "overall IoU",
      ReLA's "cIoU"). NB: DMN's §4.2 text calls this cumulative ratio "mIoU"; compare numbers by
      definition, not by name.
    - ``res/pr@t`` for ``t`` in ``thresholds``: fraction of expressions with ``IoU_i >= t``.

    Only the mask is scored: ``prediction.no_target`` is ignored here (see :class:`GRESMetric`).
    VQA records (``record.answer`` set) are skipped.
    """

    prefix = "res"
    family_metrics = ("miou", "oiou")
    needs_gt_mask = True

    def __init__(
        self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), by_family: bool = True
    ) -> None:
        super().__init__(by_family)
        self.thresholds = _check_thresholds(thresholds, "res")

    def config(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds)}

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if record.answer is not None or record.answers:
            return None
        gt = _gt_mask("res", record, gt_mask)
        inter, union = mask_inter_union(_pred_mask("res", record, prediction), gt)
        iou = inter / union if union > 0 else 1.0
        stats: SampleStats = {"count": 1, "inter": inter, "union": union, "iou": iou}
        stats.update({f"hit@{_fmt(t)}": int(iou >= t) for t in self.thresholds})
        return stats

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        n = sums.get("count", 0)
        out: dict[str, float] = {}
        if n:
            out["miou"] = sums["iou"] / n
            out.update({f"pr@{_fmt(t)}": sums[f"hit@{_fmt(t)}"] / n for t in self.thresholds})
        if sums.get("union", 0):
            out["oiou"] = sums["inter"] / sums["union"]
        return out


class GRESMetric(MetricAccumulator):
    """Generalized referring segmentation on gRefCOCO, as ReLA's released evaluator scores it (GRES,
    Liu, Ding & Jiang, CVPR 2023; ``gres_model/evaluation/refer_evaluation.py``, ``ReferEvaluator``).

    A sample is *no-target* when ``record.no_target`` is set or its ground-truth mask is empty (the
    two agree on gRefCOCO). Whether the prediction says "no target" (``NT``) is decided by
    :func:`predicts_no_target` under ``no_target_rule`` (``head`` by default). ``I`` and ``U`` are
    the pixel counts of the predicted mask AS GIVEN (none = empty) against the ground truth; then,
    as in ReLA's ``evaluate``:

    ===============================  ==================  ===========  ==========
    case                             adds to (ΣI, ΣU)    gIoU term    accuracy
    ===============================  ==================  ===========  ==========
    no-target, NT                    (0, 0)              1            N-acc hit
    no-target, not NT                (0, U = |P|)        0            N-acc miss
    target, NT                       (0, U = |P ∪ G|)    0            T-acc miss
    target, not NT                   (I, U)              I/U (0/0=0)  T-acc hit
    ===============================  ==================  ===========  ==========

    (``langground.postprocess`` empties the mask when the head fires, so there ``U = |G|``.)

    - ``gres/ciou``: cumulative IoU ``ΣI / ΣU`` (left out when ΣU = 0, i.e. only correct no-targets).
    - ``gres/giou``: mean of the per-sample terms above over all samples.
    - ``gres/n_acc``: no-target samples predicted NT / no-target samples (ReLA ``TP / (TP + FN)``).
    - ``gres/t_acc``: target samples not predicted NT / target samples (ReLA ``TN / (TN + FP)``).
    - ``gres/pr@t``: fraction of *target* samples with IoU >= t (ReLA reports t = 0.7, 0.8, 0.9).

    VQA records (``record.answer`` set) are skipped.
    """

    prefix = "gres"
    family_metrics = ("ciou", "giou", "n_acc", "t_acc")
    needs_gt_mask = True

    def __init__(
        self,
        thresholds: Sequence[float] = (0.7, 0.8, 0.9),
        no_target_threshold: float = 0.5,
        min_mask_pixels: int = 50,
        by_family: bool = True,
        no_target_rule: str = "head",
    ) -> None:
        super().__init__(by_family)
        if no_target_rule not in NO_TARGET_RULES:
            raise ValueError(
                f"gres no-target rule {no_target_rule!r}: expected one of {', '.join(NO_TARGET_RULES)}"
            )
        self.thresholds = _check_thresholds(thresholds, "gres")
        self.no_target_threshold = float(no_target_threshold)
        self.min_mask_pixels = int(min_mask_pixels)
        self.no_target_rule = no_target_rule

    def config(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "no_target_rule": self.no_target_rule,
            "no_target_threshold": self.no_target_threshold,
            "min_mask_pixels": self.min_mask_pixels,
        }

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if record.answer is not None or record.answers:
            return None
        gt = None if record.no_target else _gt_mask("gres", record, gt_mask)
        gt_empty = record.no_target or gt is None or not gt.any()
        nt = predicts_no_target(
            prediction, self.no_target_rule, self.no_target_threshold, self.min_mask_pixels
        )
        # Without a mask only a head that fires can answer (a box-only model saying "no target").
        if prediction.mask is None and not nt:
            raise ValueError(
                f"gres: the prediction for sample {record.sample_id!r} has no mask and "
                + ("no no-target probability" if prediction.no_target is None else "says there is a target")
                + " (box-only model?)"
            )
        pred = None if prediction.mask is None else _pred_mask("gres", record, prediction)
        if gt is not None and pred is not None and pred.shape != gt.shape:
            raise ValueError(
                f"gres: sample {record.sample_id!r}: predicted mask {pred.shape} vs ground truth {gt.shape}"
            )
        inter, union = mask_inter_union(pred, None if gt_empty else gt)
        stats: SampleStats = {"count": 1, "nt_total": int(gt_empty), "t_total": int(not gt_empty)}
        if gt_empty:
            stats.update(inter=0, union=0 if nt else union, iou=float(nt), nt_correct=int(nt))
            return stats
        if nt:
            inter = 0
        iou = inter / union if union > 0 else 0.0
        stats.update(inter=inter, union=union, iou=iou, t_correct=int(not nt))
        stats.update({f"hit@{_fmt(t)}": int(iou >= t) for t in self.thresholds})
        return stats

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        out: dict[str, float] = {}
        n, nt, t = sums.get("count", 0), sums.get("nt_total", 0), sums.get("t_total", 0)
        if sums.get("union", 0):
            out["ciou"] = sums["inter"] / sums["union"]
        if n:
            out["giou"] = sums["iou"] / n
        if nt:
            out["n_acc"] = sums.get("nt_correct", 0) / nt
        if t:
            out["t_acc"] = sums.get("t_correct", 0) / t
            out.update({f"pr@{_fmt(th)}": sums.get(f"hit@{_fmt(th)}", 0) / t for th in self.thresholds})
        return out
