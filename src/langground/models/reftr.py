"""Referring Transformer (Li & Sigal, NeurIPS 2021; the lecture's "Image Grounding" part): one-step
multi-task REC + RES with phrase queries.

- Visual-lingual encoder: a timm ResNet (C5 -> 1x1 conv + GroupNorm to ``dim``, 2-D sine positions), a
  text encoder (MiniLM, any local HF checkpoint by path, or a scratch GRU for ``reftr_t``) projected to
  ``dim`` with learned 1-D positions, a modality (token-type) embedding on each side, and ``encoder_layers``
  DETR encoder layers over ``[language tokens; visual tokens]``.
- Query encoder (``layers/query_encoder.py``): ``Q̂_p = MLP([f_c(p); f_p]) + E_p``, one query per phrase;
  a referring expression is one phrase spanning all its words; the Q phrases of a caption
  (``PhraseQueries``) are Q queries decoded together against the caption's one encoding.
- Decoder: ``decoder_layers`` DETR decoder layers over the whole encoder memory; per-layer boxes
  (``aux_outputs``); REC head = 3-layer MLP box per query.
- RES head (``layers/reftr_seg_head.py``): the final query's multi-head attention over the visual memory
  + a top-down conv head with C4/C3/C2 lateral additions, logits at stride 4.

What can be shared between the expressions of one image (``text.image_index``): the encoder mixes text
and image from its first layer, so everything from the encoder on runs per expression (per caption); the
backbone, the C5 projection, the visual positions and the RES head's lateral projections of C2-C4 read
only the image and run once per distinct image.

=========  ===========  ================  ================  ===========  =====
variant    backbone     text              d / heads / ffn   enc / dec    input
=========  ===========  ================  ================  ===========  =====
reftr_r50  ResNet-50    MiniLM-L6         256 / 8 / 2048    6 / 6        640
reftr_r101 ResNet-101   MiniLM-L6         256 / 8 / 2048    6 / 6        640
reftr_t    ResNet 1-1-1-1 (16-128, DC5)  words (2 layers)  64 / 4 / 128   3 / 3   128
=========  ===========  ================  ================  ===========  =====

``reftr_t`` is ours (CPU / synthetic world). Sources of every choice: docs/fidelity.md ("RefTR").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.detr import DETRDecoderLayer, DETREncoderLayer
from langground.layers.position import PositionEmbeddingSine2d
from langground.layers.query_encoder import CONTEXTS, QueryEncoder
from langground.layers.reftr_seg_head import QueryAttentionMap, ReferringMaskHead
from langground.layers.word_transformer import WordTransformer
from langground.models.backbones import build_backbone
from langground.models.base import GroundingModel
from langground.models.heads import TokenBoxHead, best_cell, check_box_head
from langground.models.text_encoders import TextFeatures, build_text_encoder
from langground.registry import register_model
from langground.tasks import get_task
from langground.text.tokenizer import tokenize
from langground.types import PhraseQueries, TextBatch


@dataclass
class RefTRConfig:
    task: str = "rec"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int = 640
    max_text_length: int = 40
    backbone: str = "resnet50"  # any timm ResNet-like model with 5 feature levels
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs
    backbone_weights: str | None = None  # a local torchvision / timm checkpoint
    freeze_bn: bool = False  # DETR / the released code: frozen BatchNorm (sensible with pretrained weights)
    # "minilm" | a local HF checkpoint directory | "words" (a scratch word Transformer) | "gru" | "lstm"
    text_encoder: str = "minilm"
    text_layers: int = 2  # layers of the "words" encoder
    word_dim: int = 300  # word embeddings of the recurrent encoders
    freeze_text_encoder: bool = False
    dim: int = 256
    heads: int = 8
    ffn: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    max_lang_seq: int = 128  # learned language positions (sub-word tokens)
    query_context: str = "mean"  # f_c(p): "mean" (the paper's equation) | "attention" (released code)
    aux_loss: bool = True  # per-decoder-layer boxes (aux_outputs)
    # "query": the lecture's MLP box per query; "tokens" (ours, REC / REC+RES): every visual token of the
    # memory proposes a box and the query scores them (heads.TokenBoxHead: learns within CPU budgets)
    box_head: str = "query"

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.dim % 4:
            raise LanggroundError(f"dim {self.dim} must be a multiple of heads ({self.heads}) and of 4")
        if self.query_context not in CONTEXTS:
            raise LanggroundError(
                f"query_context={self.query_context!r}: expected one of {', '.join(CONTEXTS)}"
            )
        check_box_head(self.box_head)
        if self.box_head == "tokens" and get_task(self.task).uses_phrases:
            raise LanggroundError(
                f"box_head='tokens' answers one query per expression; task {self.task!r} needs 'query'"
            )
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise LanggroundError("encoder_layers and decoder_layers must be at least 1")
        self.max_lang_seq = max(int(self.max_lang_seq), int(self.max_text_length) + 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else min(8, channels), channels)


class RefTR(GroundingModel):
    supported_tasks = ("rec", "res", "recres", "phrase")
    size_divisor = 32

    def __init__(self, cfg: RefTRConfig):
        super().__init__(
            cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, cfg.num_answers, cfg.to_dict()
        )
        self.config = cfg
        d, heads = cfg.dim, self.spec.heads
        self.has_box = bool({"box", "phrase_box"} & heads)
        self.has_mask = "mask" in heads
        self.backbone = build_backbone(
            cfg.backbone,
            out_indices=(1, 2, 3, 4),  # C2..C5 (strides 4..32)
            backbone_weights=cfg.backbone_weights,
            freeze_bn=cfg.freeze_bn,
            **cfg.backbone_kwargs,
        )
        self.input_proj = nn.Sequential(nn.Conv2d(self.backbone.channels[-1], d, 1), _group_norm(d))
        self.visual_pos = PositionEmbeddingSine2d(d)
        if cfg.text_encoder == "words":
            self.text_encoder: nn.Module = WordTransformer(
                cfg.vocab_size, d, cfg.heads, cfg.ffn, cfg.text_layers, cfg.dropout, cfg.max_lang_seq
            )
            if cfg.freeze_text_encoder:
                self.text_encoder.requires_grad_(False)
        else:
            self.text_encoder = build_text_encoder(
                cfg.text_encoder, cfg.vocab_size, cfg.word_dim, d, cfg.heads, cfg.ffn, cfg.dropout,
                freeze=cfg.freeze_text_encoder,
            )  # fmt: skip
        self.lang_pos = nn.Embedding(cfg.max_lang_seq, d)
        self.modality = nn.Embedding(2, d)  # 0: language token, 1: visual token
        self.encoder = nn.ModuleList(
            DETREncoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.encoder_layers)
        )
        self.query_encoder = QueryEncoder(d, cfg.dropout, cfg.query_context)
        self.decoder = nn.ModuleList(
            DETRDecoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        for module in (self.encoder, self.decoder):  # the released code's Xavier init of the transformer
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        if self.has_box and cfg.box_head == "tokens":
            self.box_head: nn.Module = TokenBoxHead(d)
        elif self.has_box:
            self.box_head = nn.Sequential(
                nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4)
            )
            nn.init.zeros_(self.box_head[-1].weight)  # released code: boxes start at the image centre
            nn.init.zeros_(self.box_head[-1].bias)
        if self.has_mask:
            self.attention_map = QueryAttentionMap(d, cfg.heads)
            self.mask_head = ReferringMaskHead(d, cfg.heads, self.backbone.channels[2::-1])

    # ------------------------------------------------------------------ parts
    def encode_images(self, images: Tensor) -> dict[str, Any]:
        """Everything that reads only the image, once per distinct image: C5 projected, the RES head's
        lateral maps of C4, C3, C2."""
        feats = self.backbone(images)
        out: dict[str, Any] = {"visual": self.input_proj(feats[-1])}
        if self.has_mask:
            out["laterals"] = self.mask_head.lateral_maps(feats[2::-1])
        return out

    def encode(self, visual: Tensor, txt: TextFeatures) -> tuple[Tensor, Tensor, Tensor]:
        """The visual-lingual encoder over ``[language; visual]`` (one row per expression):
        ``(memory (N, L + hw, d), padding mask, positions)``."""
        n, length = txt.tokens.shape[:2]
        if length > self.lang_pos.num_embeddings:
            raise LanggroundError(
                f"the text encoder gave {length} tokens, more than max_lang_seq={self.lang_pos.num_embeddings}"
            )
        tokens = txt.tokens.to(visual.dtype)
        lang_pos = (self.lang_pos.weight[:length] + self.modality.weight[0]).expand(n, -1, -1)
        pos_2d = self.visual_pos(*visual.shape[-2:], visual.device, visual.dtype)
        vis_pos = (pos_2d.flatten(2).transpose(1, 2) + self.modality.weight[1]).expand(n, -1, -1)
        vis = visual.flatten(2).transpose(1, 2)
        x = torch.cat([tokens, vis], 1)
        pos = torch.cat([lang_pos, vis_pos], 1).to(x.dtype)
        pad = torch.cat([~txt.mask.bool(), txt.mask.new_zeros(n, vis.shape[1], dtype=torch.bool)], 1)
        for layer in self.encoder:
            x = layer(x, pad, pos)
        return x, pad, pos

    def _token_words(self, txt: TextFeatures) -> Tensor:
        """``(N, L)`` word column of every encoder token (-1: special or padding)."""
        if txt.word_index is not None:
            words = txt.word_index
        else:
            words = torch.arange(txt.tokens.shape[1], device=txt.tokens.device).expand(txt.mask.shape)
        return torch.where(txt.mask.bool(), words, torch.full_like(words, -1))

    @staticmethod
    def pooled(txt: TextFeatures) -> Tensor:
        """``(N, d)`` mean of the real tokens: a text's own encoding (f_p of a phrase encoded alone)."""
        w = txt.mask.to(txt.tokens.dtype)[..., None]
        return (txt.tokens * w).sum(1) / w.sum(1).clamp_min(1.0)

    def phrase_encodings(self, text: TextBatch, phrases: PhraseQueries) -> Tensor:
        """f_p: every phrase of every row run through the text encoder ALONE and pooled, ``(N, Q, d)``."""
        n, q = phrases.mask.shape
        ids, length = text.token_ids, text.token_ids.shape[1]
        start, end = phrases.spans[..., 0], phrases.spans[..., 1]
        width = max(1, int((end - start).max()))
        col = start[..., None] + torch.arange(width, device=ids.device)
        valid = (col < end[..., None]) & phrases.mask[..., None]
        valid[..., 0] |= ~valid.any(-1)  # an empty / padded query reads one <unk>: dropped later
        picked = ids.gather(1, col.clamp(0, length - 1).reshape(n, -1)).reshape(n, q, width)
        picked = torch.where(valid, picked, torch.zeros_like(picked))
        picked[..., 0] = torch.where(picked[..., 0] == 0, torch.ones_like(picked[..., 0]), picked[..., 0])
        # the phrases' words, for encoders with their own tokenizer (MiniLM)
        rows = text.tokens or [tokenize(t) for t in text.texts]
        words = (
            [rows[i][int(start[i, j]) : int(end[i, j])] or ["<unk>"] for i in range(n) for j in range(q)]
            if rows
            else []
        )
        batch = TextBatch(
            picked.reshape(n * q, width), valid.reshape(n * q, width), [" ".join(w) for w in words], words
        )
        return self.pooled(self.text_encoder(batch)).reshape(n, q, -1)

    # ------------------------------------------------------------------ forward
    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        phrases: PhraseQueries | None = queries.get("phrases")
        shared = self.encode_images(images.to(self.input_proj[0].weight.dtype))
        index = None if text.image_index is None else text.image_index.to(images.device)

        def per_text(t: Tensor) -> Tensor:  # each expression's image (no copy with one image each)
            return t if index is None else t.index_select(0, index)

        visual = per_text(shared["visual"])
        txt = self.text_encoder(text)
        memory, pad, pos = self.encode(visual, txt)
        length = txt.tokens.shape[1]
        words = self._token_words(txt)
        if phrases is None:  # one phrase: every word of the expression, its own encoding = the text's
            inside = (words >= 0)[:, None]
            f_p = self.pooled(txt)[:, None].to(memory.dtype)
            query_mask = torch.ones(inside.shape[:2], dtype=torch.bool, device=memory.device)
        else:
            start, end = phrases.spans[..., :1], phrases.spans[..., 1:]
            w = words[:, None]
            inside = (w >= start) & (w < end) & phrases.mask[..., None]
            f_p = self.phrase_encodings(text, phrases).to(memory.dtype)
            query_mask = phrases.mask.bool()
        tgt, query_pos = self.query_encoder(memory[:, :length], inside, f_p)
        # padded queries are ignored (a row without any real query keeps them: no all-masked softmax)
        tgt_pad = ~query_mask & query_mask.any(-1, keepdim=True)
        hs, maps = [], []
        h, w_ = visual.shape[-2:]
        for layer in self.decoder:
            tgt, weights = layer(tgt, memory, tgt_pad, pad, pos, query_pos)
            hs.append(self.decoder_norm(tgt))
            maps.append(weights[..., length:].mean(1).unflatten(-1, (h, w_)))  # (N, Q, h, w) on the image
        out: dict[str, Any] = {}
        cells: dict[str, Tensor] = {}  # the token box head's cell geometry
        single = phrases is None and not self.spec.uses_phrases  # (N, 4) boxes, not (N, 1, 4)
        if self.has_box and self.config.box_head == "tokens":
            if not single:
                raise LanggroundError(
                    "box_head='tokens' answers one query per expression, got phrase queries"
                )
            tokens = memory[:, length:]
            raw = [self.box_head(x[:, 0], tokens, h, w_) for x in hs]
            cells = {"cell_centers": raw[-1]["centers"], "cell_size": raw[-1]["cell"]}
            dets = [best_cell(r) for r in raw]
            out.update(dets[-1])
            if self.config.aux_loss:
                out["aux_outputs"] = [{**det, "aux": cells} for det in dets[:-1]]
        elif self.has_box:
            boxes = [self.box_head(x).sigmoid() for x in hs]
            if single:
                boxes = [b[:, 0] for b in boxes]
            out["pred_boxes"] = boxes[-1]
            extra = {} if single else {"query_mask": query_mask}
            if self.config.aux_loss:
                out["aux_outputs"] = [{"pred_boxes": b, **extra} for b in boxes[:-1]]
            out.update(extra)
        if self.has_mask:
            vis_memory = memory[:, length:].transpose(1, 2).reshape(visual.shape)
            att = self.attention_map(hs[-1][:, :1], vis_memory)[:, 0]  # (N, heads, h, w)
            laterals = [per_text(t) for t in shared["laterals"]]
            out["pred_masks"] = self.mask_head(torch.cat([visual, vis_memory, att], 1), laterals)
        out["aux"] = {"attention": self._word_maps(maps, text, phrases), **cells}
        return out

    @staticmethod
    def _word_maps(maps: list[Tensor], text: TextBatch, phrases: PhraseQueries | None) -> dict[str, Tensor]:
        """Explain: per decoder layer, ``(N, words, h, w)``: each word column shows the attention over the
        image of the query whose phrase holds it (one query: every column shows it; outside any phrase:
        zeros)."""
        columns = text.token_ids.shape[1]
        if phrases is None:
            return {f"decoder{j + 1}": m.float().expand(-1, columns, -1, -1) for j, m in enumerate(maps)}
        col = torch.arange(columns, device=text.token_ids.device)[None, :, None]
        start, end = phrases.spans[:, None, :, 0], phrases.spans[:, None, :, 1]
        member = ((col >= start) & (col < end) & phrases.mask[:, None]).float()  # (N, words, Q)
        return {
            f"decoder{j + 1}": torch.einsum("ncq,nqhw->nchw", member, m.float()) for j, m in enumerate(maps)
        }


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(RefTRConfig)}
_R50: dict[str, Any] = {}
_R101: dict[str, Any] = {"backbone": "resnet101"}
_T: dict[str, Any] = {
    "backbone": "resnet18",
    # C5 dilated to stride 16 (DETR-DC5): 8x8 visual tokens at 128^2 instead of 4x4
    "backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "output_stride": 16},
    "input_size": 128,
    "max_text_length": 20,
    "vocab_size": 100,
    "text_encoder": "words",
    "text_layers": 2,
    "dim": 64,
    "heads": 4,
    "ffn": 128,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "max_lang_seq": 32,
}


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> RefTR:
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown RefTR option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    return RefTR(RefTRConfig(**{**defaults, **kwargs}))


@register_model
def reftr_r50(**kwargs: Any) -> RefTR:
    """RefTR with ResNet-50, MiniLM-L6 (the paper: BERT-base), 6 + 6 layers at 640^2."""
    return _build(_R50, kwargs)


@register_model
def reftr_r101(**kwargs: Any) -> RefTR:
    """RefTR with ResNet-101, MiniLM-L6, 6 + 6 layers at 640^2."""
    return _build(_R101, kwargs)


@register_model
def reftr_t(**kwargs: Any) -> RefTR:
    """Tiny RefTR for the synthetic world on CPU (ours): 4-block ResNet, 2-layer scratch word Transformer,
    3 + 3 layers at 128^2."""
    return _build(_T, kwargs)
