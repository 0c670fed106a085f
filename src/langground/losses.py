"""Training criteria: model outputs (the model contract) + :class:`~langground.types.Targets` -> losses.

``build_criterion(task, **weights)`` returns a module whose ``forward(outputs, targets)`` gives a dict of
unweighted ``loss_*`` terms and ``loss``, their weighted sum. Terms per task:

- rec / gref: ``loss_giou`` (GIoU, torchvision), ``loss_l1`` (L1 on cxcywh), ``loss_obj`` (objectness:
  softmax cross-entropy over the cells for rec, whose one referent the cells compete for; per-cell BCE for
  gref);
  gref also ``loss_no_target``. Dense heads (``pred_box_set`` + ``pred_box_logits`` + ``aux["cell_centers"]``)
  are trained per cell: a cell is positive for a referent when its centre lies inside the referent's box
  (widened to at least the cell itself) and within ``center_radius`` cells of the referent's centre, so
  the cell holding the centre is always positive. Models that only give ``pred_boxes`` regress it directly.
- res / gres: ``loss_mask_bce`` and ``loss_mask_dice`` on ``pred_masks`` (targets resized to its size);
  gres also ``loss_no_target``.
- vqa: ``loss_answer`` (cross-entropy; answers of -1 are ignored).

No-target samples (``K_i = 0`` boxes / ``no_target`` True) contribute only to ``loss_no_target``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from langground.types import TASKS, Targets

DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    "rec": {"giou": 2.0, "l1": 5.0, "obj": 1.0},
    "gref": {"giou": 2.0, "l1": 5.0, "obj": 1.0, "no_target": 1.0},
    "res": {"mask_bce": 1.0, "mask_dice": 1.0},
    "gres": {"mask_bce": 1.0, "mask_dice": 1.0, "no_target": 1.0},
    "vqa": {"answer": 1.0},
}


#: Objectness losses of dense box heads: per-cell ``bce`` (any number of referents) or ``softmax`` over
#: the cells (exactly one referent: REC).
OBJECTNESS = ("bce", "softmax")


def _zero(ref: Tensor) -> Tensor:
    # Keeps the graph connected (DDP) while contributing nothing.
    return ref.sum() * 0.0


def assign_cells(centers: Tensor, cell: Tensor, gt: Tensor, center_radius: float) -> tuple[Tensor, Tensor]:
    """Positive cells of one sample and the referent each regresses.

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


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


class GroundingCriterion(nn.Module):
    def __init__(
        self, task: str, weights: dict[str, float], center_radius: float = 1.5, objectness: str = "bce"
    ):
        super().__init__()
        if objectness not in OBJECTNESS:
            raise ValueError(f"objectness={objectness!r}: expected one of {', '.join(OBJECTNESS)}")
        self.task = task
        self.weights = dict(weights)
        self.center_radius = center_radius
        self.objectness = objectness

    def extra_repr(self) -> str:
        return f"task={self.task!r}, weights={self.weights}"

    def forward(self, outputs: dict[str, Any], targets: Targets) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        has_target = torch.tensor([b.shape[0] > 0 for b in targets.boxes], dtype=torch.bool)
        has_target = has_target.to(targets.no_target.device) & ~targets.no_target.bool()
        if self.task in ("rec", "gref"):
            losses.update(self._box_losses(outputs, targets, has_target))
        if self.task in ("res", "gres"):
            losses.update(self._mask_losses(outputs, targets, has_target))
        if self.task in ("gref", "gres"):
            logit = outputs["pred_no_target"]
            losses["loss_no_target"] = F.binary_cross_entropy_with_logits(
                logit.float(), targets.no_target.to(logit.device).float()
            )
        if self.task == "vqa":
            logits = outputs["pred_answer"].float()
            answers = targets.answers.to(logits.device)
            if bool((answers >= 0).any()):
                losses["loss_answer"] = F.cross_entropy(logits, answers, ignore_index=-1)
            else:
                losses["loss_answer"] = _zero(logits)
        total = sum(self.weights[k[len("loss_") :]] * v for k, v in losses.items())
        losses["loss"] = total  # type: ignore[assignment]
        return losses

    # ------------------------------------------------------------------ boxes
    def _box_losses(self, outputs: dict[str, Any], targets: Targets, has_target: Tensor) -> dict[str, Tensor]:
        aux = outputs.get("aux", {})
        if "pred_box_set" in outputs and "pred_box_logits" in outputs and "cell_centers" in aux:
            return self._dense_box_losses(outputs, targets, has_target)
        pred = outputs["pred_boxes"].float()
        idx = has_target.nonzero().flatten().tolist()
        if not idx:
            return {"loss_giou": _zero(pred), "loss_l1": _zero(pred)}
        # Single-box models regress the first referent (REC has exactly one).
        gt = torch.stack([targets.boxes[i][0] for i in idx]).to(pred)
        p = pred[idx]
        return {
            "loss_giou": generalized_box_iou_loss(_xyxy(p), _xyxy(gt), reduction="mean"),
            "loss_l1": F.l1_loss(p, gt),
        }

    def _dense_box_losses(
        self, outputs: dict[str, Any], targets: Targets, has_target: Tensor
    ) -> dict[str, Tensor]:
        box_set = outputs["pred_box_set"].float()  # (B, N, 4)
        logits = outputs["pred_box_logits"].float()  # (B, N)
        centers = outputs["aux"]["cell_centers"].float()
        cell = outputs["aux"]["cell_size"].float()
        obj_target = torch.zeros_like(logits)
        preds, gts = [], []
        for i in has_target.nonzero().flatten().tolist():
            gt = targets.boxes[i].to(box_set)
            pos, which = assign_cells(centers, cell, gt, self.center_radius)
            obj_target[i] = pos.to(obj_target.dtype)
            preds.append(box_set[i][pos])
            gts.append(gt[which[pos]])
        rows = has_target.to(logits.device)
        if not preds:
            return {"loss_giou": _zero(box_set), "loss_l1": _zero(box_set), "loss_obj": _zero(logits)}
        p, g = torch.cat(preds), torch.cat(gts)
        if self.objectness == "softmax":
            # One referent per expression: the cells compete for it. Cross-entropy of the softmax over
            # cells against the positives' uniform distribution (rows with a target only).
            target = obj_target[rows] / obj_target[rows].sum(dim=1, keepdim=True).clamp_min(1.0)
            obj = -(target * F.log_softmax(logits[rows], dim=1)).sum(dim=1).mean()
        else:
            num_pos = max(p.shape[0], 1)
            obj = F.binary_cross_entropy_with_logits(logits[rows], obj_target[rows], reduction="sum") / num_pos
        return {
            "loss_giou": generalized_box_iou_loss(_xyxy(p), _xyxy(g), reduction="mean"),
            "loss_l1": F.l1_loss(p, g),
            "loss_obj": obj,
        }

    # ------------------------------------------------------------------ masks
    def _mask_losses(
        self, outputs: dict[str, Any], targets: Targets, has_target: Tensor
    ) -> dict[str, Tensor]:
        logits = outputs["pred_masks"].float()
        if targets.masks is None:
            raise ValueError(f"task {self.task!r} needs Targets.masks (B, 1, H, W); got None")
        rows = has_target.to(logits.device)
        if not bool(rows.any()):
            return {"loss_mask_bce": _zero(logits), "loss_mask_dice": _zero(logits)}
        target = resize_masks(targets.masks.to(logits.device).float(), logits.shape[-2:])
        logits, target = logits[rows], target[rows]
        return {
            "loss_mask_bce": F.binary_cross_entropy_with_logits(logits, target),
            "loss_mask_dice": dice_loss(logits, target),
        }


def resize_masks(masks: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Canvas masks ``(B, 1, H, W)`` to the head's ``size``: area averaging when shrinking (soft targets)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(masks, size)
    return F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)


def _xyxy(b: Tensor) -> Tensor:
    return box_convert(b, "cxcywh", "xyxy")


def build_criterion(
    task: str, center_radius: float = 1.5, objectness: str | None = None, **weights: float
) -> GroundingCriterion:
    """Criterion for ``task`` with default weights overridden by ``weights`` (e.g. ``giou=1.0``).

    ``objectness``: ``softmax`` (default for ``rec``) or ``bce`` (default for ``gref``, several referents).

    Raises:
        ValueError: unknown task or a weight name the task does not use.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    w = dict(DEFAULT_WEIGHTS[task])
    unknown = set(weights) - set(w)
    if unknown:
        raise ValueError(
            f"unknown loss weight(s) {', '.join(sorted(unknown))} for task {task!r}; valid: {', '.join(sorted(w))}"
        )
    for k, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"loss weight {k}={v!r}: expected a number")
        w[k] = float(v)
    if objectness is None:
        objectness = "softmax" if task == "rec" else "bce"
    return GroundingCriterion(task, w, center_radius, objectness)


__all__ = [
    "DEFAULT_WEIGHTS",
    "GroundingCriterion",
    "assign_cells",
    "build_criterion",
    "dice_loss",
    "resize_masks",
]
