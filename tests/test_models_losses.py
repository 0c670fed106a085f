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
    assert bce.item() == pytest.approx(64 * torch.log(torch.tensor(2.0)).item() / 16, rel=1e-6)  # per positive
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
