"""SLAN (Zhai et al., 2023): Self-Locator Aided Network, image-text pre-training without boxes.

Unimodal encoders (Sec. 3.1): text -> word features with [CLS]; vision -> map ``V``. Self-locator (3.2):
a DETR-style detector gives ``N`` regions (embedding, box, saliency); the region filter keeps the
salient ones (3.2.2); a vision decoder gives ``F_1..F_L`` (3.2.1); ``L`` region-adaptor levels move the
regions with text guidance (3.2.3, Algorithm 1). Objectives (3.3): ITC with queues (a loss module), ITM
with hard negatives, MLM, and the progressive regression loss (Eq. 3), all model-owned.

Tasks: ``retrieval`` (pre-training; ITC embeddings rank, :meth:`SLAN.itm_scores` re-ranks), ``rec`` and
``phrase`` (a box per expression / phrase: the adapted region most similar to it in the ITC space;
zero-shot from a retrieval checkpoint, or fine-tuned with the task's box loss).

==========  ===================  =================  =====  =======  ======  =====
variant     vision               text               dim    queries  levels  input
==========  ===================  =================  =====  =======  ======  =====
slan_r50    ResNet-50 (timm)     MiniLM-L6          256    100      3       224
slan_vit_b  ViT-B/16 (timm)      MiniLM-L6          256    100      3       224
slan_t      tiny ResNet (ours)   2-layer scratch    128    25       3       128
==========  ===================  =================  =====  =======  ======  =====

Sources of every choice: docs/fidelity.md ("SLAN"); usage: docs/slan.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.region_adaptor import RegionAdaptor
from langground.layers.region_filter import filter_regions
from langground.layers.self_locator import RegionDetector, VisionDecoder
from langground.layers.slan_objectives import (
    QueueContrastive,
    gathered_index,
    hard_negatives,
    mask_tokens,
    progressive_regression_loss,
)
from langground.models.base import GroundingModel
from langground.models.slan_parts import MiniLMWords, ScratchTextEncoder, build_vision, world
from langground.registry import register_model
from langground.text.tokenizer import tokenize
from langground.types import PhraseQueries, TextBatch


@dataclass
class SLANConfig:
    task: str = "retrieval"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int = 224
    max_text_length: int = 40
    backbone: str = "resnet50"  # timm name (resnet50, vit_base_patch16_224) | "tiny" (ours)
    tiny_widths: tuple[int, ...] = (32, 64, 96, 128)
    backbone_weights: str | None = None
    text_encoder: str = "minilm"  # "minilm" (BERT-family, offline) | "scratch"
    freeze_text_encoder: bool = False
    text_layers: int = 2
    dim: int = 256
    heads: int = 8
    ffn: int = 1024
    dropout: float = 0.1
    queries: int = 100  # DETR's N
    detector_layers: int = 6
    top_k: int | None = 10  # region filter T (None: keep all N)
    threshold: float | None = 0.5  # region filter h (None: no threshold)
    adaptor_levels: int = 3  # L; 0 removes the adaptor (Table 5's "0" rows)
    ratios: tuple[float, ...] = (1.0, 0.5, 0.25)  # r_i
    neighbour_k: int = 3  # K
    sim_temperature: float = 0.1  # softmax temperature of s_j over the K^2 cells (not stated)
    queue_size: int = 256
    temperature: float = 0.07  # tau's initial value (ALBEF's)
    learn_temperature: bool = True
    itm_negatives: str = "sample"  # "sample" (ALBEF) | "hardest"
    mlm_prob: float = 0.15
    reg_detach_target: bool = True
    reg_sizes: bool = True  # Eq. 3 on all four coordinates (False: centres only, ours)
    soft_box_temperature: float = 0.1  # rec / phrase training: boxes mixed by softmax(score / t)

    def __post_init__(self) -> None:
        self.tiny_widths = tuple(int(w) for w in self.tiny_widths)
        self.ratios = tuple(float(r) for r in self.ratios)
        if self.text_encoder not in ("minilm", "scratch"):
            raise LanggroundError(f"text_encoder must be 'minilm' or 'scratch', got {self.text_encoder!r}")
        if not 0 <= self.adaptor_levels <= len(self.ratios):
            raise LanggroundError(
                f"adaptor_levels {self.adaptor_levels} must lie in [0, {len(self.ratios)}] (ratios)"
            )
        if self.itm_negatives not in ("sample", "hardest"):
            raise LanggroundError(f"itm_negatives must be 'sample' or 'hardest', got {self.itm_negatives!r}")
        if self.dim % self.heads or self.dim % 4:
            raise LanggroundError(f"dim {self.dim} must be a multiple of heads ({self.heads}) and of 4")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SLAN(GroundingModel):
    supported_tasks = ("retrieval", "rec", "phrase")
    size_divisor = 32
    loss_weights = {"itm": 1.0, "mlm": 1.0, "reg_l1": 1.0, "reg_giou": 1.0}  # Eq. 8-9: unit weights

    def __init__(self, cfg: SLANConfig):
        super().__init__(
            cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, cfg.num_answers, cfg.to_dict()
        )
        self.config = cfg
        d = cfg.dim
        if cfg.text_encoder == "minilm":
            self.text = MiniLMWords(d, cfg.freeze_text_encoder)
        else:
            self.text = ScratchTextEncoder(
                cfg.vocab_size, d, cfg.text_layers, cfg.heads, cfg.ffn, cfg.max_text_length, cfg.dropout
            )
        self.vision, channels = build_vision(
            cfg.backbone, cfg.tiny_widths, cfg.input_size, cfg.backbone_weights
        )
        self.input_proj = nn.Conv2d(channels[-1], d, 1)
        self.detector = RegionDetector(d, cfg.queries, cfg.detector_layers, cfg.heads, cfg.ffn, cfg.dropout)
        laterals: list[int | None] = [c for c in reversed(channels[:-1])] + [None] * cfg.adaptor_levels
        self.decoder = VisionDecoder(d, cfg.adaptor_levels, laterals) if cfg.adaptor_levels else None
        ratios = cfg.ratios[: cfg.adaptor_levels]
        self.adaptor = (
            RegionAdaptor(d, cfg.heads, ratios, cfg.neighbour_k, cfg.sim_temperature) if ratios else None
        )
        self.vision_proj, self.text_proj = nn.Linear(d, d), nn.Linear(d, d)
        scale = torch.tensor(math.log(1 / cfg.temperature))
        if cfg.learn_temperature:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)
        if "embedding" in self.spec.heads:  # pre-training heads (Eq. 4, 7)
            self.itm_head = nn.Linear(2 * d, 2)
            self.mlm_head = nn.Sequential(
                nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, cfg.vocab_size)
            )
        self._gen: torch.Generator | None = None  # tests pin the sampling

    def build_loss_modules(self) -> dict[str, nn.Module]:
        return (
            {"itc": QueueContrastive(self.config.dim, self.config.queue_size)}
            if "embedding" in self.spec.heads
            else {}
        )

    # ------------------------------------------------------------------ encoders
    def logit_scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def encode_text(self, text: TextBatch, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(N, 1 + L, D)`` word features ([CLS] first) and their mask; ``ids`` replaces the token ids
        (masked input of the scratch encoder)."""
        if isinstance(self.text, MiniLMWords):
            return self.text(text)
        return self.text(text.token_ids if ids is None else ids, text.attention_mask)

    def encode_image(self, images: Tensor) -> dict[str, Any]:
        """Detector, region filter (3.2.2, weighted embeddings), pyramid ``F_1..F_L``, ITC image embedding."""
        maps = self.vision(images)
        v = self.input_proj(maps[-1])
        props = self.detector(v)
        kept = filter_regions(props.saliency, self.config.top_k, self.config.threshold)
        regions = kept.gather(props.embeddings) * kept.scores[..., None]  # weighted by the scores
        finer = list(reversed(maps[:-1]))
        feats = self.decoder(v, finer + [None] * len(self.decoder.smooth)) if self.decoder is not None else []
        pooled = regions.sum(1) / kept.keep.sum(1, keepdim=True).clamp_min(1).to(
            regions.dtype
        )  # vision [CLS]
        return {
            "regions": regions,
            "keep": kept.keep,
            "boxes": kept.gather(props.boxes),
            "features": feats,
            "embed": F.normalize(self.vision_proj(pooled), dim=-1),
            "saliency": props.saliency,
        }

    def fuse(
        self, img: dict[str, Any], rows: Tensor, words: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Algorithm 1 for pairs (image ``rows[p]``, text ``p``): ``(E_out^G, E_out^T, [G_1..G_L])``."""
        regions, keep = img["regions"].index_select(0, rows), img["keep"].index_select(0, rows)
        if self.adaptor is None:
            return regions, words, []
        return self.adaptor(
            regions, keep, img["boxes"].index_select(0, rows), words, mask, img["features"], rows
        )

    def cls_pair(self, regions: Tensor, keep: Tensor, words: Tensor) -> Tensor:
        """ExtractCLS: ``cat(v_cls, t_cls)`` (mean of the kept fused regions, the fused text [CLS])."""
        k = keep.to(regions.dtype)[..., None]
        return torch.cat([(regions * k).sum(1) / k.sum(1).clamp_min(1), words[:, 0]], -1)

    # ------------------------------------------------------------------ forward
    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        img = self.encode_image(images)
        words, mask = self.encode_text(text)
        rows = _rows(text, images)
        t_embed = F.normalize(self.text_proj(words[:, 0]), dim=-1)
        out: dict[str, Any] = {
            "pred_image_embed": img["embed"],
            "pred_text_embed": t_embed,
            "logit_scale": self.logit_scale(),
        }
        if "embedding" in self.spec.heads:
            if self.training:
                out["losses"] = self.pretraining_losses(img, text, words, mask, rows, t_embed)
            out["aux"] = {"region_boxes": img["boxes"], "region_keep": img["keep"]}
            return out
        regions, fused_words, history = self.fuse(img, rows, words, mask)
        boxes = history[-1] if history else img["boxes"].index_select(0, rows)
        keep = img["keep"].index_select(0, rows)
        region_emb = F.normalize(self.vision_proj(regions), dim=-1)  # (N, T, D) in the ITC space
        phrases = queries.get("phrases")
        if phrases is not None:
            query = self.phrase_embeddings(words, phrases)  # (N, Q, D)
            logits = self.logit_scale() * torch.einsum("nqd,ntd->nqt", query, region_emb)
            logits = logits.masked_fill(~keep[:, None], -1e4)
            out["pred_boxes"], out["pred_scores"] = self.pick(
                boxes[:, None].expand(-1, query.shape[1], -1, -1), logits
            )
            out["query_mask"] = phrases.mask
        else:
            logits = (self.logit_scale() * torch.einsum("nd,ntd->nt", t_embed, region_emb)).masked_fill(
                ~keep, -1e4
            )
            out["pred_boxes"], out["pred_scores"] = self.pick(boxes, logits)
        if history:
            out["losses"] = progressive_regression_loss(
                img["boxes"].index_select(0, rows),
                history,
                keep,
                self.config.reg_detach_target,
                self.config.reg_sizes,
            )
        out["aux"] = {"region_boxes": boxes, "region_logits": logits}
        return out

    def pick(self, boxes: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The most similar region's box (eval); a softmax(score / t) mixture while training (so the task's
        box loss trains the scores too)."""
        prob = logits.softmax(-1)
        if self.training:
            w = (logits / (self.logit_scale() * self.config.soft_box_temperature)).softmax(-1)
            return (w[..., None] * boxes).sum(-2), prob.amax(-1)
        best = logits.argmax(-1, keepdim=True)
        return boxes.gather(-2, best[..., None].expand(*best.shape, 4)).squeeze(-2), prob.amax(-1)

    def phrase_embeddings(self, words: Tensor, phrases: PhraseQueries) -> Tensor:
        """ITC-space embedding of each phrase: the projected mean of its words' features."""
        cols = torch.arange(words.shape[1] - 1, device=words.device)
        start, end = phrases.spans[..., :1], phrases.spans[..., 1:]
        inside = ((cols >= start) & (cols < end)).to(words.dtype)  # (N, Q, L)
        mean = inside @ words[:, 1:] / inside.sum(-1, keepdim=True).clamp_min(1)
        return F.normalize(self.text_proj(mean), dim=-1)

    # ------------------------------------------------------------------ pre-training (Eq. 3-9)
    def pretraining_losses(
        self, img: dict[str, Any], text: TextBatch, words: Tensor, mask: Tensor, rows: Tensor, t_embed: Tensor
    ) -> dict[str, Tensor]:
        cfg = self.config
        n = words.shape[0]
        index, all_index, offset = gathered_index(t_embed, img["embed"], text.image_index)
        all_img = {k: world(v) if k != "features" else [world(f) for f in v] for k, v in img.items()}
        all_words, all_mask = world(words), world(mask)
        neg_img, neg_txt = hard_negatives(
            t_embed, img["embed"], world(t_embed), all_img["embed"], index, all_index, offset,
            self.logit_scale().detach(), cfg.itm_negatives, self._gen,
        )  # fmt: skip
        # ITM pairs (Eq. 4): N positives, N (text, hard image), B (image, hard text)
        width = all_words.shape[1]
        pad = width - words.shape[1]
        local_words = F.pad(words, (0, 0, 0, pad)) if pad else words
        local_mask = F.pad(mask, (0, pad)) if pad else mask
        pair_rows = torch.cat(
            [index, neg_img, offset + torch.arange(img["embed"].shape[0], device=rows.device)]
        )
        pair_words = torch.cat([local_words, local_words, all_words[neg_txt]])
        pair_mask = torch.cat([local_mask, local_mask, all_mask[neg_txt]])
        regions, fused, history = self.fuse(all_img, pair_rows, pair_words, pair_mask)
        keep = all_img["keep"].index_select(0, pair_rows)
        labels = torch.cat(
            [torch.ones(n, dtype=torch.long), torch.zeros(pair_rows.shape[0] - n, dtype=torch.long)]
        )
        losses = {
            "loss_itm": F.cross_entropy(
                self.itm_head(self.cls_pair(regions, keep, fused)), labels.to(rows.device)
            )
        }
        if history:  # Eq. 3 on the positive pairs
            losses.update(
                progressive_regression_loss(
                    img["boxes"].index_select(0, rows),
                    [g[:n] for g in history],
                    keep[:n],
                    cfg.reg_detach_target,
                    cfg.reg_sizes,
                )
            )
        losses["loss_mlm"] = self.mlm_loss(img, text, rows)
        return losses

    def mlm_loss(self, img: dict[str, Any], text: TextBatch, rows: Tensor) -> Tensor:
        """Eq. 7: 15% of the words masked, predicted from the text fused with its image (vocabulary ids)."""
        ids, real = text.token_ids, text.attention_mask.bool()
        mask_id = self.text.mask_id  # MiniLM: -1, a marker for the word "[MASK]"
        masked, labels, selected = mask_tokens(
            ids, real, mask_id, self.vocab_size, self.config.mlm_prob, self._gen
        )
        if not bool(selected.any()):  # a tiny batch drew no token: predict its first word
            masked, labels = masked.clone(), labels.clone()
            masked[0, 0], labels[0, 0] = mask_id, ids[0, 0]
        if isinstance(self.text, MiniLMWords):  # masked by word: "[MASK]" (a random word is masked too)
            toks = [list(t) for t in text.tokens] if text.tokens else [tokenize(t) for t in text.texts]
            for r, c in (masked != ids).nonzero().tolist():
                if c < len(toks[r]):
                    toks[r][c] = "[MASK]"
            words, mask = self.encode_text(TextBatch(ids, text.attention_mask, text.texts, toks))
        else:
            words, mask = self.encode_text(text, masked)
        _, fused, _ = self.fuse(img, rows, words, mask)
        logits = self.mlm_head(fused[:, 1:])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def itm_scores(self, images: Tensor, text: TextBatch, pairs: Tensor) -> Tensor:
        """ITM match probability of ``pairs`` ``(P, 2)`` = (image row, text row): the re-ranking of the
        ITC top-k (ALBEF / BLIP's retrieval protocol)."""
        if not hasattr(self, "itm_head"):
            raise LanggroundError(
                "itm_scores needs the retrieval heads (a model built with task='retrieval')"
            )
        img = self.encode_image(images)
        words, mask = self.encode_text(text)
        regions, fused, _ = self.fuse(img, pairs[:, 0], words[pairs[:, 1]], mask[pairs[:, 1]])
        keep = img["keep"].index_select(0, pairs[:, 0])
        return self.itm_head(self.cls_pair(regions, keep, fused)).softmax(-1)[:, 1]


def _rows(text: TextBatch, images: Tensor) -> Tensor:
    if text.image_index is None:
        return torch.arange(images.shape[0], device=images.device)
    return text.image_index.to(images.device)


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(SLANConfig)}
_R50: dict[str, Any] = {}
_VIT_B: dict[str, Any] = {"backbone": "vit_base_patch16_224"}
_T: dict[str, Any] = {
    "backbone": "tiny",
    "text_encoder": "scratch",
    "input_size": 128,
    "max_text_length": 32,
    "vocab_size": 100,
    "dim": 128,
    "heads": 4,
    "ffn": 256,
    "queries": 25,
    "detector_layers": 2,
    "queue_size": 256,
}


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> SLAN:
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown SLAN option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    return SLAN(SLANConfig(**{**defaults, **kwargs}))


@register_model
def slan_r50(**kwargs: Any) -> SLAN:
    """SLAN with a ResNet-50 (random init, as the paper) and the offline MiniLM text encoder."""
    return _build(_R50, kwargs)


@register_model
def slan_vit_b(**kwargs: Any) -> SLAN:
    """SLAN with a ViT-B/16 (random init) and the offline MiniLM text encoder."""
    return _build(_VIT_B, kwargs)


@register_model
def slan_t(**kwargs: Any) -> SLAN:
    """Tiny SLAN for the synthetic world on CPU (ours): narrow ResNet, 2-layer scratch text encoder."""
    return _build(_T, kwargs)
