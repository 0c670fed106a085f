"""The multi-task ``recres`` task: registry entry, L = L_det + L_seg worked out by hand, per-layer box-only
aux terms, zero weights for the REC-only / RES-only ablations, decoding of box AND mask in original
pixels, and a RefCOCO-layout loader serving recres records with masks."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from langground.data import open_dataset
from langground.data.protocols import REFCOCO, SYNTH
from langground.data.synthetic import SynthConfig, generate_world
from langground.losses import build_criterion
from langground.tasks import DecodeContext, Frame, get_task, list_tasks
from langground.types import Targets

SRC = Path(__file__).resolve().parents[1] / "src" / "langground"


def _targets(n: int = 2, size: int = 8) -> Targets:
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, :4, :] = 1.0  # the top half
    boxes = [torch.tensor([[0.5, 0.5, 0.5, 0.5]]) for _ in range(n)]
    return Targets(boxes, masks, torch.zeros(n, dtype=torch.bool), torch.full((n,), -1))


def test_recres_is_registered_with_both_heads_and_metric_families():
    task = get_task("recres")
    assert "recres" in list_tasks()
    assert task.heads == {"box", "mask"} and task.metrics == ("rec", "res")
    assert task.needs_masks and task.decodes_masks and task.primary_metric == "rec/prec@0.5"
    assert dict(task.loss_weights) == {
        "giou": 1.0,
        "l1": 1.0,
        "mask_focal": 1.0,
        "mask_dice": 1.0,
        "obj": 1.0,
    }


def test_loss_is_det_plus_seg_with_focal_and_dice_worked_out_by_hand():
    targets = _targets()
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.25, 0.5]])  # row 1: half the width
    outputs = {"pred_boxes": pred, "pred_masks": torch.zeros(2, 1, 8, 8)}  # p = 0.5 everywhere
    losses = build_criterion("recres", giou=2.0, l1=5.0, mask_focal=3.0, mask_dice=0.5)(outputs, targets)
    # box 1 has IoU 0.5 and fills the enclosing box: GIoU loss 0.5 for it, 0 for box 0
    assert losses["loss_giou"].item() == pytest.approx(0.25, rel=1e-5)
    assert losses["loss_l1"].item() == pytest.approx(0.25 / 8, rel=1e-5)
    # focal at p = 0.5: alpha (1-p)^2 (-log p) on foreground, (1-alpha) p^2 (-log(1-p)) on background
    fg, bg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    assert losses["loss_mask_focal"].item() == pytest.approx((fg + bg) / 2, rel=1e-5)
    # dice: 1 - (2 * 0.5 * 32 + 1) / (0.5 * 64 + 32 + 1)
    assert losses["loss_mask_dice"].item() == pytest.approx(1 - 33 / 65, rel=1e-5)
    total = 2 * 0.25 + 5 * 0.25 / 8 + 3 * (fg + bg) / 2 + 0.5 * (1 - 33 / 65)
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_box_only_aux_layers_get_det_terms_only_and_zero_weights_make_single_task_runs():
    targets = _targets()
    outputs = {
        "pred_boxes": torch.full((2, 4), 0.5),
        "pred_masks": torch.zeros(2, 1, 8, 8),
        "aux_outputs": [{"pred_boxes": torch.full((2, 4), 0.4)}],
    }
    losses = build_criterion("recres")(outputs, targets)
    assert {"loss_giou_0", "loss_l1_0"} <= losses.keys()
    assert "loss_mask_focal_0" not in losses and "loss_mask_dice_0" not in losses
    rec_only = build_criterion("recres", mask_focal=0.0, mask_dice=0.0)(outputs, targets)
    det = sum(losses[k] for k in ("loss_giou", "loss_l1", "loss_giou_0", "loss_l1_0"))
    assert rec_only["loss"].item() == pytest.approx(det.item(), rel=1e-6)
    res_only = build_criterion("recres", giou=0.0, l1=0.0)(outputs, targets)  # per-layer terms follow
    seg = losses["loss_mask_focal"] + losses["loss_mask_dice"]
    assert res_only["loss"].item() == pytest.approx(seg.item(), rel=1e-6)
    with pytest.raises(ValueError, match="pred_boxes and/or pred_masks"):
        build_criterion("recres")({"pred_scores": torch.ones(2)}, targets)


def test_rows_without_target_add_nothing_and_masks_are_required():
    targets = _targets()
    targets.no_target[:] = True
    targets.boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    out = {"pred_boxes": torch.full((2, 4), 0.5, requires_grad=True), "pred_masks": torch.zeros(2, 1, 8, 8)}
    losses = build_criterion("recres")(out, targets)
    assert losses["loss"].item() == 0.0
    targets.masks = None
    with pytest.raises(ValueError, match="needs Targets.masks"):
        build_criterion("recres")(out, targets)


def test_decoding_gives_the_box_heads_box_and_the_mask_in_original_pixels():
    # a 128 x 96 (W x H) image letterboxed to 64: scale 0.5, 8 rows of padding above and below
    frame = Frame(canvas=64, transform=(0.5, 0.0, 8.0), size=(96, 128))
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[0, 0, 1:15, 0:8] = 10.0  # canvas rows 4..60 (beyond the content), columns 0..32: left half
    outputs = {"pred_boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]]), "pred_masks": logits}
    pred = get_task("recres").predict(outputs, 0, frame, DecodeContext())
    # canvas xyxy (24, 24, 40, 40) -> original ((24 - 0) / 0.5, (24 - 8) / 0.5, ...)
    np.testing.assert_allclose(pred.boxes, [[48.0, 32.0, 80.0, 64.0]], atol=1e-4)
    assert pred.scores.tolist() == [1.0]
    assert pred.mask is not None and pred.mask.shape == (96, 128)
    assert pred.mask[:, :60].all() and not pred.mask[:, 68:].any()  # the left half, not the box


def test_refcoco_style_loaders_serve_recres_records_with_masks(tmp_path):
    assert "recres" in REFCOCO.tasks and REFCOCO.metrics["recres"][0] == "rec/prec@0.5"
    assert "res/miou" in SYNTH.metrics["recres"] and REFCOCO.input_size["recres"] == 640
    root = generate_world(tmp_path / "synth", SynthConfig(images=6, size=(96, 72), seed=0), workers=1)
    records = open_dataset(root, "synth", "train", task="recres")
    rec = open_dataset(root, "synth", "train", task="rec")
    assert len(records) == len(rec) > 0 and records.task == "recres"
    r = records[0]
    mask = r.load_mask()
    assert mask is not None and mask.shape == tuple(r.image_size) and mask.any()
    assert "recres" in records.protocol.describe("recres") and "res/miou" in records.protocol.describe(
        "recres"
    )


def test_no_task_name_comparisons_outside_tasks():
    out = subprocess.run(
        ["grep", "-rn", "--include=*.py", "task ==", str(SRC)], capture_output=True, text=True, check=False
    ).stdout
    offenders = [line for line in out.splitlines() if f"{SRC}/tasks/" not in line]
    assert offenders == []


def test_laconvnet_answers_recres_with_a_dense_box_head_and_a_mask_in_one_pass():
    from langground.registry import create_model
    from langground.types import TextBatch

    torch.manual_seed(0)
    m = create_model("laconvnet_t", task="recres", vocab_size=10, input_size=64).train()
    ids = torch.tensor([[2, 3, 4], [2, 5, 0]])
    out = m(torch.randn(2, 3, 64, 64), TextBatch(ids, ids != 0))
    assert out["pred_boxes"].shape == (2, 4) and out["pred_masks"].shape[:2] == (2, 1)
    targets = _targets()
    losses = build_criterion("recres", giou=2.0, l1=5.0)(out, targets)
    # the dense head's objectness is weighted (REC's 1.0), next to L_det and L_seg
    assert {"loss_obj", "loss_giou", "loss_l1", "loss_mask_focal", "loss_mask_dice"} <= set(losses)
    parts = 2 * losses["loss_giou"] + 5 * losses["loss_l1"] + losses["loss_obj"]
    parts = parts + losses["loss_mask_focal"] + losses["loss_mask_dice"]
    assert losses["loss"].item() == pytest.approx(parts.item(), rel=1e-5)
    losses["loss"].backward()
    assert m.box_head.pred.weight.grad.abs().sum() > 0 and m.seg_head.pred.weight.grad.abs().sum() > 0
