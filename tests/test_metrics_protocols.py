"""Metric protocols fixed per benchmark: GRES no-target rules, GREC matchings, VQAv2 accuracy,
retrieval recall, the metric-family registry and ``metrics_config_for`` (docs/metrics.md)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from langground.engine.metrics import (
    Evaluator,
    GRECMetric,
    GRESMetric,
    MetricAccumulator,
    MetricsConfig,
    RetrievalMetric,
    VQAMetric,
    greedy_match,
    metrics_config_for,
    normalize_vqa2,
    one_to_one_match,
    predicts_no_target,
    register_metric,
    vqa_accuracy,
)
from langground.engine.metrics import registry as metric_registry
from langground.types import GroundingRecord, Prediction

S = 16  # mask side: room for the 50-pixel rule


def rec(i=0, boxes=(), no_target=False, mask=None, answer=None, answers=()):
    return GroundingRecord(
        sample_id=str(i),
        image_id=i,
        image_path=f"/img/{i}.png",
        image_size=(S, S),
        text="x",
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        no_target=no_target,
        answer=answer,
        answers=tuple(answers),
        mask_loader=None if mask is None else (lambda m=mask: m),
    )


def pixels(start: int, n: int) -> np.ndarray:
    """An (S, S) mask with the n pixels start .. start + n - 1 (row-major) set."""
    m = np.zeros(S * S, np.uint8)
    m[start : start + n] = 1
    return m.reshape(S, S)


def boxes_pred(boxes, scores):
    return Prediction(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))


# ----------------------------------------------------------------------------- GRES


def _gres_case():
    return [
        # T1: target, 40 px predicted exactly, head 0.1: head rule: right (IoU 1); 50-px rule: NT
        (rec(0, mask=pixels(0, 40)), Prediction(np.zeros((0, 4)), np.zeros(0), pixels(0, 40) > 0, 0.1)),
        # T2: target, 60 px exactly, head 0.2: right under both
        (rec(1, mask=pixels(100, 60)), Prediction(np.zeros((0, 4)), np.zeros(0), pixels(100, 60) > 0, 0.2)),
        # N1: no target, a 20-px mask, head 0.3: head rule: missed (U += 20); 50-px rule: NT, right
        (rec(2, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), pixels(0, 20) > 0, 0.3)),
        # N2: no target, empty mask, head 0.9: right under both
        (rec(3, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), pixels(0, 0) > 0, 0.9)),
        # N3: no target, a 60-px mask, head 0.4: missed under both (U += 60)
        (rec(4, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), pixels(0, 60) > 0, 0.4)),
    ]


def test_gres_head_rule_and_50_pixel_rule_differ_as_computed_by_hand():
    head, small = GRESMetric(), GRESMetric(no_target_rule="min_pixels", min_mask_pixels=50)
    for r, p in _gres_case():
        head.update(r, p)
        small.update(r, p)
    h, m = head.compute(), small.compute()
    assert h["gres/n_acc"] == pytest.approx(1 / 3) and h["gres/t_acc"] == 1.0
    assert m["gres/n_acc"] == pytest.approx(2 / 3) and m["gres/t_acc"] == 0.5
    assert h["gres/ciou"] == pytest.approx((40 + 60) / (40 + 60 + 20 + 60))
    # T1 under the 50-px rule: I = 0 but U = |P ∪ G| = 40 (ReLA's accounting of a target said NT)
    assert m["gres/ciou"] == pytest.approx(60 / (40 + 60 + 60))
    assert h["gres/giou"] == pytest.approx(3 / 5) and m["gres/giou"] == pytest.approx(3 / 5)
    assert h["gres/pr@0.9"] == 1.0 and m["gres/pr@0.9"] == 0.5


@pytest.mark.parametrize(
    ("rule", "n_pixels", "head", "expected"),
    [
        ("head", 0, 0.2, False),  # the head says "target": an empty mask is still a target answer
        ("head", 30, 0.5, True),  # >= threshold
        ("head", 30, 0.49, False),
        ("head", 0, None, True),  # no head (mask-only model): an empty mask means "no target"
        ("head", 1, None, False),
        ("min_pixels", 49, 0.1, True),
        ("min_pixels", 50, 0.1, False),
        ("min_pixels", 50, 0.6, True),  # min_pixels also counts a head (Tab. 6's dagger rows)
        ("min_pixels", 49, None, True),
    ],
)
def test_predicts_no_target_rules(rule, n_pixels, head, expected):
    p = Prediction(np.zeros((0, 4)), np.zeros(0), pixels(0, n_pixels) > 0, head)
    assert predicts_no_target(p, rule, 0.5, 50) is expected


def test_gres_mask_only_model_under_the_head_rule_and_box_only_errors():
    m = GRESMetric()
    empty, three = pixels(0, 0) > 0, pixels(0, 3) > 0
    m.update(rec(0, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), empty))  # right
    m.update(rec(1, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), three))  # missed: U += 3
    m.update(rec(2, mask=pixels(1, 3)), Prediction(np.zeros((0, 4)), np.zeros(0), three))  # I 2, U 4
    out = m.compute()
    assert out["gres/n_acc"] == 0.5 and out["gres/t_acc"] == 1.0
    assert out["gres/ciou"] == pytest.approx(2 / (3 + 4))
    with pytest.raises(ValueError, match="has no mask and no no-target probability"):
        m.update(rec(3, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0)))
    with pytest.raises(ValueError, match="has no mask and says there is a target"):
        m.update(rec(4, no_target=True), Prediction(np.zeros((0, 4)), np.zeros(0), no_target=0.2))
    with pytest.raises(ValueError, match="no-target rule 'pixels'"):
        GRESMetric(no_target_rule="pixels")


# ----------------------------------------------------------------------------- GREC


def test_greedy_match_is_the_scripts():
    assert greedy_match(np.array([[0.9, 0.6], [0.6, 0.3]]), 0.5) == [(0, 0)]  # strands row 1
    assert one_to_one_match(np.array([[0.9, 0.6], [0.6, 0.3]]), 0.5) == [(0, 1), (1, 0)]
    assert greedy_match(np.array([[0.5]]), 0.5) == [(0, 0)]  # "if top_value < thresh: break"
    assert greedy_match(np.array([[0.4999]]), 0.5) == []
    assert greedy_match(np.array([[0.7, 0.7], [0.7, 0.7]]), 0.5) == [(0, 0), (1, 1)]  # ties: row-major
    assert greedy_match(np.zeros((0, 2)), 0.5) == [] and greedy_match(np.zeros((3, 0)), 0.5) == []


def test_grec_benchmark_and_maximum_matching_differ_on_a_crafted_case():
    a, b = (2, 0, 12, 10), (6, 0, 16, 10)
    p0, p1 = (3, 0, 13, 10), (0, 0, 10, 10)
    # Same heights, overlapping: GIoU = IoU = [[9/11, 7/13], [8/12, 4/16]] (p0 vs a, b; p1 vs a, b).
    # Greedy takes (p0, a) = 0.818 first and strands p1 (0.25 < 0.5): TP 1, F1 = 0.5. Maximum: TP 2.
    trap = (rec(0, [a, b]), boxes_pred([p0, p1], [0.9, 0.8]))
    # IoU(g, q) = 64/126 = 0.508 >= 0.5, but GIoU = 0.508 - (132 - 126)/132 = 0.462 < 0.5.
    g, q = (0, 0, 10, 10), (2, 2, 12, 11)
    giou_case = (rec(1, [g]), boxes_pred([q], [0.95]))
    bench, maxi = GRECMetric(), GRECMetric(matching="maximum")
    for r, p in (trap, giou_case):
        bench.update(r, p)
        maxi.update(r, p)
    assert bench.compute()["grec/prec@f1"] == 0.0 and maxi.compute()["grec/prec@f1"] == 1.0
    assert bench.compute()["grec/f1"] == pytest.approx((0.5 + 0.0) / 2)
    assert bench.compute()["grec/t_acc"] == maxi.compute()["grec/t_acc"] == 1.0
    with pytest.raises(ValueError, match="grec matching 'hungarian'"):
        GRECMetric(matching="hungarian")


def test_grec_benchmark_keeps_scores_at_threshold_and_ignores_the_head():
    g = (0, 0, 10, 10)
    m = GRECMetric()
    m.update(rec(0, [g]), boxes_pred([g, (20, 20, 30, 30)], [0.7, 0.69]))  # 0.7 kept, 0.69 not: right
    m.update(rec(1, no_target=True), Prediction(np.array([g], np.float32), np.array([0.9]), no_target=0.99))
    out = m.compute()
    assert out["grec/prec@f1"] == 0.5 and out["grec/n_acc"] == 0.0 and out["grec/t_acc"] == 1.0


# ----------------------------------------------------------------------------- VQAv2


def test_vqa2_accuracy_is_the_leave_one_out_average():
    for m in range(11):
        humans = ["yes"] * m + ["no"] * (10 - m)
        subsets = [
            min(sum(humans[i] == "yes" for i in s) / 3, 1) for s in itertools.combinations(range(10), 9)
        ]
        assert vqa_accuracy("yes", humans) == pytest.approx(sum(subsets) / 10, abs=1e-15)
    two = ["2", "two"] + ["3"] * 8  # two humans of ten said 2: (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy("2", two) == 0.6
    assert vqa_accuracy("Two.", two) == 0.6
    assert vqa_accuracy("3", two) == 1.0 and vqa_accuracy(None, two) == 0.0
    assert [vqa_accuracy("a", ["a"] * k + ["b"] * (10 - k)) for k in (1, 3)] == [0.3, 0.9]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two.", "2"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("t-shirt", "t-shirt"),  # "-" is not in the script's list
        ("None", "0"),
        ("the dog's", "dog s"),
        ("red , blue", "red blue"),
        ("3.5", "3.5"),
        (" yes\n", "yes"),
    ],
)
def test_normalize_vqa2(raw, normal):
    assert normalize_vqa2(raw) == normal


def test_vqa_metric_mixes_vqav2_and_exact_match_records():
    m = VQAMetric()
    m.update(
        rec(0, answer="3", answers=["2", "2"] + ["3"] * 8),
        Prediction(np.zeros((0, 4)), np.zeros(0), answer="two"),
    )
    m.update(rec(1, answer="red"), Prediction(np.zeros((0, 4)), np.zeros(0), answer="Red"))
    assert m.compute()["vqa/acc"] == pytest.approx((0.6 + 1.0) / 2)


# ----------------------------------------------------------------------------- retrieval

# 4 texts x 4 images; image 3 has no caption (a distractor only). Rows: t0, t1 -> image 0, t2 -> 1, t3 -> 2.
SIM = np.array(
    [
        [0.9, 0.1, 0.5, -1.0],  # t0: best right 0.9, nothing >= it: rank 0
        [0.3, 0.3, 0.8, -1.0],  # t1: right 0.3, ties with image 1 (counted ahead) and 0.8 ahead: rank 2
        [0.2, 0.7, 0.7, -1.0],  # t2: right 0.7, tie with image 2: rank 1
        [0.6, 0.1, 0.4, -1.0],  # t3: right 0.4, image 0 ahead: rank 1
    ]
)
GT = [0, 0, 1, 2]
# image -> text: image 0's best caption t0 (0.9): rank 0; image 1: t2 (0.7) beats 0.1/0.3/0.1: rank 0;
# image 2: t3 (0.4) behind t0 0.5, t1 0.8, t2 0.7: rank 3; image 3 has no caption: not a query.


def test_retrieval_recall_hand_computed_with_ties():
    m = RetrievalMetric(ks=(1, 2, 3))
    m.update(SIM, GT)
    out = m.compute()
    assert out["retrieval/r@1_t2i"] == 0.25 and out["retrieval/r@2_t2i"] == 0.75
    assert out["retrieval/r@3_t2i"] == 1.0
    assert out["retrieval/r@1_i2t"] == out["retrieval/r@3_i2t"] == pytest.approx(2 / 3)
    assert out["retrieval/rsum"] == pytest.approx(0.25 + 0.75 + 1.0 + 3 * 2 / 3)
    assert out["retrieval/count"] == 4 and out["retrieval/count/images"] == 3
    # A text with two right images is right when the better one ranks: t1 with images 0 and 2 -> rank 0.
    multi = RetrievalMetric(ks=(1,))
    multi.update(SIM[1:2], [(0, 2)])
    assert multi.compute()["retrieval/r@1_t2i"] == 1.0


def test_retrieval_merge_is_exact_and_order_free():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 5, size=(30, 7)).astype(np.float32) / 4  # many ties
    gt = [int(i) for i in rng.integers(0, 7, size=30)]
    whole = RetrievalMetric()
    whole.update(sim, gt)
    parts = [RetrievalMetric() for _ in range(3)]
    for k, rows in enumerate((range(0, 11), range(11, 12), range(12, 30))):
        parts[k].update(sim[list(rows)], [gt[i] for i in rows])
    merged = Evaluator(["retrieval"])
    for p in reversed(parts):  # any order of ranks
        merged.merge({"retrieval": json.loads(json.dumps(p.state_dict()))})
    assert merged.compute() == whole.compute()
    assert set(whole.compute()) >= {f"retrieval/r@{k}_{d}" for k in (1, 5, 10) for d in ("t2i", "i2t")}


def test_retrieval_errors_and_evaluator_routing():
    m = RetrievalMetric()
    m.update(SIM, GT)
    with pytest.raises(ValueError, match="3 image columns, earlier updates had 4"):
        m.update(SIM[:, :3], GT)
    with pytest.raises(ValueError, match=r"text 0: ground-truth image\(s\) \(4,\)"):
        m.update(SIM, [4, 0, 0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        m.update(np.full((1, 4), np.nan), [0])
    ev = Evaluator(["retrieval", "rec"])
    ev.update(rec(0, [(0, 0, 4, 4)]), boxes_pred([(0, 0, 4, 4)], [1.0]))  # per-sample: rec only
    ev.update_retrieval(SIM, GT)
    out = ev.compute()
    assert out["rec/prec@0.5"] == 1.0 and out["retrieval/r@1_t2i"] == 0.25
    with pytest.raises(ValueError, match="no retrieval metric"):
        Evaluator(["rec"]).update_retrieval(SIM, GT)


# ----------------------------------------------------------------------------- registry, protocol


class _LongText(MetricAccumulator):
    prefix = "toy"

    def sample_stats(self, record, prediction, gt_mask):
        return {"count": 1, "long": int(len(record.text) > 3)}

    def summarize(self, sums):
        return {"long": sums["long"] / sums["count"]}


def test_register_a_metric_family_in_one_place(monkeypatch):
    monkeypatch.setattr(metric_registry, "_FAMILIES", dict(metric_registry._FAMILIES))
    register_metric("toy")(lambda cfg: _LongText(cfg.by_family))
    ev = Evaluator(["toy", "grec"])
    assert ev.tasks == ("toy", "gref")
    ev.update(rec(0, no_target=True), boxes_pred([], []))
    assert ev.compute()["toy/long"] == 0.0 and ev.compute()["grec/n_acc"] == 1.0
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_metric("toy", lambda cfg: _LongText())
    register_metric("toy", lambda cfg: _LongText(), replace=True)


def test_metrics_config_for_reads_eval_and_protocol_only():
    from langground.config import EvalConfig
    from langground.data.protocols import FLICKR_SEPARATE, GREFCOCO

    assert metrics_config_for(None) == MetricsConfig()
    cfg = metrics_config_for(
        EvalConfig(grec_score_threshold=0.6, grec_matching="maximum", gres_no_target="min_pixels"), GREFCOCO
    )
    assert (cfg.grec_score_threshold, cfg.grec_matching, cfg.gres_no_target) == (0.6, "maximum", "min_pixels")
    assert cfg.rec_box_match == "merged" and cfg.min_mask_pixels == 50
    assert metrics_config_for(EvalConfig(), FLICKR_SEPARATE).rec_box_match == "any"
    assert metrics_config_for(EvalConfig(box_match="merged"), FLICKR_SEPARATE).rec_box_match == "merged"
    with pytest.raises(ValueError, match="MetricsConfig.grec_matching='greedy'"):
        metrics_config_for(EvalConfig(grec_matching="greedy"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown MetricsConfig field"):
        metrics_config_for(None, no_such=1)


def test_laconvnet_table6_preset_selects_the_50_pixel_rule():
    from langground.config import EvalConfig

    path = Path(__file__).parents[1] / "src/langground/presets/grefcoco-laconvnet-s-gres.yaml"
    cfg = metrics_config_for(EvalConfig(**yaml.safe_load(path.read_text())["eval"]))
    assert (cfg.gres_no_target, cfg.min_mask_pixels) == ("min_pixels", 50)
