"""Loss terms shared by the tasks: boxes (single, dense per cell, per query), masks, no-target, answers.

Every function returns unweighted ``loss_*`` tensors; samples without a referent contribute nothing to
box and mask terms (a zero that keeps the graph connected for DDP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

from langground.types import Targets

#: Objectness losses of dense box heads: per-cell ``bce`` (any number of referents) or ``softmax`` over
#: the cells (exactly one referent: REC).
OBJECTNESS = ("bce", "softmax")


def zero(ref: Tensor) -> Tensor:
    """A zero that depends on ``ref`` (keeps every parameter in the graph under DDP)."""
    return ref.sum() * 0.0


def xyxy(b: Tensor) -> Tensor:
    return box_convert(b, "cxcywh", "xyxy")


def has_target(targets: Targets) -> Tensor:
    """``(N,)`` bool: the expression has at least one referent box and is not a no-target one."""
    rows = torch.tensor([b.shape[0] > 0 for b in targets.boxes], dtype=torch.bool)
    return rows.to(targets.no_target.device) & ~targets.no_target.bool()


def box_regression(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """GIoU (torchvision) and L1 on cxcywh between matched ``(M, 4)`` boxes."""
    if pred.shape[0] == 0:
        return {"loss_giou": zero(pred), "loss_l1": zero(pred)}
    return {
        "loss_giou": generalized_box_iou_loss(xyxy(pred), xyxy(gt), reduction="mean"),
        "loss_l1": F.l1_loss(pred, gt),
    }


def assign_cells(centers: Tensor, cell: Tensor, gt: Tensor, center_radius: float) -> tuple[Tensor, Tensor]:
    """Positive cells of one sample and the referent each regresses.

    A cell is positive for a referent when its centre lies inside the referent's box (widened to at least
    the cell itself) and within ``center_radius`` cells of the referent's centre, so the cell holding the
    centre is always positive.

    Args:
        centers: ``(N, 2)`` normalized cell centres; cell: ``(2,)`` normalized cell width/height.
        gt: ``(K, 4)`` normalized cxcywh referents (K >= 1).
    Returns:
        ``pos``: ``(N,)`` bool, ``which``: ``(N,)`` index of the assigned referent (the smallest one
        when several claim a cell).
    """
    d = (centers[:, None, :] - gt[None, :, :2]).abs()  # (N, K, 2)
    half = torch.maximum(gt[None, :, 2:] / 2, cell / 2)
    inside = (d <= half).all(-1) & (d <= center_radius * cell).all(-1)  # (N, K)
    area = (gt[:, 2] * gt[:, 3]).expand_as(inside)
    area = torch.where(inside, area, torch.full_like(area, float("inf")))
    which = area.argmin(dim=1)
    return inside.any(dim=1), which


def single_box_terms(outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
    """Models with one ``pred_boxes`` ``(N, 4)`` box regress the first referent (REC has exactly one)."""
    pred = outputs["pred_boxes"].float()
    idx = has_target(targets).nonzero().flatten().tolist()
    if not idx:
        return box_regression(pred[:0], pred[:0])
    gt = torch.stack([targets.boxes[i][0] for i in idx]).to(pred)
    return box_regression(pred[idx], gt)


def dense_box_terms(
    outputs: Mapping[str, Any], targets: Targets, center_radius: float, objectness: str
) -> dict[str, Tensor]:
    """Dense heads (``pred_box_set`` ``(N, C, 4)`` + ``pred_box_logits`` ``(N, C)`` + the cell geometry
    ``aux["cell_centers"]`` / ``aux["cell_size"]``): positive cells regress their referent; objectness is a
    softmax over the cells (one referent) or a per-cell BCE (several)."""
    if objectness not in OBJECTNESS:
        raise ValueError(f"objectness={objectness!r}: expected one of {', '.join(OBJECTNESS)}")
    box_set = outputs["pred_box_set"].float()
    logits = outputs["pred_box_logits"].float()
    centers = outputs["aux"]["cell_centers"].float()
    cell = outputs["aux"]["cell_size"].float()
    rows = has_target(targets).to(logits.device)
    obj_target = torch.zeros_like(logits)
    preds, gts = [], []
    for i in rows.nonzero().flatten().tolist():
        gt = targets.boxes[i].to(box_set)
        pos, which = assign_cells(centers, cell, gt, center_radius)
        obj_target[i] = pos.to(obj_target.dtype)
        preds.append(box_set[i][pos])
        gts.append(gt[which[pos]])
    if not preds:
        return {**box_regression(box_set[0, :0], box_set[0, :0]), "loss_obj": zero(logits)}
    p, g = torch.cat(preds), torch.cat(gts)
    if objectness == "softmax":
        # The cells compete for the one referent: cross-entropy of the softmax over cells against the
        # positives' uniform distribution (rows with a target only).
        target = obj_target[rows] / obj_target[rows].sum(dim=1, keepdim=True).clamp_min(1.0)
        obj = -(target * F.log_softmax(logits[rows], dim=1)).sum(dim=1).mean()
    else:
        obj = F.binary_cross_entropy_with_logits(logits[rows], obj_target[rows], reduction="sum")
        obj = obj / max(p.shape[0], 1)
    return {**box_regression(p, g), "loss_obj": obj}


def box_terms(
    outputs: Mapping[str, Any], targets: Targets, center_radius: float, objectness: str
) -> dict[str, Tensor]:
    """Dense terms when the outputs carry a dense head, else single-box regression. The model says which
    by what it returns (``aux["cell_centers"]`` is the dense head's geometry), not by a guess."""
    if "pred_box_set" in outputs:
        aux = outputs.get("aux") or {}
        if "cell_centers" not in aux or "pred_box_logits" not in outputs:
            raise ValueError(
                "outputs have pred_box_set but no pred_box_logits / aux['cell_centers'] and aux['cell_size']: "
                "a dense box head must return its logits and cell geometry"
            )
        return dense_box_terms(outputs, targets, center_radius, objectness)
    return single_box_terms(outputs, targets)


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss ``1 - (2|P∩T| + 1) / (|P| + |T| + 1)`` per sample, averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def resize_masks(masks: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Canvas masks ``(B, 1, H, W)`` to the head's ``size``: area averaging when shrinking (soft targets)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(masks, size)
    return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)


def mask_terms(outputs: Mapping[str, Any], targets: Targets, task: str) -> dict[str, Tensor]:
    """BCE and Dice between ``pred_masks`` ``(N, 1, h, w)`` logits and the canvas masks, target rows only."""
    logits = outputs["pred_masks"].float()
    if targets.masks is None:
        raise ValueError(f"task {task!r} needs Targets.masks (N, 1, H, W); got None")
    rows = has_target(targets).to(logits.device)
    if not bool(rows.any()):
        return {"loss_mask_bce": zero(logits), "loss_mask_dice": zero(logits)}
    target = resize_masks(targets.masks.to(logits.device).float(), logits.shape[-2:])
    logits, target = logits[rows], target[rows]
    return {
        "loss_mask_bce": F.binary_cross_entropy_with_logits(logits, target),
        "loss_mask_dice": dice_loss(logits, target),
    }


def no_target_terms(outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
    logit = outputs["pred_no_target"].float()
    return {
        "loss_no_target": F.binary_cross_entropy_with_logits(
            logit, targets.no_target.to(logit.device).float()
        )
    }


def answer_terms(outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
    """Cross-entropy over the answer vocabulary; answers of -1 (unknown) are ignored."""
    logits = outputs["pred_answer"].float()
    answers = targets.answers.to(logits.device)
    if not bool((answers >= 0).any()):
        return {"loss_answer": zero(logits)}
    return {"loss_answer": F.cross_entropy(logits, answers, ignore_index=-1)}
