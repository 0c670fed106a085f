"""The phrase task: per-query box loss (merged / best targets), decoding per phrase, Recall@1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import generalized_box_iou_loss

from langground.engine.metrics import Evaluator
from langground.losses import build_criterion
from langground.postprocess import postprocess
from langground.types import GroundingRecord, Phrase, Prediction, Targets


def _targets(phrase_boxes: list[list[torch.Tensor]]) -> Targets:
    n = len(phrase_boxes)
    return Targets([torch.zeros(0, 4)] * n, None, torch.zeros(n, dtype=torch.bool), -torch.ones(n, dtype=torch.long),
                   phrase_boxes=phrase_boxes)  # fmt: skip


def _xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def test_loss_over_real_queries_only_with_merged_targets():
    pred = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]], [[0.6, 0.6, 0.4, 0.4], [0.9, 0.9, 0.9, 0.9]]]
    )
    two = torch.tensor(
        [[0.2, 0.2, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]]
    )  # merged: [0.1, 0.7] -> cxcywh .4 .4 .6 .6
    phrase_boxes = [
        [torch.tensor([[0.5, 0.5, 0.2, 0.2]]), two],
        [torch.zeros(0, 4)],
    ]  # row 1: one query, no box
    loss = build_criterion("phrase")({"pred_boxes": pred}, _targets(phrase_boxes))
    p = torch.stack([pred[0, 0], pred[0, 1]])
    g = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6]])
    assert float(loss["loss_l1"]) == pytest.approx(float((p - g).abs().mean()), rel=1e-6)
    assert float(loss["loss_giou"]) == pytest.approx(
        float(generalized_box_iou_loss(_xyxy(p), _xyxy(g)).mean()), rel=1e-5
    )
    assert float(loss["loss"]) == pytest.approx(
        2 * float(loss["loss_giou"]) + 5 * float(loss["loss_l1"]), rel=1e-6
    )

    best = build_criterion("phrase", box_target="best")({"pred_boxes": pred}, _targets(phrase_boxes))
    g_best = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])  # query 1 overlaps the first box most
    assert float(best["loss_l1"]) == pytest.approx(float((p - g_best).abs().mean()), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss weight or option 'box_targets'"):
        build_criterion("phrase", box_targets="best")


def test_decoding_gives_one_prediction_per_real_phrase_in_original_pixels():
    outputs = {
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]]),
        "pred_scores": torch.tensor([[0.9, 0.4, 0.1]]),
        "query_mask": torch.tensor([[True, True, False]]),
    }
    # a 200 x 100 (H x W) image letterboxed into a 100 canvas: scale 0.5, pad_x 25
    (pred,) = postprocess(outputs, [(0.5, 25.0, 0.0)], [(200, 100)], "phrase", canvas_size=100)
    assert len(pred.phrases) == 2
    np.testing.assert_allclose(pred.phrases[0].boxes, [[0.0, 50.0, 100.0, 150.0]], atol=1e-4)
    np.testing.assert_allclose(pred.phrases[1].boxes, [[0.0, 0.0, 50.0, 100.0]], atol=1e-4)  # clipped
    np.testing.assert_allclose([p.scores[0] for p in pred.phrases], [0.9, 0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="query_mask"):
        postprocess({"pred_boxes": outputs["pred_boxes"]}, [(0.5, 25.0, 0.0)], [(200, 100)], "phrase")


def _record(phrases):
    return GroundingRecord("s", 1, "img.jpg", (100, 100), "a man and a dog", phrases=tuple(phrases))


def _pred(*boxes):
    return Prediction(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                      phrases=[Prediction(np.array([b], np.float32), np.ones(1, np.float32)) for b in boxes])  # fmt: skip


def test_recall_at_1_counts_grounded_phrases_under_both_protocols():
    two_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    record = _record([
        Phrase((0, 5), np.array([[0, 0, 50, 50]], np.float32)),
        Phrase((10, 15), two_boxes),
        Phrase((6, 9), np.zeros((0, 4), np.float32)),  # no box: not counted
    ])  # fmt: skip
    pred = _pred([0, 0, 40, 50], [20, 0, 30, 10], [0, 0, 1, 1])  # IoU 0.8; any-box hit, merged IoU 1/3
    merged = Evaluator(["phrase"])
    merged.update(record, pred)
    assert merged.compute()["phrase/recall@1"] == pytest.approx(0.5)
    assert merged.compute()["phrase/count"] == 2
    from langground.engine.metrics import MetricsConfig

    any_box = Evaluator(["phrase"], MetricsConfig(rec_box_match="any"))
    any_box.update(record, pred)
    assert any_box.compute()["phrase/recall@1"] == pytest.approx(1.0)
