"""Box metrics: referring expression comprehension (REC) and generalized REC (gRefCOCO boxes, GREC).

Boxes are absolute ``xyxy`` pixels of the ORIGINAL image, continuous coordinates, no +1
(``langground.types``); IoU is :func:`langground.ops.boxes.box_iou` and GIoU
:func:`langground.ops.boxes.generalized_box_iou`, computed in float64, never NaN (0 for boxes
without area). Thresholds are inclusive: a hit is ``IoU >= t``. docs/metrics.md compares each metric
with the released script it follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from langground.engine.metrics.base import MetricAccumulator, SampleStats
from langground.ops.boxes import box_iou, enclosing_box, generalized_box_iou
from langground.types import GroundingRecord, Prediction

__all__ = ["GREC_MATCHING", "GRECMetric", "RECMetric", "greedy_match", "one_to_one_match"]


def _boxes(task: str, record: GroundingRecord, boxes: Any, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape == (4,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(
            f"{task}: sample {record.sample_id!r}: {what} must have shape (K, 4), got {arr.shape}"
        )
    return arr


def _scores(task: str, record: GroundingRecord, prediction: Prediction, k: int) -> np.ndarray:
    scores = np.asarray(prediction.scores).reshape(-1)
    if scores.shape != (k,):
        raise ValueError(
            f"{task}: sample {record.sample_id!r}: prediction has {k} boxes but {scores.size} scores"
        )
    # Keep float32 scores float32: compared with a float64 0.7, a float32 0.7 (0.69999999) would fail.
    return scores if np.issubdtype(scores.dtype, np.floating) else scores.astype(np.float64)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _giou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return generalized_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def greedy_match(sim: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """The gRefCOCO GREC script's matching (``mdetr/datasets/refexp.py``, ``RefExpEvaluator.summarize``).

    At most ``min(rows, columns)`` times: take the largest entry of the whole matrix; stop if it is
    ``< threshold`` (so a pair at exactly the threshold matches); else match that (row, column) and
    set its row and column to 0 (the script zeroes them rather than removing them: the same thing
    for any threshold > 0). Ties go to the first entry in row-major order (the script's
    ``torch.topk(k=1)`` leaves them unspecified). Returns ``(row, column)`` pairs sorted by row.
    """
    sim = np.array(sim, dtype=np.float64)  # a copy: rows and columns are zeroed below
    if sim.ndim != 2:
        raise ValueError(f"sim: expected an (N, M) matrix, got shape {sim.shape}")
    pairs = []
    for _ in range(min(sim.shape)):
        row, col = divmod(int(np.argmax(sim)), sim.shape[1])
        if sim[row, col] < threshold:
            break
        pairs.append((row, col))
        sim[row, :] = 0.0
        sim[:, col] = 0.0
    return sorted(pairs)


def one_to_one_match(iou: np.ndarray, iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """A maximum one-to-one matching of predictions (rows) to ground truths (columns) at ``iou >= thr``.

    Only pairs with IoU at or above the threshold may match; among those, the matching with the
    most pairs is returned (Kuhn's augmenting-path algorithm, exact, ``O(rows * edges)``: fine for
    the handful of boxes per expression). This is what a Hungarian assignment on the thresholded
    0/1 cost gives, without scipy. It is never below a greedy by-IoU match, which can miss a
    perfect matching (e.g. IoUs ``[[0.9, 0.6], [0.6, 0.3]]``: greedy takes (0, 0) and strands row 1;
    the maximum matching is (0, 1), (1, 0)). Rows are tried in order, so pass them sorted by score
    to prefer confident predictions among equally large matchings.

    Returns ``(row, column)`` pairs sorted by row.
    """
    iou = np.asarray(iou)
    if iou.ndim != 2:
        raise ValueError(f"iou: expected an (N, M) matrix, got shape {iou.shape}")
    adj = [np.flatnonzero(row >= iou_threshold).tolist() for row in iou]
    owner = [-1] * iou.shape[1]  # column -> matched row

    def augment(row: int, seen: list[bool]) -> bool:
        for col in adj[row]:
            if not seen[col]:
                seen[col] = True
                if owner[col] < 0 or augment(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    for r in range(iou.shape[0]):
        if adj[r]:
            augment(r, [False] * iou.shape[1])
    return sorted((r, c) for c, r in enumerate(owner) if r >= 0)


#: How REC scores an expression with several ground-truth boxes: their enclosing box, or any of them.
BOX_MATCH = ("merged", "any")


class RECMetric(MetricAccumulator):
    """Referring expression comprehension: Prec@0.5 (a.k.a. Acc@0.5), as in LADS, LaConvNet, TransVG.

    Per expression, the predicted box is compared with the ground-truth box in ORIGINAL pixels:
    ``IoU = |P ∩ G| / |P ∪ G|`` (xyxy, continuous, no +1). Keys:

    - ``rec/prec@t`` for ``t`` in ``thresholds`` (default 0.5): fraction of expressions with ``IoU >= t``.
    - ``rec/miou``: mean IoU.

    Conventions: with several predicted boxes the highest-scoring one is the answer (the first on
    ties); no predicted box scores IoU 0. With several ground-truth boxes, ``box_match="merged"`` merges
    them into their enclosing box (the Flickr30k Entities merged protocol, LaConvNet §5.1) and
    ``box_match="any"`` scores the best of them (the separate protocol). No-target records and records
    without boxes (VQA) are skipped: score those with :class:`GRECMetric`.
    """

    prefix = "rec"

    def __init__(
        self, thresholds: Sequence[float] = (0.5,), by_family: bool = True, box_match: str = "merged"
    ) -> None:
        super().__init__(by_family)
        if box_match not in BOX_MATCH:
            raise ValueError(f"box_match={box_match!r}: expected one of {', '.join(BOX_MATCH)}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.box_match = box_match
        self.family_metrics = (*(f"prec@{t:g}" for t in self.thresholds), "miou")

    def config(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "box_match": self.box_match}

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        gt = _boxes("rec", record, record.boxes, "record.boxes")
        if record.no_target or gt.shape[0] == 0:
            return None
        pred = _boxes("rec", record, prediction.boxes, "prediction.boxes")
        if pred.shape[0] == 0:
            iou = 0.0
        else:
            if pred.shape[0] > 1:
                pred = pred[[int(np.argmax(_scores("rec", record, prediction, pred.shape[0])))]]
            if self.box_match == "any":
                iou = float(_iou_matrix(pred, gt)[0].max())
            else:
                target = gt if gt.shape[0] == 1 else enclosing_box(gt)[None]
                iou = float(_iou_matrix(pred, target)[0, 0])
        stats: SampleStats = {"count": 1, "iou": iou}
        stats.update({f"hit@{t:g}": int(iou >= t) for t in self.thresholds})
        return stats

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        n = sums.get("count", 0)
        if not n:
            return {}
        out = {f"prec@{t:g}": sums[f"hit@{t:g}"] / n for t in self.thresholds}
        out["miou"] = sums["iou"] / n
        return out


#: GREC matchings: the released gRefCOCO script's, or a maximum one-to-one matching on IoU.
GREC_MATCHING = ("benchmark", "maximum")


def _benchmark_order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices sorted as the script's ``sorted(zip(scores, boxes), reverse=True)``: by score, then by
    x1, y1, x2, y2, all descending (np.lexsort's last key is the primary one)."""
    keys = (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], scores.astype(np.float64))
    return np.lexsort(keys)[::-1]


class GRECMetric(MetricAccumulator):
    """Generalized REC on gRefCOCO boxes: Precision@(F1=1, IoU>=0.5), N-acc, T-acc (GREC, He et al. 2023).

    Per sample: keep the predicted boxes with ``score >= score_threshold`` (0.7), best first. The
    metric scores the boxes it is given: ``prediction.no_target`` is NOT looked at (the released script
    has no no-target head; ``langground.postprocess`` already returns no box when the head fires).
    Match the kept boxes one-to-one to the ground-truth boxes:

    - ``matching="benchmark"`` (default): exactly the released script (:func:`greedy_match` on the
      pairwise **GIoU**, pairs at ``GIoU >= iou_threshold``).
    - ``matching="maximum"``: a maximum matching on **IoU** at ``IoU >= iou_threshold``
      (:func:`one_to_one_match`); never fewer pairs than the benchmark's (GIoU <= IoU, and greedy can
      strand a box), so its numbers are an upper bound (docs/metrics.md measures the gap).

    Then ``TP`` = matched pairs, ``FP`` = unmatched kept boxes, ``FN`` = unmatched ground truths and
    ``F1 = 2TP / (2TP + FP + FN)``. A target sample is correct only when ``F1 = 1`` (every referent
    found, no extra box); a no-target sample (``record.no_target`` or no ground-truth box) is
    correct when no box is kept.

    - ``grec/prec@f1``: correct samples / all samples (the script's ``F1_score``).
    - ``grec/n_acc``: no-target samples with no kept box / no-target samples.
    - ``grec/t_acc``: target samples with at least one kept box / target samples.
    - ``grec/f1``: mean per-sample F1 (no-target: 1 if correct, else 0) -- ours, a softer companion.

    VQA records (``record.answer`` set) are skipped.
    """

    prefix = "grec"
    family_metrics = ("prec@f1", "n_acc", "t_acc")

    def __init__(
        self,
        score_threshold: float = 0.7,
        iou_threshold: float = 0.5,
        matching: str = "benchmark",
        by_family: bool = True,
    ) -> None:
        super().__init__(by_family)
        if matching not in GREC_MATCHING:
            raise ValueError(f"grec matching {matching!r}: expected one of {', '.join(GREC_MATCHING)}")
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.matching = matching

    def config(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "matching": self.matching,
        }

    def _true_positives(self, pred: np.ndarray, scores: np.ndarray, gt: np.ndarray) -> int:
        if self.matching == "benchmark":
            return len(
                greedy_match(_giou_matrix(pred[_benchmark_order(pred, scores)], gt), self.iou_threshold)
            )
        # Rows in score order, so that equally large matchings prefer confident boxes.
        order = np.argsort(-scores, kind="stable")
        return len(one_to_one_match(_iou_matrix(pred[order], gt), self.iou_threshold))

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        if record.answer is not None or record.answers:
            return None
        gt = _boxes("grec", record, record.boxes, "record.boxes")
        pred = _boxes("grec", record, prediction.boxes, "prediction.boxes")
        scores = _scores("grec", record, prediction, pred.shape[0])
        keep = scores >= scores.dtype.type(self.score_threshold)  # in the scores' precision: see at_least
        pred, scores = pred[keep], scores[keep]
        m = pred.shape[0]
        if record.no_target or gt.shape[0] == 0:
            correct = int(m == 0)
            return {
                "count": 1,
                "correct": correct,
                "f1": float(correct),
                "nt_total": 1,
                "nt_correct": correct,
            }
        tp = self._true_positives(pred, scores, gt) if m else 0
        fp, fn = m - tp, gt.shape[0] - tp
        return {
            "count": 1,
            "correct": int(fp == 0 and fn == 0),
            "f1": 2 * tp / (2 * tp + fp + fn),  # > 0: the denominator has fn >= 1 when tp == 0
            "t_total": 1,
            "t_correct": int(m > 0),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        out: dict[str, float] = {}
        n, nt, t = sums.get("count", 0), sums.get("nt_total", 0), sums.get("t_total", 0)
        if n:
            out["prec@f1"] = sums["correct"] / n
            out["f1"] = sums["f1"] / n
        if nt:
            out["n_acc"] = sums["nt_correct"] / nt
        if t:
            out["t_acc"] = sums["t_correct"] / t
        return out
