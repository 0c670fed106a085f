"""langground.engine.metrics: every metric against hand-computed cases, empty sets, families, merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from langground.engine.metrics import (
    GRECMetric,
    GRESMetric,
    RECMetric,
    RESMetric,
    VQAMetric,
    mask_inter_union,
    normalize_answer,
    one_to_one_match,
)
from langground.types import GroundingRecord, Prediction

H, W = 4, 4


def rec(
    i: int = 0, boxes=(), no_target: bool = False, family=None, answer=None, mask=None
) -> GroundingRecord:
    return GroundingRecord(
        sample_id=str(i),
        image_id=i,
        image_path=f"/img/{i}.png",
        image_size=(H, W),
        text="x",
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        no_target=no_target,
        family=family,
        answer=answer,
        mask_loader=None if mask is None else (lambda m=mask: m),
    )


def pred(boxes=(), scores=None, mask=None, no_target=None, answer=None) -> Prediction:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    s = np.ones(len(b), np.float32) if scores is None else np.asarray(scores, np.float32)
    return Prediction(boxes=b, scores=s, mask=mask, no_target=no_target, answer=answer)


def mask(*pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for y, x in pixels:
        m[y, x] = 1
    return m


def assert_finite(metrics: dict[str, float]) -> None:
    assert all(math.isfinite(v) for v in metrics.values()), metrics


# ----------------------------------------------------------------------------- REC


def test_rec_prec_and_miou_hand_computed():
    m = RECMetric()
    gt = (0, 0, 4, 2)  # area 8
    m.update(rec(0, [gt], family="attribute"), pred([gt]))  # IoU 1
    m.update(rec(1, [(0, 0, 2, 2)], family="relation"), pred([(1, 1, 3, 3)]))  # IoU 1/7
    m.update(rec(2, [gt], family="relation"), pred([(0, 0, 4, 1)]))  # IoU exactly 0.5: a hit (>=)
    m.update(rec(3, [gt], family="relation"), pred([]))  # no box: IoU 0
    out = m.compute()
    assert out["rec/count"] == 4
    assert out["rec/prec@0.5"] == pytest.approx(2 / 4)
    assert out["rec/miou"] == pytest.approx((1 + 1 / 7 + 0.5 + 0) / 4)
    assert out["rec/prec@0.5/family/attribute"] == 1.0
    assert out["rec/prec@0.5/family/relation"] == pytest.approx(1 / 3)
    assert out["rec/count/family/relation"] == 3
    assert out["rec/miou/family/relation"] == pytest.approx((1 / 7 + 0.5) / 3)
    assert_finite(out)


def test_rec_no_plus_one_highest_score_and_merged_targets():
    m = RECMetric()
    # 10x10 GT, 10x5 prediction: 0.5 without +1 (the +1 convention would say 66/121).
    m.update(rec(0, [(0, 0, 10, 10)]), pred([(0, 0, 10, 5)]))
    # Several predicted boxes: the highest score is the answer (here the wrong one).
    m.update(rec(1, [(0, 0, 10, 10)]), pred([(0, 0, 10, 10), (20, 20, 30, 30)], scores=[0.4, 0.9]))
    # Several GT boxes: merged into their enclosing box (Flickr30k protocol).
    m.update(rec(2, [(0, 0, 5, 10), (5, 0, 10, 10)]), pred([(0, 0, 10, 10)]))
    out = m.compute()
    assert out["rec/miou"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["rec/prec@0.5"] == pytest.approx(2 / 3)


def test_rec_any_box_protocol_scores_the_best_referent():
    # Flickr30k "separate": a hit on either box counts; "merged" compares with their enclosing box.
    gt = [(0, 0, 4, 4), (6, 0, 10, 4)]  # enclosing box (0, 0, 10, 4), area 40
    one = (6, 0, 10, 4)
    merged, anyone = RECMetric(), RECMetric(box_match="any")
    for m in (merged, anyone):
        m.update(rec(0, gt), pred([one]))
    assert merged.compute()["rec/miou"] == pytest.approx(16 / 40)
    assert anyone.compute()["rec/miou"] == pytest.approx(1.0)
    assert anyone.compute()["rec/prec@0.5"] == 1.0 and merged.compute()["rec/prec@0.5"] == 0.0
    with pytest.raises(ValueError, match="box_match='all'"):
        RECMetric(box_match="all")


def test_rec_skips_no_target_and_vqa_and_checks_shapes():
    m = RECMetric()
    assert not m.update(rec(0, [], no_target=True), pred([(0, 0, 1, 1)]))
    assert not m.update(rec(1, [], answer="yes"), pred([]))
    assert m.compute() == {"rec/count": 0.0}  # nothing seen: no NaN, no made-up 0
    with pytest.raises(ValueError, match=r"sample '2'.*prediction has 2 boxes but 1 scores"):
        m.update(rec(2, [(0, 0, 1, 1)]), Prediction(np.zeros((2, 4)), np.ones(1)))
    with pytest.raises(ValueError, match=r"prediction.boxes must have shape \(K, 4\)"):
        m.update(rec(3, [(0, 0, 1, 1)]), Prediction(np.zeros((2, 5)), np.ones(2)))


# ----------------------------------------------------------------------------- RES


def _res_cases():
    gt = mask((0, 0), (0, 1), (1, 0), (1, 1))  # 4 pixels
    return [
        # I = 2, U = 6 -> 1/3
        (rec(0, family="a", mask=gt), pred(mask=mask((0, 0), (0, 1), (3, 3), (3, 2)).astype(bool))),
        # perfect: I = U = 4
        (rec(1, family="a", mask=gt), pred(mask=gt.astype(bool))),
        # empty prediction on a target: I = 0, U = 3 -> 0
        (rec(2, family="b", mask=mask((2, 2), (2, 3), (3, 3))), pred(mask=np.zeros((H, W), bool))),
        # empty prediction, empty GT: IoU 1, adds 0/0 to the overall sums
        (rec(3, family="b", mask=np.zeros((H, W), np.uint8)), pred(mask=np.zeros((H, W), bool))),
    ]


def test_res_hand_computed():
    m = RESMetric()
    for r, p in _res_cases():
        assert m.update(r, p)
    out = m.compute()
    assert out["res/miou"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4)
    assert out["res/oiou"] == pytest.approx((2 + 4 + 0 + 0) / (6 + 4 + 3 + 0))
    assert out["res/pr@0.5"] == out["res/pr@0.9"] == pytest.approx(2 / 4)
    assert set(k for k in out if "/pr@" in k and "family" not in k) == {
        f"res/pr@{t}" for t in ("0.5", "0.6", "0.7", "0.8", "0.9")
    }
    assert out["res/oiou/family/a"] == pytest.approx(6 / 10)
    assert out["res/miou/family/b"] == pytest.approx(0.5)
    assert_finite(out)


def test_res_empty_only_split_is_nan_free():
    m = RESMetric()
    m.update(rec(0, mask=np.zeros((H, W), np.uint8)), pred(mask=np.zeros((H, W), bool)))
    out = m.compute()
    assert out["res/miou"] == 1.0 and "res/oiou" not in out  # 0/0 is omitted, not NaN
    assert_finite(out)


def test_res_errors_name_the_sample():
    m = RESMetric()
    with pytest.raises(ValueError, match=r"sample '0' has no ground-truth mask"):
        m.update(rec(0), pred(mask=np.zeros((H, W), bool)))
    with pytest.raises(ValueError, match=r"prediction for sample '1' has no mask"):
        m.update(rec(1, mask=mask()), pred())
    with pytest.raises(ValueError, match="mask shapes differ"):
        m.update(rec(2, mask=mask()), pred(mask=np.zeros((3, 3), bool)))


def test_mask_inter_union():
    assert mask_inter_union(mask((0, 0), (1, 1)), mask((1, 1), (2, 2))) == (1, 3)
    assert mask_inter_union(None, mask((0, 0))) == (0, 1)
    assert mask_inter_union(None, None) == (0, 0)


# ----------------------------------------------------------------------------- GRES (ReLA)


def _gres_cases():
    gt = mask((0, 0), (0, 1), (1, 0), (1, 1))
    five = mask((3, 0), (3, 1), (3, 2), (3, 3), (2, 3))
    return [
        # A: target, I = 2, U = 6 -> IoU 1/3; T-acc hit
        (rec(0, family="relation", mask=gt), pred(mask=mask((0, 0), (0, 1), (3, 3), (3, 2)).astype(bool))),
        # B: target, no-target head fires -> I = 0, U = |P ∪ G| = 4 (ReLA: the mask as given); T-acc miss
        (rec(1, family="relation", mask=gt), pred(mask=gt.astype(bool), no_target=0.9)),
        # C: no-target, empty mask -> correct: gIoU 1, adds nothing to cIoU
        (rec(2, no_target=True, family="absent"), pred(mask=np.zeros((H, W), bool))),
        # D: no-target, 5-pixel mask and no_target 0.2 -> missed: U += 5, gIoU 0
        (rec(3, no_target=True, family="absent"), pred(mask=five.astype(bool), no_target=0.2)),
        # E: no-target, no_target exactly 0.5 (>=) -> correct despite a mask
        (rec(4, no_target=True, family="false_relation"), pred(mask=five.astype(bool), no_target=0.5)),
    ]


def test_gres_rela_definitions_hand_computed():
    m = GRESMetric()
    for r, p in _gres_cases():
        assert m.update(r, p)
    out = m.compute()
    assert out["gres/ciou"] == pytest.approx(2 / (6 + 4 + 5))
    assert out["gres/giou"] == pytest.approx((1 / 3 + 0 + 1 + 0 + 1) / 5)
    assert out["gres/n_acc"] == pytest.approx(2 / 3)
    assert out["gres/t_acc"] == pytest.approx(1 / 2)
    assert out["gres/pr@0.7"] == 0.0  # over target samples only
    assert out["gres/n_acc/family/absent"] == pytest.approx(1 / 2)
    assert out["gres/giou/family/false_relation"] == 1.0
    assert "gres/ciou/family/false_relation" not in out  # ΣU = 0 there: omitted, never NaN
    assert "gres/t_acc/family/absent" not in out
    assert_finite(out)


def test_gres_min_mask_pixels_and_box_only_no_target():
    # LaConvNet Tab. 6's rule (there 50 px; 3 here): a mask under the count says "no target".
    m = GRESMetric(min_mask_pixels=3, no_target_rule="min_pixels")
    m.update(rec(0, no_target=True), pred(mask=mask((0, 0), (1, 1)).astype(bool)))  # 2 px < 3: NT, right
    # Target, 2 px = the ground truth: NT, so I = 0 but U = |P ∪ G| = 2 (ReLA's accounting); T-acc miss.
    m.update(rec(1, mask=mask((0, 0), (0, 1))), pred(mask=mask((0, 0), (0, 1)).astype(bool)))
    out = m.compute()
    assert out["gres/n_acc"] == 1.0 and out["gres/t_acc"] == 0.0
    assert out["gres/giou"] == pytest.approx(0.5) and out["gres/ciou"] == 0.0
    # The default (ReLA's head rule) scores the same two predictions as a miss and a perfect hit.
    head = GRESMetric(min_mask_pixels=3)
    head.update(rec(0, no_target=True), pred(mask=mask((0, 0), (1, 1)).astype(bool)))
    head.update(rec(1, mask=mask((0, 0), (0, 1))), pred(mask=mask((0, 0), (0, 1)).astype(bool)))
    assert head.compute() == {
        "gres/count": 2.0,
        "gres/ciou": 2 / (2 + 2),
        "gres/giou": 0.5,
        "gres/n_acc": 0.0,
        "gres/t_acc": 1.0,
        "gres/pr@0.7": 1.0,
        "gres/pr@0.8": 1.0,
        "gres/pr@0.9": 1.0,
    }
    # A prediction without a mask is fine when it says "no target"; otherwise it is an error.
    g = GRESMetric(no_target_threshold=0.7)
    assert g.update(rec(2, no_target=True), pred(no_target=np.float32(0.7)))  # float32 0.7 >= 0.7
    assert g.compute()["gres/n_acc"] == 1.0
    with pytest.raises(ValueError, match="has no mask"):
        g.update(rec(3, no_target=True), pred(no_target=0.1))


def test_gres_empty_gt_mask_counts_as_no_target():
    m = GRESMetric()
    m.update(rec(0, mask=np.zeros((H, W), np.uint8)), pred(mask=np.zeros((H, W), bool)))
    out = m.compute()
    assert out == {"gres/count": 1.0, "gres/giou": 1.0, "gres/n_acc": 1.0}


# ----------------------------------------------------------------------------- GREC


def test_one_to_one_match_is_maximum_not_greedy():
    iou = np.array([[0.9, 0.6], [0.6, 0.3]])
    assert one_to_one_match(iou, 0.5) == [(0, 1), (1, 0)]  # greedy by IoU would keep only (0, 0)
    assert one_to_one_match(np.array([[0.7], [0.8]]), 0.5) == [(0, 0)]  # one GT, one match
    assert one_to_one_match(np.zeros((0, 3)), 0.5) == []
    assert one_to_one_match(np.array([[0.5, 0.49]]), 0.5) == [(0, 0)]  # inclusive threshold


def _grec_cases():
    g1, g2 = (0, 0, 10, 10), (20, 0, 30, 10)
    return [
        # A: two referents, both found, nothing extra -> correct
        (rec(0, [g1, g2], family="multi"), pred([g2, g1], scores=[0.9, 0.8])),
        # B: one found + one extra confident box -> FP, wrong (F1 = 2/(2+1+1) = 0.5)
        (rec(1, [g1, g2], family="multi"), pred([g1, (50, 50, 60, 60)], scores=[0.9, 0.95])),
        # C: the right box but score 0.6 < 0.7 -> dropped -> FN, wrong; T-acc miss
        (rec(2, [g1], family="attribute"), pred([g1], scores=[0.6])),
        # D: no-target, the only box has score 0.5 -> dropped -> correct
        (rec(3, [], no_target=True, family="absent"), pred([g1], scores=[0.5])),
        # E: no-target, a box with score exactly 0.7 survives (>=) -> wrong
        (rec(4, [], no_target=True, family="absent"), pred([g1], scores=[0.7])),
        # F: no-target, confident box and the no-target head says 0.8: the metric scores the boxes it
        # gets (the released script has no head; postprocess empties the set when the head fires) -> wrong
        (
            rec(5, [], no_target=True, family="false_relation"),
            Prediction(np.array([g1], np.float32), np.array([0.9]), no_target=0.8),
        ),
    ]


def test_grec_hand_computed():
    m = GRECMetric()
    for r, p in _grec_cases():
        assert m.update(r, p)
    out = m.compute()
    assert out["grec/prec@f1"] == pytest.approx(2 / 6)
    assert out["grec/n_acc"] == pytest.approx(1 / 3)
    assert out["grec/t_acc"] == pytest.approx(2 / 3)
    assert out["grec/f1"] == pytest.approx((1 + 0.5 + 0 + 1 + 0 + 0) / 6)
    assert out["grec/prec@f1/family/multi"] == 0.5
    assert out["grec/n_acc/family/absent"] == 0.5
    assert out["grec/n_acc/family/false_relation"] == 0.0
    assert "grec/n_acc/family/multi" not in out
    assert_finite(out)


def test_grec_duplicates_and_greedy_trap():
    a, b = (0, 0, 10, 10), (6, 0, 16, 10)  # IoU(a, b) = 4/16 < 0.5
    m = GRECMetric(matching="maximum")
    # Two boxes on the same referent: only one can match -> FP and FN -> wrong.
    m.update(rec(0, [a, (40, 40, 50, 50)]), pred([a, (0, 0, 10, 9)], scores=[0.9, 0.9]))
    # Predictions that need the maximum matching: p0 overlaps both GTs, p1 only the first.
    p0, p1 = (3, 0, 13, 10), (1, 0, 11, 10)
    iou = np.array([[0.538, 0.538], [0.818, 0.333]])  # IoU(p0, a), IoU(p0, b); IoU(p1, a), IoU(p1, b)
    assert one_to_one_match(iou, 0.5) == [(0, 1), (1, 0)]
    m.update(rec(1, [a, b]), pred([p0, p1], scores=[0.95, 0.9]))
    out = m.compute()
    assert out["grec/prec@f1"] == 0.5


# ----------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Two.", "2"),
        ("Yes", "yes"),
        ("the red one", "red one"),
        (" large  cube ", "large cube"),
        ("1.5", "1.5"),
    ],
)
def test_normalize_answer_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


def test_normalize_answer_distinct():
    assert normalize_answer("2") != normalize_answer("3")
    assert normalize_answer("1,000") == "1,000" and normalize_answer(None) == ""


def test_vqa_accuracy_per_family():
    m = VQAMetric()
    m.update(rec(0, answer="2", family="count"), pred(answer="two"))
    m.update(rec(1, answer="3", family="count"), pred(answer="4"))
    m.update(rec(2, answer="yes", family="exist"), pred(answer="Yes."))
    m.update(rec(3, answer="red", family="query_color"), pred(answer=None))
    assert not m.update(rec(4, [(0, 0, 1, 1)]), pred(answer="yes"))  # not a question
    out = m.compute()
    assert out["vqa/acc"] == 0.5 and out["vqa/count"] == 4
    assert out["vqa/acc/family/count"] == 0.5
    assert out["vqa/acc/family/exist"] == 1.0
    assert out["vqa/acc/family/query_color"] == 0.0
