"""Multi-task grounding: one model answers REC and RES in one forward pass (the Referring Transformer's
"one-step" multi-task supervision, Li & Sigal 2021).

``recres``: heads ``box`` and ``mask``; the model returns ``pred_boxes`` ``(N, 4)`` and ``pred_masks``
``(N, 1, h, w)`` together; decoding gives each expression's box (the box head's, not the mask's bounding
box) and its mask; scored with the ``rec`` and ``res`` metric families on the same predictions.

Loss (the lecture's "Multi-task Supervision"): ``L = L_det + L_seg`` with
``L_det = λ_giou·GIoU + λ_L1·L1`` and ``L_seg = λ_focal·focal + λ_dice·dice``. Each group is computed when
its output is present, so per-layer ``aux_outputs`` that carry boxes only (DETR-style decoders; RefTR's
released code skips intermediate masks as too costly) are scored on ``L_det``. Setting a group's weights
to 0 trains the same model REC-only or RES-only (the ablation of the multi-task table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from langground.tasks import decode as D
from langground.tasks import terms
from langground.tasks.base import Frame, Task
from langground.tasks.registry import register_task
from langground.types import Prediction, Targets

#: RefTR's released defaults (main_vg.py): giou 1, bbox (L1) 1, mask (focal) 1, dice 1; the lecture
#: names the λs without values.
#: ``obj`` weighs a dense box head's objectness (LaConvNet's cells), REC's weight; RefTR has none.
RECRES_WEIGHTS = {"giou": 1.0, "l1": 1.0, "mask_focal": 1.0, "mask_dice": 1.0, "obj": 1.0}


def focal_mask_terms(
    outputs: Mapping[str, Any], targets: Targets, task: str, alpha: float = 0.25, gamma: float = 2.0
) -> dict[str, Tensor]:
    """Sigmoid focal loss (torchvision; RetinaNet's alpha 0.25, gamma 2, as DETR's mask loss) averaged
    over pixels and expressions, and Dice, between ``pred_masks`` logits and the canvas masks resized to
    the head's resolution; target rows only."""
    logits = outputs["pred_masks"].float()
    if targets.masks is None:
        raise ValueError(f"task {task!r} needs Targets.masks (N, 1, H, W); got None")
    rows = terms.has_target(targets).to(logits.device)
    if not bool(rows.any()):
        return {"loss_mask_focal": terms.zero(logits), "loss_mask_dice": terms.zero(logits)}
    target = terms.resize_masks(targets.masks.to(logits.device).float(), logits.shape[-2:])
    logits, target = logits[rows], target[rows]
    focal = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
    return {"loss_mask_focal": focal, "loss_mask_dice": terms.dice_loss(logits, target)}


@register_task
class RECRES(Task):
    """REC + RES from one model in one forward: a box and a mask per expression."""

    name = "recres"
    description = "a box and a mask per expression, from one forward pass"
    heads = frozenset({"box", "mask"})
    metrics = ("rec", "res")
    primary_metric = "rec/prec@0.5"
    loss_weights = RECRES_WEIGHTS
    loss_options = {"center_radius": 1.5, "objectness": "softmax", "focal_alpha": 0.25, "focal_gamma": 2.0}
    needs_masks = True
    decodes_masks = True

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        if "pred_boxes" not in outputs and "pred_masks" not in outputs:
            raise ValueError("task 'recres' needs pred_boxes and/or pred_masks in the outputs")
        out: dict[str, Tensor] = {}
        if "pred_boxes" in outputs:  # L_det
            out.update(terms.box_terms(outputs, targets, options["center_radius"], options["objectness"]))
        if "pred_masks" in outputs:  # L_seg
            out.update(
                focal_mask_terms(outputs, targets, self.name, options["focal_alpha"], options["focal_gamma"])
            )
        return out

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        pred = D.empty_prediction(D.no_target_prob(outputs, i))
        prob = D.decode_mask(outputs, i, frame, ctx)
        if prob is not None:
            pred.mask = (prob >= ctx.config.mask_threshold).numpy()
        if "pred_boxes" in outputs:  # the box head's box: REC is scored on it, not on the mask's extent
            pred.boxes, pred.scores = D.decode_box(outputs["pred_boxes"][i], D.box_score(outputs, i), frame)
        elif pred.mask is not None and prob is not None:
            pred.boxes, pred.scores = D.mask_box(pred.mask, prob)
        return pred
