"""Toy models of the contract's new parts, shared by tests and the 2-process workers they launch:
a dual encoder for retrieval (vision that does not read the text) and a gated REC model whose criterion
holds state (a batch-statistics EMA all-reduced over ranks, and a momentum-queue-like feature queue)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground import registry
from langground.models.base import GroundingModel
from langground.ops import distributed as dist_ops
from langground.types import TextBatch


class ToyDualEncoder(GroundingModel):
    """Image -> conv, mean-pool, linear; text -> mean word embedding, linear; both L2-normalised."""

    supported_tasks = ("retrieval",)

    def __init__(
        self, task: str, input_size: int, max_text_length: int, vocab_size: int, dim: int = 32, **_: Any
    ):
        super().__init__(task, input_size, max_text_length, vocab_size, model_config={"dim": dim})
        self.vision = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.Conv2d(16, dim, 2, stride=2))
        self.embed = nn.Embedding(vocab_size, dim)
        self.text_proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.images_encoded = 0  # how many images the vision tower has seen (image sharing)

    def encode_images(self, images: Tensor) -> Tensor:
        self.images_encoded += images.shape[0]
        return F.normalize(self.vision(images).mean((2, 3)), dim=-1)

    def encode_texts(self, text: TextBatch) -> Tensor:
        mask = text.attention_mask.float()[..., None]
        words = (self.embed(text.token_ids) * mask).sum(1) / mask.sum(1)
        return F.normalize(self.text_proj(words), dim=-1)

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        return {
            "pred_image_embed": self.encode_images(images),  # once per distinct image of the batch
            "pred_text_embed": self.encode_texts(text),
            "logit_scale": self.logit_scale.exp(),
        }


class GateUsage(nn.Module):
    """A LADS-like batch-statistics term and an ITC-queue-like state, both over the whole distributed batch.

    ``loss_usage = sum_g (mean gate_g over all ranks' samples - 0.5)^2``; buffers: an EMA of that usage and
    a FIFO queue of every rank's features (gathered), so every rank holds the same state.
    """

    def __init__(self, gates: int, dim: int, queue: int = 16):
        super().__init__()
        self.register_buffer("usage_ema", torch.zeros(gates))
        self.register_buffer("queue", torch.zeros(queue, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def forward(self, outputs: dict[str, Any], targets: Any) -> dict[str, Tensor]:
        usage = dist_ops.all_reduce_mean(outputs["gates"].float().mean(0))
        if self.training:
            with torch.no_grad():
                self.usage_ema.mul_(0.5).add_(0.5 * usage.detach())
                rows = dist_ops.all_gather_cat(outputs["features"].detach().float())
                self.queue.copy_(torch.cat([rows, self.queue])[: self.queue.shape[0]])
                self.filled.add_(rows.shape[0])
        return {"loss_usage": ((usage - 0.5) ** 2).sum()}


class ToyGatedREC(GroundingModel):
    supported_tasks = ("rec",)
    loss_weights = {"usage": 1.0}

    def __init__(
        self, task: str, input_size: int, max_text_length: int, vocab_size: int, gates: int = 4, **_: Any
    ):
        super().__init__(task, input_size, max_text_length, vocab_size, model_config={"gates": gates})
        self.vision = nn.Conv2d(3, 8, 8, stride=8)
        self.embed = nn.Embedding(vocab_size, 8)
        self.gate = nn.Linear(8, gates)
        self.box = nn.Linear(16 + gates, 4)
        self.gates = gates

    def build_loss_modules(self) -> dict[str, nn.Module]:
        return {"usage": GateUsage(self.gates, 16)}

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        mask = text.attention_mask.float()[..., None]
        words = (self.embed(text.token_ids) * mask).sum(1) / mask.sum(1)
        features = torch.cat([self.vision(text.images_per_text(images)).mean((2, 3)), words], dim=1)
        gates = torch.sigmoid(self.gate(words))
        return {
            "pred_boxes": torch.sigmoid(self.box(torch.cat([features, gates], dim=1))),
            "gates": gates,
            "features": features,
        }


class ToyPhraseGrounder(GroundingModel):
    """Phrase queries: the mean of a phrase's word embeddings, with the caption's image features, -> a box."""

    supported_tasks = ("phrase",)

    def __init__(self, task: str, input_size: int, max_text_length: int, vocab_size: int, **_: Any):
        super().__init__(task, input_size, max_text_length, vocab_size, model_config={})
        self.vision = nn.Sequential(
            nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.embed = nn.Embedding(vocab_size, 32)
        self.box = nn.Sequential(nn.Linear(32 + 64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        phrases = queries["phrases"]
        words = self.embed(text.token_ids)  # (N, L, D)
        columns = torch.arange(words.shape[1], device=words.device)
        start, end = phrases.spans[..., :1], phrases.spans[..., 1:]
        inside = ((columns >= start) & (columns < end)).float()  # (N, Q, L)
        query = inside @ words / inside.sum(-1, keepdim=True).clamp_min(1)
        pixels = (
            self.vision(images).index_select(0, _rows(text, images))[:, None].expand(-1, query.shape[1], -1)
        )
        return {
            "pred_boxes": torch.sigmoid(self.box(torch.cat([query, pixels], dim=-1))),
            "query_mask": phrases.mask,
        }


def _rows(text: TextBatch, images: Tensor) -> Tensor:
    if text.image_index is None:
        return torch.arange(images.shape[0], device=images.device)
    return text.image_index.to(images.device)


def toy_phrase_grounder(**kwargs: Any) -> ToyPhraseGrounder:
    return ToyPhraseGrounder(**kwargs)


def toy_dual_encoder(**kwargs: Any) -> ToyDualEncoder:
    return ToyDualEncoder(**kwargs)


def toy_gated_rec(**kwargs: Any) -> ToyGatedREC:
    return ToyGatedREC(**kwargs)


def register_toy_models() -> None:
    for fn in (toy_dual_encoder, toy_gated_rec, toy_phrase_grounder):
        if not registry.is_model(fn.__name__):
            registry.register_model(fn)


class registered_toy_models:  # noqa: N801  (a context manager used like a function)
    """Register the toy models for a test and remove them after, so no other test sees them."""

    def __enter__(self) -> None:
        register_toy_models()

    def __exit__(self, *exc: Any) -> None:
        for fn in (toy_dual_encoder, toy_gated_rec, toy_phrase_grounder):
            registry._MODELS.pop(fn.__name__, None)
