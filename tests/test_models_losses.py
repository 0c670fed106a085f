import math

import pytest
import torch

from langground.losses import assign_cells, build_criterion, dice_loss, resize_masks
from langground.types import Targets


def _grid(n=8):
    c = (torch.arange(n) + 0.5) / n
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((xx, yy), -1).reshape(-1, 2), torch.tensor([1 / n, 1 / n])


def test_assignment_centre_cell_always_positive_and_radius_limits():
    centers, cell = _grid(8)
    tiny = torch.tensor([[0.52, 0.52, 0.01, 0.01]])
    pos, _ = assign_cells(centers, cell, tiny, 1.5)
    assert pos.sum() == 1 and pos[4 * 8 + 4]
    big = torch.tensor([[0.52, 0.52, 0.9, 0.9]])
    pos, _ = assign_cells(centers, cell, big, 1.5)
    assert pos.sum() == 9  # inside the box, but only within 1.5 cells of its centre
    two = torch.tensor([[0.5, 0.5, 0.9, 0.9], [0.55, 0.55, 0.2, 0.2]])
    pos, which = assign_cells(centers, cell, two, 1.5)
    assert which[4 * 8 + 4] == 1  # shared cell goes to the smaller referent


def _dense_outputs(b=2, n=8):
    centers, cell = _grid(n)
    box_set = torch.rand(b, n * n, 4).clamp(0.05, 0.95).requires_grad_()
    logits = torch.zeros(b, n * n, requires_grad=True)
    return {
        "pred_boxes": box_set[:, 0],
        "pred_box_set": box_set,
        "pred_box_logits": logits,
        "pred_no_target": torch.zeros(b, requires_grad=True),
        "aux": {"cell_centers": centers, "cell_size": cell},
    }


def test_rec_losses_and_weighting():
    out = _dense_outputs()
    targets = Targets(
        [torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.2, 0.2, 0.1, 0.3]])],
        None,
        torch.zeros(2, dtype=torch.bool),
        torch.full((2,), -1),
    )
    crit = build_criterion("rec", giou=1.0, l1=0.0, obj=3.0)
    losses = crit(out, targets)
    assert set(losses) == {"loss_giou", "loss_l1", "loss_obj", "loss"}
    assert torch.allclose(losses["loss"], losses["loss_giou"] + 3 * losses["loss_obj"])
    losses["loss"].backward()
    assert out["pred_box_set"].grad.abs().sum() > 0


def test_perfect_dense_prediction_has_zero_box_loss():
    out = _dense_outputs(b=1)
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    with torch.no_grad():
        out["pred_box_set"][:] = gt
    targets = Targets([gt], None, torch.zeros(1, dtype=torch.bool), torch.full((1,), -1))
    losses = build_criterion("rec")(out, targets)
    assert losses["loss_giou"] < 1e-4 and losses["loss_l1"] < 1e-6


def test_no_target_samples_only_train_the_no_target_logit():
    out = _dense_outputs()
    targets = Targets(
        [torch.zeros(0, 4), torch.zeros(0, 4)], None, torch.ones(2, dtype=torch.bool), torch.full((2,), -1)
    )
    losses = build_criterion("gref")(out, targets)
    assert losses["loss_giou"] == 0 and losses["loss_obj"] == 0
    assert torch.isclose(losses["loss_no_target"], torch.nn.functional.softplus(torch.tensor(0.0)))
    losses["loss"].backward()
    assert out["pred_box_logits"].grad.abs().sum() == 0


def test_single_box_models_are_regressed_directly():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]], requires_grad=True)
    targets = Targets(
        [torch.tensor([[0.5, 0.5, 0.2, 0.2]])], None, torch.zeros(1, dtype=torch.bool), torch.tensor([-1])
    )
    losses = build_criterion("rec")({"pred_boxes": pred}, targets)
    assert losses["loss_giou"] < 1e-4 and "loss_obj" not in losses


def test_mask_losses_resize_targets():
    logits = torch.full((2, 1, 8, 8), -20.0, requires_grad=True)
    masks = torch.zeros(2, 1, 32, 32)
    masks[1, :, :16] = 1
    with torch.no_grad():
        logits[1, :, :4] = 20.0
    targets = Targets(
        [torch.zeros(0, 4), torch.tensor([[0.5, 0.25, 1, 0.5]])],
        masks,
        torch.tensor([True, False]),
        torch.tensor([-1, -1]),
    )
    losses = build_criterion("gres")(
        {"pred_masks": logits, "pred_no_target": torch.tensor([5.0, -5.0])}, targets
    )
    assert losses["loss_mask_bce"] < 1e-6 and losses["loss_mask_dice"] < 1e-3  # sample 0 (no target) skipped
    assert resize_masks(masks, (8, 8)).shape == (2, 1, 8, 8)
    assert resize_masks(masks, (64, 64)).shape == (2, 1, 64, 64)
    assert dice_loss(torch.full((1, 1, 4, 4), 20.0), torch.ones(1, 1, 4, 4)) < 1e-3
    with pytest.raises(ValueError, match="masks"):
        build_criterion("res")(
            {"pred_masks": logits},
            Targets([torch.zeros(1, 4)] * 2, None, torch.zeros(2, dtype=torch.bool), torch.tensor([-1, -1])),
        )


def test_vqa_ignores_missing_answers():
    logits = torch.zeros(3, 4, requires_grad=True)
    targets = Targets(
        [torch.zeros(0, 4)] * 3, None, torch.zeros(3, dtype=torch.bool), torch.tensor([1, -1, 2])
    )
    losses = build_criterion("vqa")({"pred_answer": logits}, targets)
    assert torch.isclose(losses["loss_answer"], torch.log(torch.tensor(4.0)))
    none = Targets([torch.zeros(0, 4)] * 3, None, torch.zeros(3, dtype=torch.bool), torch.full((3,), -1))
    assert build_criterion("vqa")({"pred_answer": logits}, none)["loss"] == 0


def test_build_criterion_validates():
    with pytest.raises(ValueError, match="unknown task"):
        build_criterion("det")
    with pytest.raises(ValueError, match="unknown loss weight"):
        build_criterion("rec", dice=1.0)


def test_rec_objectness_is_a_softmax_over_cells_and_gref_keeps_bce():
    # One referent centred on a cell corner: 4 x 4 cells lie within 1.5 cells of it; all logits 0:
    # softmax CE against the uniform target on the positives = log 64 exactly.
    out = _dense_outputs(b=1)
    gt = torch.tensor([[0.5, 0.5, 0.9, 0.9]])
    targets = Targets([gt], None, torch.zeros(1, dtype=torch.bool), torch.full((1,), -1))
    assert build_criterion("rec").options["objectness"] == "softmax"
    assert build_criterion("gref").options["objectness"] == "bce"
    rec = build_criterion("rec")(out, targets)["loss_obj"]
    assert rec.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=1e-6)
    bce = build_criterion("rec", objectness="bce")(out, targets)["loss_obj"]
    assert bce.item() == pytest.approx(
        64 * torch.log(torch.tensor(2.0)).item() / 16, rel=1e-6
    )  # per positive
    # Mass on the positives lowers the softmax loss; mass elsewhere raises it.
    pos, _ = assign_cells(out["aux"]["cell_centers"], out["aux"]["cell_size"], gt, 1.5)
    crit = build_criterion("rec")
    with torch.no_grad():
        out["pred_box_logits"][0, pos] = 3.0
    assert crit(out, targets)["loss_obj"] < rec
    with torch.no_grad():
        out["pred_box_logits"][0] = torch.where(pos, 0.0, 3.0)
    assert crit(out, targets)["loss_obj"] > rec
    with pytest.raises(ValueError, match="objectness='focal'"):
        build_criterion("rec", objectness="focal")


# ----------------------------------------------------------------------------- values by hand


def _targets(boxes, no_target=None, masks=None, answers=None):
    n = len(boxes)
    return Targets(
        [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        masks,
        torch.zeros(n, dtype=torch.bool) if no_target is None else torch.tensor(no_target),
        torch.full((n,), -1) if answers is None else torch.tensor(answers),
    )


def test_single_box_giou_and_l1_values_by_hand():
    # 1: pred xyxy (.4,.4,.6,.6) vs gt (.5,.4,.7,.6): I = .02, U = .06, enclosing .06 -> GIoU 1/3, loss 2/3.
    # 2: pred (.1,.1,.3,.3) vs gt (.6,.3,.8,.7): I = 0, U = .12, enclosing .7 x .6 = .42 -> GIoU -5/7,
    #    loss 12/7. L1 over the 8 cxcywh numbers: (.1 + .5 + .3 + .2) / 8 = .1375.
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])
    gt = [[0.6, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.4]]
    losses = build_criterion("rec", giou=2.0, l1=5.0)({"pred_boxes": pred}, _targets(gt))
    giou = (2 / 3 + 12 / 7) / 2
    assert losses["loss_giou"].item() == pytest.approx(giou, rel=1e-5)
    assert losses["loss_l1"].item() == pytest.approx(0.1375, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(2 * giou + 5 * 0.1375, rel=1e-5)
    # the same as torchvision's generalized_box_iou_loss on the xyxy boxes
    from torchvision.ops import generalized_box_iou_loss

    xyxy = (
        torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.1, 0.1, 0.3, 0.3]]),
        torch.tensor([[0.5, 0.4, 0.7, 0.6], [0.6, 0.3, 0.8, 0.7]]),
    )
    assert generalized_box_iou_loss(*xyxy, reduction="mean").item() == pytest.approx(giou, rel=1e-5)


def _dense_4x4(logit5: float, box5):
    """A 4 x 4 grid (cells .25 wide), all logits 0 but cell 5 (row 1, col 1), every box (.5,.5,.2,.2) but
    cell 5's."""
    centers, cell = _grid(4)
    box_set = torch.tensor([0.5, 0.5, 0.2, 0.2]).repeat(1, 16, 1)
    box_set[0, 5] = torch.tensor(box5)
    logits = torch.zeros(1, 16)
    logits[0, 5] = logit5
    return {
        "pred_boxes": box_set[:, 5],
        "pred_box_set": box_set,
        "pred_box_logits": logits,
        "aux": {"cell_centers": centers, "cell_size": cell},
    }


def test_dense_rec_terms_by_hand():
    # Referent (.3,.3,.2,.2): a cell is positive when its centre is within max(.1, .125) of the referent's
    # centre on both axes (and 1.5 cells): only the centre (.375, .375), cell 5.
    # Cell 5 predicts (.35,.3,.2,.2): xyxy (.25,.2,.45,.4) vs (.2,.2,.4,.4): I = .03, U = .05, enclosing
    # .05 -> GIoU .6, loss .4; L1 = .05 / 4. Softmax objectness: logit ln 3 among 15 zeros ->
    # p5 = 3 / 18 -> CE = ln 6. Per-cell BCE, per positive: softplus(-ln 3) + 15 softplus(0)
    # = ln(4/3) + 15 ln 2.
    out = _dense_4x4(math.log(3.0), [0.35, 0.3, 0.2, 0.2])
    targets = _targets([[0.3, 0.3, 0.2, 0.2]])
    pos, _ = assign_cells(out["aux"]["cell_centers"], out["aux"]["cell_size"], targets.boxes[0], 1.5)
    assert pos.nonzero().flatten().tolist() == [5]
    soft = build_criterion("rec")(out, targets)
    assert soft["loss_giou"].item() == pytest.approx(0.4, rel=1e-5)
    assert soft["loss_l1"].item() == pytest.approx(0.0125, rel=1e-5)
    assert soft["loss_obj"].item() == pytest.approx(math.log(6.0), rel=1e-6)
    assert soft["loss"].item() == pytest.approx(2 * 0.4 + 5 * 0.0125 + math.log(6.0), rel=1e-5)
    bce = build_criterion("rec", objectness="bce")(out, targets)["loss_obj"]
    assert bce.item() == pytest.approx(math.log(4 / 3) + 15 * math.log(2.0), rel=1e-6)


def test_mask_bce_and_dice_values_by_hand():
    # One 2 x 2 mask: logits (2, -1, 0, 3), target (1, 0, 1, 0).
    # BCE(z, y) = softplus(z) - y z: softplus(-2), softplus(-1), ln 2, softplus(3), averaged.
    # Dice with +1 smoothing: 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), p = sigmoid(z).
    z = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    bce = (sp(-2) + sp(-1) + math.log(2) + sp(3)) / 4
    p = [sig(2), sig(-1), sig(0), sig(3)]
    dice = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
    assert dice == pytest.approx(0.32856, abs=1e-5)
    losses = build_criterion("res")({"pred_masks": z}, _targets([[0.5, 0.5, 1.0, 1.0]], masks=t))
    assert losses["loss_mask_bce"].item() == pytest.approx(bce, rel=1e-6)
    assert losses["loss_mask_dice"].item() == pytest.approx(dice, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(bce + dice, rel=1e-6)
    assert dice_loss(z, t).item() == pytest.approx(dice, rel=1e-6)
    # an empty target: the +1 keeps it finite, 1 - 1 / (sum p + 1)
    empty = torch.zeros_like(t)
    assert dice_loss(z, empty).item() == pytest.approx(1 - 1 / (sum(p) + 1), rel=1e-6)


def test_no_target_and_answer_values_by_hand():
    # gres: sample 0 refers to nothing (logit 2 -> softplus(-2)), sample 1 to a mask (logit -1 ->
    # softplus(-1)); the mask terms see sample 1 only (all-zero logits on an all-ones 2 x 2 mask:
    # BCE ln 2, dice 1 - 5 / 7).
    masks = torch.zeros(2, 1, 2, 2)
    masks[1] = 1
    out = {"pred_masks": torch.zeros(2, 1, 2, 2), "pred_no_target": torch.tensor([2.0, -1.0])}
    losses = build_criterion("gres")(out, _targets([[], [0.5, 0.5, 1, 1]], [True, False], masks))
    no_target = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert losses["loss_no_target"].item() == pytest.approx(no_target, rel=1e-6)
    assert losses["loss_mask_bce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert losses["loss_mask_dice"].item() == pytest.approx(1 - 5 / 7, rel=1e-6)
    # vqa: logits (2, 0, 0, 0), answer 0 -> -ln(e^2 / (e^2 + 3)); answer 1 -> -ln(1 / (e^2 + 3))
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]] * 2)
    vqa = build_criterion("vqa")({"pred_answer": logits}, _targets([[], []], answers=[0, 1]))
    e2 = math.exp(2)
    want = (-math.log(e2 / (e2 + 3)) - math.log(1 / (e2 + 3))) / 2
    assert vqa["loss_answer"].item() == pytest.approx(want, rel=1e-6)
