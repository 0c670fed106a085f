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

__all__ = ["GRESMetric", "RESMetric", "mask_inter_union", "predicts_no_target"]


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


def predicts_no_target(prediction: Prediction, threshold: float = 0.5, min_mask_pixels: int = 1) -> bool:
    """Whether a prediction says "nothing is referred to".

    True when ``prediction.no_target >= threshold`` (the no-target head's probability) or when its
    mask has fewer than ``min_mask_pixels`` foreground pixels (1: an empty mask; LaConvNet's Table 6,
    following ReLA's setting, counts masks under 50 pixels as no-target).
    """
    if prediction.no_target is not None and at_least(prediction.no_target, threshold):
        return True
    if prediction.mask is None:
        return False
    return int(np.count_nonzero(prediction.mask)) < min_mask_pixels


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
        if record.answer is not None:
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
    """Generalized referring segmentation on gRefCOCO, as ReLA defines it (GRES, Liu, Ding & Jiang, CVPR 2023).

    A sample is *no-target* when ``record.no_target`` is set or its ground-truth mask is empty
    (the two agree on gRefCOCO). A prediction is *empty* when :func:`predicts_no_target` says so
    (``prediction.no_target >= no_target_threshold`` or fewer than ``min_mask_pixels`` pixels); an
    empty prediction is scored as the empty mask.

    Per sample (``P`` = predicted mask, ``G`` = ground truth):

    ==========================  ==================  ===========  ==========
    case                        adds to (ΣI, ΣU)    gIoU term    accuracy
    ==========================  ==================  ===========  ==========
    no-target, predicted empty  (0, 0)              1            N-acc hit
    no-target, predicted mask   (0, |P|)            0            N-acc miss
    target, predicted empty     (0, |G|)            0            T-acc miss
    target, predicted mask      (|P∩G|, |P∪G|)      I/U          T-acc hit
    ==========================  ==================  ===========  ==========

    - ``gres/ciou``: cumulative IoU ``ΣI / ΣU`` (left out when ΣU = 0, i.e. only correct no-targets).
    - ``gres/giou``: mean of the per-sample terms above over all samples.
    - ``gres/n_acc``: correctly predicted no-target samples / no-target samples (ReLA's
      ``TP / (TP + FN)`` with "positive = no target"; the brief's ``TN / (TN + FP)`` with
      "positive = has a target" is the same number).
    - ``gres/t_acc``: target samples with a non-empty prediction / target samples.
    - ``gres/pr@t``: fraction of *target* samples with IoU >= t (ReLA reports t = 0.7, 0.8, 0.9).

    One deliberate difference from ReLA's released script: there, a target sample whose no-target
    head fires gets ``I = 0`` but ``U = |P ∪ G|`` of the raw mask; here the no-target decision *is*
    the output, so ``U = |G|``. The two only differ when a model both says "no target" and draws a
    mask. VQA records (``record.answer`` set) are skipped.
    """

    prefix = "gres"
    family_metrics = ("ciou", "giou", "n_acc", "t_acc")

    def __init__(
        self,
        thresholds: Sequence[float] = (0.7, 0.8, 0.9),
        no_target_threshold: float = 0.5,
        min_mask_pixels: int = 1,
        by_family: bool = True,
    ) -> None:
        super().__init__(by_family)
        self.thresholds = _check_thresholds(thresholds, "gres")
        self.no_target_threshold = float(no_target_threshold)
        self.min_mask_pixels = int(min_mask_pixels)

    def config(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "no_target_threshold": self.no_target_threshold,
            "min_mask_pixels": self.min_mask_pixels,
        }

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if record.answer is not None:
            return None
        gt = None if record.no_target else _gt_mask("gres", record, gt_mask)
        gt_empty = record.no_target or gt is None or not gt.any()
        pred_empty = predicts_no_target(prediction, self.no_target_threshold, self.min_mask_pixels)
        # A box-only model may still say "no target"; anything else needs a mask.
        pred = None if pred_empty else _pred_mask("gres", record, prediction)
        if gt is not None and pred is not None and pred.shape != gt.shape:
            raise ValueError(
                f"gres: sample {record.sample_id!r}: predicted mask {pred.shape} vs ground truth {gt.shape}"
            )
        stats: SampleStats = {"count": 1, "nt_total": int(gt_empty), "t_total": int(not gt_empty)}
        if gt_empty:
            inter, union = 0, (0 if pred is None else int(np.count_nonzero(pred)))
            stats.update(inter=inter, union=union, iou=1.0 if pred_empty else 0.0, nt_correct=int(pred_empty))
            return stats
        inter, union = mask_inter_union(pred, gt)
        iou = inter / union if union > 0 else 0.0
        stats.update(inter=inter, union=union, iou=iou, t_correct=int(not pred_empty))
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
