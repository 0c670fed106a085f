"""langground.engine.metrics.Evaluator: several families at once, keys, exact merge, tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from langground.engine.metrics import (
    Evaluator,
    ExactSum,
    MetricsConfig,
    format_table,
    metric_rows,
)
from langground.types import Prediction
from test_metrics import H, W, assert_finite, mask, pred, rec

# ----------------------------------------------------------------------------- Evaluator


def _mixed_split(n: int, seed: int):
    """Many REC/RES/GRES/GREC/VQA samples with irregular float IoUs, for merge tests."""
    rng = np.random.default_rng(seed)
    families = ["attribute", "relation", "ordinal", "same_attribute", "multi", "absent", "false_relation"]
    out = []
    for i in range(n):
        fam = families[i % len(families)]
        if i % 9 == 8:
            r = rec(i, answer=str(i % 3), family="count")
            if i % 2:  # VQAv2-style: ten human answers, a fractional accuracy
                r.answers = tuple(str(a) for a in rng.integers(3, size=10))
            out.append((r, pred(answer=str(rng.integers(3)))))
            continue
        if fam in ("absent", "false_relation"):
            r = rec(i, [], no_target=True, family=fam, mask=np.zeros((H, W), np.uint8))
        else:
            x, y = rng.uniform(0, 20, 2)
            r = rec(
                i,
                [(x, y, x + rng.uniform(1, 9), y + rng.uniform(1, 9))],
                family=fam,
                mask=(rng.random((H, W)) < 0.4).astype(np.uint8),
            )
        x, y = rng.uniform(0, 20, 2)
        p = Prediction(
            np.array([[x, y, x + rng.uniform(1, 9), y + rng.uniform(1, 9)]], np.float32),
            np.array([rng.uniform(0.5, 1)], np.float32),
            mask=rng.random((H, W)) < 0.4,
            no_target=float(rng.uniform()),
        )
        out.append((r, p))
    return out


ALL_TASKS = ["rec", "res", "gres", "grec", "vqa"]


def test_evaluator_keys_and_mixed_split():
    ev = Evaluator(ALL_TASKS)
    assert ev.tasks == ("rec", "res", "gres", "gref", "vqa")
    ev.update_many(*zip(*_mixed_split(40, 0), strict=True))
    out = ev.compute()
    for key in [
        "rec/prec@0.5",
        "rec/prec@0.5/family/relation",
        "res/miou",
        "res/oiou",
        "res/pr@0.7",
        "gres/ciou",
        "gres/giou",
        "gres/n_acc",
        "gres/t_acc",
        "grec/prec@f1",
        "grec/n_acc",
        "grec/t_acc",
        "vqa/acc",
        "vqa/acc/family/count",
    ]:
        assert key in out, key
    assert out["vqa/count"] == 4  # i = 8, 17, 26, 35
    assert out["rec/count"] + out["gres/count/family/absent"] + out["gres/count/family/false_relation"] == 36
    assert_finite(out)


def test_evaluator_nothing_seen_reports_counts_only():
    assert Evaluator(ALL_TASKS).compute() == {
        "rec/count": 0.0,
        "res/count": 0.0,
        "gres/count": 0.0,
        "grec/count": 0.0,
        "vqa/count": 0.0,
    }


def test_merge_of_two_halves_equals_whole_bit_for_bit():
    data = _mixed_split(120, 1)
    whole = Evaluator(ALL_TASKS)
    first, second = Evaluator(ALL_TASKS), Evaluator(ALL_TASKS)
    for i, (r, p) in enumerate(data):
        whole.update(r, p)
        (first if i % 3 else second).update(r, p)  # interleaved, unequal halves
    # The state travels as JSON (or pickle) between ranks.
    state = json.loads(json.dumps(second.state_dict()))
    merged = Evaluator(ALL_TASKS)
    merged.merge(first.state_dict())
    merged.merge(state)
    reverse = Evaluator(ALL_TASKS)
    reverse.merge(second)
    reverse.merge(first)
    assert merged.compute() == whole.compute()  # exact equality, not approx
    assert reverse.compute() == whole.compute()


def test_merge_refuses_mismatches():
    ev = Evaluator(["gres"])
    with pytest.raises(ValueError, match="tasks"):
        ev.merge(Evaluator(["gres", "rec"]))
    with pytest.raises(ValueError, match="different settings"):
        ev.merge(Evaluator(["gres"], MetricsConfig(min_mask_pixels=10)))
    with pytest.raises(ValueError, match="different settings"):
        ev.merge(Evaluator(["gres"], MetricsConfig(gres_no_target="min_pixels")))
    with pytest.raises(ValueError, match="different settings"):
        ev.merge(Evaluator(["gres"], MetricsConfig(by_family=False)))
    with pytest.raises(ValueError, match=r"unknown metric family 'detection'; expected one of .*retrieval"):
        Evaluator(["detection"])


def test_evaluator_loads_gt_mask_once():
    calls = []

    def loader():
        calls.append(1)
        return mask((0, 0))

    r = rec(0, [(0, 0, 1, 1)])
    r.mask_loader = loader
    ev = Evaluator(["rec", "res", "gres"])
    ev.update(r, pred([(0, 0, 1, 1)], mask=mask((0, 0)).astype(bool)))
    assert len(calls) == 1
    out = ev.compute()
    assert out["rec/prec@0.5"] == out["res/miou"] == out["gres/ciou"] == 1.0


def test_format_table_rows():
    metrics = {
        "rec/prec@0.5": 0.8123,
        "rec/count": 10.0,
        "rec/prec@0.5/family/relation": 0.5,
        "rec/count/family/relation": 4.0,
        "vqa/acc": 1.0,
    }
    rows = metric_rows(metrics)
    assert rows == [
        ("rec", "count", "10"),
        ("rec", "prec@0.5", "81.23"),
        ("rec", "count/family/relation", "4"),
        ("rec", "prec@0.5/family/relation", "50.00"),
        ("vqa", "acc", "100.00"),
    ]
    assert format_table(metrics).row_count == 5


def test_exact_sum_is_exact_and_order_free():
    s = ExactSum()
    for x in (1e16, 1.0, -1e16):
        s.add(x)
    assert s.value == 1.0  # a naive float sum gives 0.0
    a, b = ExactSum([0.1] * 10), ExactSum([0.2, 0.3])
    a.merge(b)
    assert a.value == math.fsum([0.1] * 10 + [0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        s.add(float("nan"))
