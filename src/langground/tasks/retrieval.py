"""Image-text retrieval: an image embedding and a text embedding in one space, matched by cosine
similarity (SLAN's image-text contrastive objective; R@1/5/10 both ways over a split's gallery).

Models return ``pred_image_embed`` ``(B_img, D)`` and ``pred_text_embed`` ``(N, D)``, L2-normalised, and
optionally ``logit_scale`` (a scalar: the inverse temperature). Text ``n`` matches image
``targets.image_index[n]`` (or image ``n`` without an index). Use ``data.group_by_image`` so that an
image appears once per batch: otherwise two rows of one image count as each other's negatives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from langground.ops import distributed as dist_ops
from langground.tasks import decode as D
from langground.tasks.base import Frame, Task
from langground.tasks.registry import register_task
from langground.types import GroundingRecord, Prediction, Targets

DEFAULT_LOGIT_SCALE = 1 / 0.07  # CLIP / ALBEF's initial temperature


def contrastive_terms(outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
    """Symmetric InfoNCE over the whole distributed batch: every rank's images and texts are negatives.

    text->image: cross-entropy to the text's image; image->text: cross-entropy to the uniform
    distribution over the image's texts (an image may have several in a batch).
    """
    images = outputs["pred_image_embed"].float()
    texts = outputs["pred_text_embed"].float()
    index = targets.image_index
    index = torch.arange(texts.shape[0], device=texts.device) if index is None else index.to(texts.device)
    # Ranks may hold different numbers of images and of texts (whole images per batch): ragged gathers,
    # and this rank's images start at `offset` in the gathered batch.
    counts = dist_ops.row_counts(images)
    offset = sum(counts[: dist_ops.rank()])
    all_images = dist_ops.all_gather_ragged(images, counts)
    text_counts = dist_ops.row_counts(texts)
    all_index = dist_ops.all_gather_ragged(index + offset, text_counts)
    all_texts = dist_ops.all_gather_ragged(texts, text_counts)
    scale = outputs.get("logit_scale")
    scale = torch.as_tensor(DEFAULT_LOGIT_SCALE if scale is None else scale, device=texts.device).float()
    logits = scale * texts @ all_images.t()  # this rank's texts vs every image: (N, B_all)
    t2i = F.cross_entropy(logits, index + offset)
    positives = (
        all_index[None, :] == torch.arange(offset, offset + images.shape[0], device=texts.device)[:, None]
    ).float()
    i2t_logits = scale * images @ all_texts.t()  # (B, N_all)
    i2t = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(i2t_logits, dim=1)).sum(1).mean()
    return {"loss_itc": (t2i + i2t) / 2}


@register_task
class Retrieval(Task):
    name = "retrieval"
    description = "image-text matching (R@K over a gallery)"
    heads = frozenset({"embedding"})
    metrics = ("retrieval",)
    primary_metric = "retrieval/rsum"
    loss_weights = {"itc": 1.0}
    record_unit = "caption"

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        return contrastive_terms(outputs, targets)

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: D.DecodeContext) -> Prediction:
        return D.empty_prediction()  # nothing to draw: retrieval is scored over the gallery

    def output_scorer(self, metrics_config: Any) -> RetrievalScorer:
        return RetrievalScorer(metrics_config)


class RetrievalScorer:
    """Collects a split's embeddings (texts by sample, images once per image id) and scores R@K over the
    gallery of its distinct images. ``state_dict``/``merge`` concatenate ranks' shards exactly."""

    def __init__(self, metrics_config: Any = None) -> None:
        self.metrics_config = metrics_config
        self.texts: dict[str, tuple[Any, np.ndarray]] = {}  # sample_id -> (image_id, embedding)
        self.images: dict[Any, np.ndarray] = {}  # image_id -> embedding

    def update(
        self, records: Sequence[GroundingRecord], outputs: Mapping[str, Any], image_index: Tensor | None
    ) -> None:
        texts = outputs["pred_text_embed"].detach().float().cpu().numpy()
        images = outputs["pred_image_embed"].detach().float().cpu().numpy()
        rows = range(len(records)) if image_index is None else image_index.tolist()
        for n, (record, row) in enumerate(zip(records, rows, strict=True)):
            self.texts[str(record.sample_id)] = (record.image_id, texts[n])
            self.images.setdefault(record.image_id, images[row])

    def state_dict(self) -> dict[str, Any]:
        return {"texts": dict(self.texts), "images": dict(self.images)}

    def merge(self, state: Mapping[str, Any]) -> None:
        self.texts.update(state["texts"])
        for k, v in state["images"].items():
            self.images.setdefault(k, v)

    def similarity(self) -> tuple[np.ndarray, list[int]]:
        """``(T, I)`` cosine similarities (texts by sample id, images by image id) and each text's image."""
        image_ids = sorted(self.images, key=str)
        position = {k: j for j, k in enumerate(image_ids)}
        sample_ids = sorted(self.texts)
        text_emb = np.stack([self.texts[s][1] for s in sample_ids])
        image_emb = np.stack([self.images[k] for k in image_ids])
        return text_emb @ image_emb.T, [position[self.texts[s][0]] for s in sample_ids]

    def compute(self) -> dict[str, float]:
        from langground.engine.metrics import build_metric

        metric = build_metric("retrieval", self.metrics_config)
        if self.texts:
            similarity, text_image = self.similarity()
            metric.update(similarity, text_image)
        return metric.compute()
