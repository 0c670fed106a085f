"""Model outputs (canvas frame, logits) -> :class:`langground.types.Prediction` in ORIGINAL image pixels.

Evaluation and the :class:`~langground.inference.Grounder` share this one mapping, so a metric measured by
``langground eval`` is a metric of exactly what ``langground predict`` shows.

The inverse letterbox is ``orig = (canvas - pad) / scale`` per sample (see ``langground.types.Batch``).
The canvas size ``S`` is not stored in the outputs but follows from the letterbox itself: the long side
of the original image fills the canvas, so ``S = scale * max(H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, masks_to_boxes

from langground.ops.boxes import decode_boxes
from langground.types import TASKS, Prediction


@dataclass
class PostprocessConfig:
    """Thresholds of the output -> prediction mapping.

    Attributes:
        mask_threshold: probability above which a mask pixel is foreground.
        no_target_threshold: no-target probability above which generalized tasks predict "nothing".
        box_set_threshold: generalized REC keeps boxes of ``pred_box_set`` with ``sigmoid(logit) >=`` this.
        nms_iou: IoU above which the weaker of two kept generalized-REC boxes is suppressed.
        max_boxes: at most this many boxes per generalized-REC prediction (after NMS, best first).
    """

    mask_threshold: float = 0.5
    no_target_threshold: float = 0.5
    box_set_threshold: float = 0.7
    nms_iou: float = 0.5
    max_boxes: int = 100


def canvas_size_of(transform: Sequence[float], image_size: Sequence[int]) -> int:
    """Side ``S`` of the letterbox canvas that ``transform = (scale, pad_x, pad_y)`` maps onto ``image_size``."""
    scale = float(transform[0])
    return int(round(scale * max(int(image_size[0]), int(image_size[1]))))


def unletterbox_map(
    maps: Tensor, transform: Sequence[float], image_size: Sequence[int], canvas_size: int | None = None
) -> Tensor:
    """``(C, h, w)`` maps on the canvas -> ``(C, H, W)`` on the original image (bilinear, float).

    The map is first brought to the canvas resolution, the letterbox padding is cropped away, and the
    remaining content is resized to the original ``(H, W)``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    scale, pad_x, pad_y = (float(v) for v in transform)
    size = canvas_size if canvas_size is not None else canvas_size_of(transform, image_size)
    maps = maps.float()
    if maps.shape[-2:] != (size, size):
        maps = F.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    # Same rounding as the letterbox (data.transforms.letterbox_params) for the resized content.
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    x0, y0 = int(round(pad_x)), int(round(pad_y))
    content = maps[:, y0 : min(size, y0 + new_h), x0 : min(size, x0 + new_w)]
    if content.shape[-2:] != (height, width):
        content = F.interpolate(content[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return content


def _answer_name(answer_vocab: Sequence[str] | Mapping[int, str] | None, index: int) -> str:
    if answer_vocab is None:
        return str(index)
    return str(answer_vocab[index])


def postprocess(
    outputs: Mapping[str, Any],
    transforms: Sequence[Sequence[float]],
    image_sizes: Sequence[Sequence[int]],
    task: str,
    *,
    canvas_size: int | None = None,
    answer_vocab: Sequence[str] | Mapping[int, str] | None = None,
    config: PostprocessConfig | None = None,
    with_masks: bool = True,
) -> list[Prediction]:
    """Turn a batch of model outputs into one :class:`Prediction` per sample, in original pixels.

    Args:
        outputs: the model's dict (``pred_boxes``, ``pred_scores``, ``pred_masks``, ``pred_no_target``,
            ``pred_answer``, ``pred_box_set``/``pred_box_logits``; any subset).
        transforms: per sample ``(scale, pad_x, pad_y)`` with ``orig = (canvas - pad) / scale``.
        image_sizes: per sample ``(H, W)`` of the original image.
        task: ``rec``, ``res``, ``gref``, ``gres`` or ``vqa``; decides which boxes a prediction carries:
            ``rec``/``res``: the single ``pred_boxes`` box (``res`` without a box head: the mask's bounding box);
            ``gref``: the ``pred_box_set`` boxes scoring ``>= box_set_threshold`` after NMS, none when the
            no-target probability is ``>= no_target_threshold``; ``gres``: the mask's bounding box, mask emptied
            for no-target; ``vqa``: no boxes, ``answer``/``answer_score`` from ``pred_answer``.
        canvas_size: side of the model input; inferred from the letterbox when omitted.
        answer_vocab: answer id -> string for VQA (ids are printed as strings without it).
        config: thresholds (defaults: :class:`PostprocessConfig`).
        with_masks: decode ``pred_masks`` when present (evaluation of box tasks may skip the cost).

    Returns:
        ``len(transforms)`` predictions. ``scores`` are probabilities: ``pred_scores`` as the model gives
        them (already in [0, 1]; ``rec``), the sigmoid of the kept ``pred_box_logits`` (``gref``), the mean
        foreground probability inside the mask (mask tasks without a score head).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    cfg = config or PostprocessConfig()
    batch = len(transforms)
    if len(image_sizes) != batch:
        raise ValueError(f"got {batch} transforms but {len(image_sizes)} image sizes")
    out = {k: (v.detach().float().cpu() if isinstance(v, Tensor) else v) for k, v in outputs.items()}

    no_target = torch.sigmoid(out["pred_no_target"].reshape(batch)) if "pred_no_target" in out else None
    # pred_scores are probabilities already (models apply the sigmoid: LaConvNet scores its best cell).
    box_scores = out["pred_scores"].reshape(batch).clamp(0.0, 1.0) if "pred_scores" in out else None
    answer_probs = out["pred_answer"].softmax(dim=-1) if "pred_answer" in out else None
    masks = out.get("pred_masks") if with_masks else None

    predictions = []
    for i in range(batch):
        size = tuple(int(s) for s in image_sizes[i])
        canvas = canvas_size if canvas_size is not None else canvas_size_of(transforms[i], size)
        nt = None if no_target is None else float(no_target[i])
        pred = Prediction(boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32), no_target=nt)

        prob_map = None
        if masks is not None:
            prob_map = unletterbox_map(masks[i], transforms[i], size, canvas).sigmoid()[0]
            mask = prob_map >= cfg.mask_threshold
            if task == "gres" and nt is not None and nt >= cfg.no_target_threshold:
                mask = torch.zeros_like(mask)
            pred.mask = mask.numpy()

        if task in ("rec", "res") and "pred_boxes" in out:
            box = decode_boxes(out["pred_boxes"][i].reshape(1, 4), (canvas, canvas), transforms[i], size)
            score = 1.0 if box_scores is None else float(box_scores[i])
            pred.boxes, pred.scores = box.numpy().astype(np.float32), np.array([score], np.float32)
        elif task == "gref" and "pred_box_set" in out:
            pred.boxes, pred.scores = _box_set(out, i, canvas, transforms[i], size, nt, cfg)
        elif task in ("res", "gres") and pred.mask is not None and pred.mask.any():
            # No box head: the predicted region's bounding box, scored by its mean foreground probability.
            mask_t = torch.from_numpy(pred.mask)
            box = masks_to_boxes(mask_t[None]) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel [x1, x2) extent
            score = float(prob_map[mask_t].mean()) if prob_map is not None else 1.0
            pred.boxes, pred.scores = box.numpy().astype(np.float32), np.array([score], np.float32)

        if answer_probs is not None:
            score, index = answer_probs[i].max(dim=0)
            pred.answer, pred.answer_score = _answer_name(answer_vocab, int(index)), float(score)
        predictions.append(pred)
    return predictions


def _box_set(
    out: Mapping[str, Tensor],
    i: int,
    canvas: int,
    transform: Sequence[float],
    size: tuple[int, int],
    no_target: float | None,
    cfg: PostprocessConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized REC: threshold the box set's scores, NMS, best first; nothing for a no-target expression."""
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    if no_target is not None and no_target >= cfg.no_target_threshold:
        return empty
    boxes = decode_boxes(out["pred_box_set"][i].reshape(-1, 4), (canvas, canvas), transform, size)
    scores = torch.sigmoid(out["pred_box_logits"][i].reshape(-1))
    keep = scores >= cfg.box_set_threshold
    boxes, scores = boxes[keep], scores[keep]
    if boxes.shape[0] == 0:
        return empty
    order = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), cfg.nms_iou)[
        : cfg.max_boxes
    ]
    return boxes[order].numpy().astype(np.float32), scores[order].numpy().astype(np.float32)
