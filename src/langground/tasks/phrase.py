"""Phrase grounding: every phrase of a caption gets its box, from one pass over the image (Flickr30k
Entities; the Referring Transformer's multi-phrase mode).

Batches carry ``phrases`` (:class:`~langground.types.PhraseQueries`: Q token spans per caption) and
``Targets.phrase_boxes``; models answer ``pred_boxes`` ``(N, Q, 4)`` (normalized cxcywh), optionally
``pred_scores`` ``(N, Q)``, and echo ``query_mask`` ``(N, Q)`` (the phrases' mask) so that decoding knows
the real queries. Metric family ``phrase``: Flickr30k Entities' Recall@1, a phrase is grounded when its box
reaches IoU >= 0.5 with the phrase's ground truth (the merged box, or any box under the ``any`` protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert

from langground.engine.metrics.base import MetricAccumulator, SampleStats
from langground.engine.metrics.registry import register_metric
from langground.engine.metrics.settings import MetricsConfig
from langground.ops.boxes import box_iou, enclosing_box
from langground.tasks import decode as D
from langground.tasks import terms
from langground.tasks.base import Frame, Task
from langground.tasks.registry import register_task
from langground.types import GroundingRecord, Prediction, Targets

BOX_TARGETS = ("merged", "best")


def phrase_box_terms(outputs: Mapping[str, Any], targets: Targets, box_target: str) -> dict[str, Tensor]:
    """GIoU + L1 of each real query against its phrase's boxes: their enclosing box (``merged``) or the box
    the prediction already overlaps most (``best``, for the any-box protocol). Phrases without a box and
    padded queries contribute nothing."""
    if box_target not in BOX_TARGETS:
        raise ValueError(f"box_target={box_target!r}: expected one of {', '.join(BOX_TARGETS)}")
    if targets.phrase_boxes is None:
        raise ValueError("task 'phrase' needs Targets.phrase_boxes (batches of phrase records)")
    pred = outputs["pred_boxes"].float()  # (N, Q, 4)
    preds, gts = [], []
    for n, row in enumerate(targets.phrase_boxes):
        for q, gt in enumerate(row[: pred.shape[1]]):
            if gt.shape[0] == 0:
                continue
            gt = gt.to(pred)
            if gt.shape[0] > 1 and box_target == "merged":
                gt = box_convert(enclosing_box(terms.xyxy(gt))[None], "xyxy", "cxcywh")
            elif gt.shape[0] > 1:
                gt = gt[box_iou(terms.xyxy(pred[n, q][None]), terms.xyxy(gt))[0].argmax()][None]
            preds.append(pred[n, q][None])
            gts.append(gt[:1])
    if not preds:
        return terms.box_regression(pred.reshape(-1, 4)[:0], pred.reshape(-1, 4)[:0])
    return terms.box_regression(torch.cat(preds), torch.cat(gts))


@register_task
class PhraseGrounding(Task):
    name = "phrase"
    description = "a box for every phrase of a caption"
    heads = frozenset({"phrase_box"})
    metrics = ("phrase",)
    primary_metric = "phrase/recall@1"
    loss_weights = {"giou": 2.0, "l1": 5.0}
    loss_options = {"box_target": "merged"}
    uses_phrases = True
    record_unit = "caption"

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return phrase_box_terms(outputs, targets, options["box_target"])

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        if "query_mask" not in outputs:
            raise ValueError(
                "phrase outputs must carry query_mask (N, Q): the phrases' mask, echoed by the model"
            )
        real = outputs["query_mask"][i].bool()
        count = int(real.nonzero().max()) + 1 if bool(real.any()) else 0  # trailing padding dropped
        scores = outputs.get("pred_scores")
        phrases = []
        for q in range(count):  # slot q is record.phrases[q]; a masked slot inside stays an empty answer
            if not bool(real[q]):
                phrases.append(D.empty_prediction())
                continue
            score = 1.0 if scores is None else float(scores[i, q].clamp(0.0, 1.0))
            boxes, score_arr = D.decode_box(outputs["pred_boxes"][i, q], score, frame)
            phrases.append(Prediction(boxes=boxes, scores=score_arr))
        pred = D.empty_prediction()
        if phrases:
            pred.boxes = np.concatenate([p.boxes for p in phrases])
            pred.scores = np.concatenate([p.scores for p in phrases])
        pred.phrases = phrases
        return pred


class PhraseMetric(MetricAccumulator):
    """Recall@1 over the phrases that have a ground-truth box (Flickr30k Entities).

    ``box_match="merged"``: IoU with the enclosing box of the phrase's boxes (the merged-boxes protocol);
    ``"any"``: the best IoU over its boxes (the separate-boxes protocol). Phrases without a box are not
    counted. Keys: ``phrase/recall@1``, ``phrase/count`` (phrases), per record family.
    """

    prefix = "phrase"
    family_metrics = ("recall@1",)

    def __init__(self, iou_threshold: float = 0.5, box_match: str = "merged", by_family: bool = True) -> None:
        super().__init__(by_family)
        if box_match not in ("merged", "any"):
            raise ValueError(f"phrase box_match={box_match!r}: expected merged or any")
        self.iou_threshold, self.box_match = float(iou_threshold), box_match

    def config(self) -> dict[str, Any]:
        return {"iou_threshold": self.iou_threshold, "box_match": self.box_match}

    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        grounded = [p for p in record.phrases if np.asarray(p.boxes).shape[0] > 0]
        if not record.phrases:
            return None
        preds = prediction.phrases or []
        correct = 0
        for q, phrase in enumerate(record.phrases):
            gt = np.asarray(phrase.boxes, np.float64).reshape(-1, 4)
            if gt.shape[0] == 0 or q >= len(preds) or preds[q].boxes.shape[0] == 0:
                continue
            if self.box_match == "merged":
                gt = np.asarray(enclosing_box(gt), np.float64).reshape(1, 4)
            iou = np.asarray(box_iou(np.asarray(preds[q].boxes[:1], np.float64), gt)).max()
            correct += int(iou >= self.iou_threshold)
        return {"count": len(grounded), "correct": correct}

    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        n = sums.get("count", 0)
        return {"recall@1": sums["correct"] / n} if n else {}


@register_metric("phrase")
def _phrase_metric(cfg: MetricsConfig) -> PhraseMetric:
    return PhraseMetric(box_match=cfg.rec_box_match, by_family=cfg.by_family)
