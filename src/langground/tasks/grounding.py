"""The four grounding tasks of RefCOCO-style benchmarks: REC and RES, and their generalized forms on
gRefCOCO (any number of referents, possibly none)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from langground.tasks import decode as D
from langground.tasks import terms
from langground.tasks.base import Frame, Task
from langground.tasks.registry import register_task
from langground.types import Prediction, Targets

_BOX_WEIGHTS = {"giou": 2.0, "l1": 5.0, "obj": 1.0}
_MASK_WEIGHTS = {"mask_bce": 1.0, "mask_dice": 1.0}


def _with_mask(
    out: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext
) -> tuple[Prediction, Tensor | None]:
    """The parts every grounding prediction shares: the no-target probability and the decoded mask."""
    pred = D.empty_prediction(D.no_target_prob(out, i))
    prob = D.decode_mask(out, i, frame, ctx)
    if prob is not None:
        pred.mask = (prob >= ctx.config.mask_threshold).numpy()
    return pred, prob


def _one_region(out: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
    """REC / RES: the box head's box, else (a mask-only model) the predicted mask's bounding box."""
    pred, prob = _with_mask(out, i, frame, ctx)
    if "pred_boxes" in out:
        pred.boxes, pred.scores = D.decode_box(out["pred_boxes"][i], D.box_score(out, i), frame)
    elif pred.mask is not None and prob is not None:
        pred.boxes, pred.scores = D.mask_box(pred.mask, prob)
    return pred


@register_task
class REC(Task):
    """Referring expression comprehension: one box per expression (RefCOCO/+/g, ReferIt, Flickr30k)."""

    name = "rec"
    description = "one box per expression"
    heads = frozenset({"box"})
    metrics = ("rec",)
    primary_metric = "rec/prec@0.5"
    loss_weights = _BOX_WEIGHTS
    # One referent per expression: the cells of a dense head compete for it (softmax).
    loss_options = {"center_radius": 1.5, "objectness": "softmax"}

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return terms.box_terms(outputs, targets, options["center_radius"], options["objectness"])

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        return _one_region(outputs, i, frame, ctx)


@register_task
class RES(Task):
    """Referring expression segmentation: one mask per expression (also scored on its box)."""

    name = "res"
    description = "one mask per expression"
    heads = frozenset({"mask"})
    metrics = ("res", "rec")  # a mask model is also scored on boxes: its mask's bounding box
    derived_metrics = ("rec",)
    primary_metric = "res/oiou"
    loss_weights = _MASK_WEIGHTS
    needs_masks = True
    decodes_masks = True

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return terms.mask_terms(outputs, targets, self.name)

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        return _one_region(outputs, i, frame, ctx)


@register_task
class GREC(Task):
    """Generalized REC (gRefCOCO): every referent's box, none for a no-target expression."""

    name = "gref"
    description = "any number of boxes per expression, possibly none"
    heads = frozenset({"box", "no_target"})
    metrics = ("gref",)
    primary_metric = "grec/prec@f1"
    loss_weights = {**_BOX_WEIGHTS, "no_target": 1.0}
    loss_options = {"center_radius": 1.5, "objectness": "bce"}  # several referents: per-cell BCE

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        out = terms.box_terms(outputs, targets, options["center_radius"], options["objectness"])
        return {**out, **terms.no_target_terms(outputs, targets)}

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        pred, _ = _with_mask(outputs, i, frame, ctx)
        says_none = pred.no_target is not None and pred.no_target >= ctx.config.no_target_threshold
        if "pred_box_set" in outputs and not says_none:
            pred.boxes, pred.scores = D.decode_box_set(outputs, i, frame, ctx.config)
        return pred


@register_task
class GRES(Task):
    """Generalized RES (gRefCOCO): the union mask of every referent, empty for a no-target expression."""

    name = "gres"
    description = "one mask of any number of referents, possibly empty"
    heads = frozenset({"mask", "no_target"})
    metrics = ("gres",)
    primary_metric = "gres/ciou"
    loss_weights = {**_MASK_WEIGHTS, "no_target": 1.0}
    needs_masks = True
    decodes_masks = True

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return {**terms.mask_terms(outputs, targets, self.name), **terms.no_target_terms(outputs, targets)}

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        pred, prob = _with_mask(outputs, i, frame, ctx)
        if (
            pred.mask is not None
            and pred.no_target is not None
            and pred.no_target >= ctx.config.no_target_threshold
        ):
            pred.mask = np.zeros_like(pred.mask)
        if pred.mask is not None and prob is not None:
            pred.boxes, pred.scores = D.mask_box(pred.mask, prob)
        return pred
