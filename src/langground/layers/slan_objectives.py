"""SLAN's pre-training objectives (Sec. 3.3, Eq. 3-9) as pure functions and one stateful loss module.

- :class:`QueueContrastive` (Eq. 5-6): ITC against every rank's current images / texts plus FIFO queues
  of earlier ones (buffers, so the trainer checkpoints them per rank; all ranks enqueue the same
  gathered rows, so every rank holds the same queues).
- :func:`hard_negatives` (Eq. 4's negatives, ALBEF's in-batch hard-negative sampling): per text a
  negative image, per image a negative text, drawn from the gathered batch with probability
  ``softmax(sim)`` over the non-positives (``mode="hardest"``: the most similar non-positive).
- :func:`mask_tokens` (Eq. 7): 15% of the real word tokens, BERT / ALBEF's 80/10/10 replacement.
- :func:`progressive_regression_loss` (Eq. 3): L1 + GIoU between the detector's regions and the mean
  of their ``L`` adapted versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from langground.ops import distributed as dist_ops


def gathered_index(texts: Tensor, images: Tensor, image_index: Tensor | None) -> tuple[Tensor, Tensor, int]:
    """``(this rank's texts' global image index (N,), every rank's texts' (N_all,), this rank's offset)``."""
    index = (
        torch.arange(texts.shape[0], device=texts.device)
        if image_index is None
        else image_index.to(texts.device)
    )
    counts = dist_ops.row_counts(images)
    offset = sum(counts[: dist_ops.rank()])
    return index + offset, dist_ops.all_gather_ragged(index + offset), offset


class QueueContrastive(nn.Module):
    """ITC with image and text queues (Eq. 5-6). Reads ``pred_image_embed`` / ``pred_text_embed`` (L2-normed)
    and ``logit_scale`` (1 / tau) from the outputs; writes ``loss_itc`` (the retrieval task's in-batch
    term of the same name is replaced). Queue rows newest first; ``filled_*`` count the rows ever queued."""

    def __init__(self, dim: int, queue_size: int = 256):
        super().__init__()
        self.register_buffer("image_queue", torch.zeros(queue_size, dim))
        self.register_buffer("text_queue", torch.zeros(queue_size, dim))
        self.register_buffer("filled_images", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled_texts", torch.zeros((), dtype=torch.long))

    def forward(self, outputs: Mapping[str, Any], targets: Any) -> dict[str, Tensor]:
        images, texts = outputs["pred_image_embed"].float(), outputs["pred_text_embed"].float()
        index, all_index, offset = gathered_index(texts, images, getattr(targets, "image_index", None))
        all_images = dist_ops.all_gather_ragged(images)
        all_texts = dist_ops.all_gather_ragged(texts)
        ni = int(min(int(self.filled_images), self.image_queue.shape[0]))
        nt = int(min(int(self.filled_texts), self.text_queue.shape[0]))
        scale = torch.as_tensor(outputs.get("logit_scale", 1 / 0.07), device=texts.device).float()
        # Eq. 5 p_t2i: a text against every current image and the image queue
        t2i = scale * texts @ torch.cat([all_images, self.image_queue[:ni]]).t()
        loss_t2i = F.cross_entropy(t2i, index)
        # Eq. 5 p_i2t: an image against every current text and the text queue; its captions are positives
        i2t = scale * images @ torch.cat([all_texts, self.text_queue[:nt]]).t()
        own = torch.arange(offset, offset + images.shape[0], device=texts.device)
        pos = (all_index[None, :] == own[:, None]).float()
        pos = torch.cat([pos, pos.new_zeros(pos.shape[0], nt)], 1)
        loss_i2t = -(pos / pos.sum(1, keepdim=True).clamp_min(1) * i2t.log_softmax(1)).sum(1).mean()
        if self.training:
            self.enqueue(all_images.detach(), all_texts.detach())
        return {"loss_itc": (loss_t2i + loss_i2t) / 2}  # Eq. 6, halved as ALBEF

    @torch.no_grad()
    def enqueue(self, images: Tensor, texts: Tensor) -> None:
        q = self.image_queue.shape[0]
        self.image_queue.copy_(torch.cat([images.to(self.image_queue), self.image_queue])[:q])
        self.text_queue.copy_(torch.cat([texts.to(self.text_queue), self.text_queue])[:q])
        self.filled_images.add_(images.shape[0])
        self.filled_texts.add_(texts.shape[0])


@torch.no_grad()
def hard_negatives(
    texts: Tensor,
    images: Tensor,
    all_texts: Tensor,
    all_images: Tensor,
    index: Tensor,
    all_index: Tensor,
    offset: int,
    scale: float | Tensor = 1.0,
    mode: str = "sample",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(negative image per local text (N,), negative text per local image (B,))``, as indices into the
    gathered images / texts. Positives (a text's own image; an image's own captions) have probability 0;
    when an image's every text is its own caption, its own caption is returned (no negative exists)."""
    if mode not in ("sample", "hardest"):
        raise ValueError(f"itm_negatives={mode!r}: expected 'sample' or 'hardest'")
    cols = torch.arange(all_images.shape[0], device=texts.device)
    t2i = (scale * texts.float() @ all_images.float().t()).masked_fill(
        index[:, None] == cols[None], float("-inf")
    )
    own = torch.arange(offset, offset + images.shape[0], device=texts.device)
    i2t = (scale * images.float() @ all_texts.float().t()).masked_fill(
        all_index[None] == own[:, None], float("-inf")
    )

    def pick(logits: Tensor) -> Tensor:
        none = torch.isinf(logits).all(1)
        logits = torch.where(none[:, None], torch.zeros_like(logits), logits)
        if mode == "hardest":
            return logits.argmax(1)
        return torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)

    return pick(t2i), pick(i2t)


def mask_tokens(
    ids: Tensor,
    real: Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    first_word: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 7's masking: ``(input ids, labels (-100 where not predicted), selected (bool))``.

    ``prob`` of the real tokens (``real`` True; never padding) are selected; of those 80% become
    ``mask_id``, 10% a random word id in ``[first_word, vocab_size)``, 10% stay (BERT / ALBEF).
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    selected = (u < prob) & real.bool()
    how = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_ids = torch.randint(
        first_word, max(vocab_size, first_word + 1), ids.shape, generator=generator, device=ids.device
    )
    out = torch.where(selected & (how < 0.8), torch.full_like(ids, mask_id), ids)
    out = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, out)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    return out, labels, selected


def progressive_regression_loss(
    detector_boxes: Tensor,
    adapted: list[Tensor],
    keep: Tensor,
    detach_target: bool = True,
    sizes: bool = True,
) -> dict[str, Tensor]:
    """Eq. 3: ``g_bar`` = mean of the ``L`` adapted boxes; mean over kept regions of L1 and GIoU between
    ``detector_boxes`` ``(P, T, 4)`` and ``g_bar`` (normalised cxcywh). ``g_bar`` is a target (no gradient)
    unless ``detach_target=False``. ``sizes=False`` regresses the centres only (ours; see docs/fidelity.md:
    with learnable p_w, p_h the detector chasing ``p * w`` every step shrinks or grows boxes without bound)."""
    target = torch.stack(adapted).mean(0)
    if not sizes:  # centres only: the target keeps the detector's own w, h (no compounding size drift)
        target = torch.cat([target[..., :2], detector_boxes[..., 2:].detach()], -1)
    if detach_target:
        target = target.detach()
    k = keep.float()
    count = k.sum().clamp_min(1.0)
    l1 = ((detector_boxes - target).abs().sum(-1) * k).sum() / count
    giou = generalized_box_iou_loss(
        box_convert(detector_boxes, "cxcywh", "xyxy").reshape(-1, 4),
        box_convert(target, "cxcywh", "xyxy").reshape(-1, 4),
        reduction="none",
    ).reshape(k.shape)
    return {"loss_reg_l1": l1, "loss_reg_giou": (giou * k).sum() / count}


__all__ = [
    "QueueContrastive",
    "gathered_index",
    "hard_negatives",
    "mask_tokens",
    "progressive_regression_loss",
]
