"""DMN's optional IoU loss (the release's ``utils/losses.py`` ``IoULoss``, after Rahman & Wang 2016), as a
model-owned loss module: ``1 - ΣpG / Σ(p + G - pG)`` per expression with ``p = sigmoid(logits)``,
averaged over the expressions that have a referent.

The release's ``IoULoss`` sums over its whole (batch-1, squeezed ``(H, W)``) tensor and returns
``(H - IoU) / H`` (``input.size(0)`` is the mask height there): the same gradient direction scaled by
``1/H``; ours is the plain soft-IoU loss. It is selected by ``--iou-loss`` INSTEAD of BCE in the release;
here its weight ``loss.mask_iou`` (default 0) adds it to the task's terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from langground.tasks.terms import has_target, resize_masks, zero
from langground.types import Targets

__all__ = ["SoftIoULoss"]


class SoftIoULoss(nn.Module):
    """``(outputs, targets) -> {"loss_mask_iou": ...}`` on ``outputs["pred_masks"]``."""

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
        logits = outputs["pred_masks"].float()
        rows = has_target(targets).to(logits.device)
        if targets.masks is None or not bool(rows.any()):
            return {"loss_mask_iou": zero(logits)}
        target = resize_masks(targets.masks.to(logits.device).float(), logits.shape[-2:])[rows].flatten(1)
        p = torch.sigmoid(logits[rows]).flatten(1)
        inter = (p * target).sum(1)
        union = (p + target - p * target).sum(1).clamp_min(1e-6)
        return {"loss_mask_iou": (1 - inter / union).mean()}
