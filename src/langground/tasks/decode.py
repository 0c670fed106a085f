"""Decoders shared by the tasks' ``predict``: model outputs on the canvas -> original-image pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, masks_to_boxes

from langground.ops.boxes import decode_boxes
from langground.tasks.base import Frame
from langground.types import Prediction


@dataclass
class PostprocessConfig:
    """Thresholds of the output -> prediction mapping (what ``predict`` shows; never the benchmark's
    protocol, which ``config.eval`` fixes).

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


@dataclass
class DecodeContext:
    """What ``Task.predict`` needs besides the outputs: thresholds, answer names, whether to decode masks."""

    config: PostprocessConfig = field(default_factory=PostprocessConfig)
    answer_vocab: Sequence[str] | Mapping[int, str] | None = None
    with_masks: bool = True


def empty_prediction(no_target: float | None = None) -> Prediction:
    return Prediction(
        boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32), no_target=no_target
    )


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


def no_target_prob(out: Mapping[str, Any], i: int) -> float | None:
    return float(torch.sigmoid(out["pred_no_target"].reshape(-1)[i])) if "pred_no_target" in out else None


def decode_mask(out: Mapping[str, Any], i: int, frame: Frame, ctx: DecodeContext) -> Tensor | None:
    """Foreground probability ``(H, W)`` of ``pred_masks[i]`` in original pixels (None: no mask / skipped)."""
    if not ctx.with_masks or "pred_masks" not in out:
        return None
    return unletterbox_map(out["pred_masks"][i], frame.transform, frame.size, frame.canvas).sigmoid()[0]


def decode_box(box: Tensor, score: float, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """One normalized cxcywh canvas box -> ``(1, 4)`` xyxy original pixels and its score."""
    xyxy = decode_boxes(box.reshape(1, 4), (frame.canvas, frame.canvas), frame.transform, frame.size)
    return xyxy.numpy().astype(np.float32), np.array([score], np.float32)


def box_score(out: Mapping[str, Any], i: int) -> float:
    # pred_scores are probabilities already (models apply the sigmoid: LaConvNet scores its best cell).
    return 1.0 if "pred_scores" not in out else float(out["pred_scores"].reshape(-1)[i].clamp(0.0, 1.0))


def mask_box(mask: np.ndarray, prob_map: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """No box head: the predicted region's bounding box, scored by its mean foreground probability."""
    if not mask.any():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    mask_t = torch.from_numpy(mask)
    box = masks_to_boxes(mask_t[None]) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel [x1, x2) extent
    return box.numpy().astype(np.float32), np.array([float(prob_map[mask_t].mean())], np.float32)


def decode_box_set(
    out: Mapping[str, Any], i: int, frame: Frame, cfg: PostprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized REC: the box set's boxes scoring ``>= box_set_threshold``, after NMS, best first."""
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    boxes = decode_boxes(
        out["pred_box_set"][i].reshape(-1, 4), (frame.canvas, frame.canvas), frame.transform, frame.size
    )
    scores = torch.sigmoid(out["pred_box_logits"][i].reshape(-1))
    keep = scores >= cfg.box_set_threshold
    boxes, scores = boxes[keep], scores[keep]
    if boxes.shape[0] == 0:
        return empty
    order = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), cfg.nms_iou)[
        : cfg.max_boxes
    ]
    return boxes[order].numpy().astype(np.float32), scores[order].numpy().astype(np.float32)


def decode_answer(out: Mapping[str, Any], i: int, ctx: DecodeContext) -> tuple[str, float] | None:
    if "pred_answer" not in out:
        return None
    score, index = out["pred_answer"][i].softmax(dim=-1).max(dim=0)
    names = ctx.answer_vocab
    return (str(int(index)) if names is None else str(names[int(index)])), float(score)
