"""TransVG (Deng et al., ICCV 2021): end-to-end visual grounding with transformers, for REC.

Visual branch: ResNet C5 -> 1x1 conv to ``dim`` -> a DETR encoder (post-norm, sine positions added to
queries and keys) -> a linear projection. Linguistic branch: a BERT-family encoder (max 20 sub-word
tokens, [CLS] and [SEP] included) projected to ``dim``. A learnable [REG] token joins [REG; text; visual]
in the visual-linguistic transformer (post-norm, learnable position embeddings added to queries and keys
in every layer, as the released code's ``vl_pos_embed``); a 3-layer MLP on [REG] -> sigmoid ->
normalised cxcywh. Loss: L1 + GIoU (the ``rec`` task's terms).

==============  ==================  ====================  ============  ======  ====  =====
variant         backbone            text                  d/h/ffn       DETR    VL    input
==============  ==================  ====================  ============  ======  ====  =====
transvg_r50     ResNet-50 (timm)    MiniLM-L6 (BERT-base  256/8/2048    6       6     640
                                    in the paper)
transvg_t       ResNet, widths      word BERT 2x64        64/4/128      2       2     128
                16/32/48/64         (scratch, ours)
==============  ==================  ====================  ============  ======  ====  =====

``aux["attention"]``: per VL layer, the [REG] token's attention over the visual tokens (heads averaged,
renormalised over the visual tokens), the same map for every word column; ``explain="words"`` shows each
word's own attention over the image instead. Sources: docs/fidelity.md ("TransVG").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.detr_encoder import PostNormEncoder
from langground.layers.position import PositionEmbeddingSine2d
from langground.models.backbones import build_backbone
from langground.models.base import GroundingModel
from langground.models.heads import SequenceBoxHead, check_box_head
from langground.models.text_encoders import TextFeatures, build_text_encoder, words_to_columns
from langground.registry import register_model
from langground.types import TextBatch


@dataclass
class TransVGConfig:
    task: str = "rec"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int = 640
    max_text_length: int = 20  # words of a TextBatch
    max_text_tokens: int = 20  # the released code's max_query_len: encoder tokens incl. [CLS] / [SEP]
    backbone: str = "resnet50"  # a timm model whose last level has stride 32 (or 16: output_stride=16)
    backbone_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # to timm.create_model
    backbone_weights: str | None = None  # a local torchvision / timm checkpoint (models/backbones.py)
    freeze_bn: bool = True  # the released code: FrozenBatchNorm2d (DETR's)
    frozen_stages: int = 1  # the released code trains layer2-4 only; -1: nothing frozen
    # "minilm" | "bert-base" (random init) | a local HF checkpoint dir | "word-bert" (ours, scratch, word ids)
    text_encoder: str = "minilm"
    freeze_text_encoder: bool = False
    text_dim: int = 64  # word-bert only
    text_layers: int = 2
    text_heads: int = 4
    text_ffn: int = 128
    dim: int = 256
    heads: int = 8
    ffn: int = 2048
    detr_layers: int = 6
    vl_layers: int = 6
    dropout: float = 0.1
    explain: str = "reg"  # aux["attention"]: "reg" ([REG]'s map per layer) | "words" (each word's map)
    # "query": the paper's 3-layer MLP on [REG]; "tokens": every visual token proposes a box and [REG]
    # scores them (ours, heads.TokenBoxHead: learns from scratch within CPU budgets)
    box_head: str = "query"

    def __post_init__(self) -> None:
        if self.explain not in ("reg", "words"):
            raise LanggroundError(f"explain must be 'reg' or 'words', got {self.explain!r}")
        if self.dim % self.heads or self.dim % 4:
            raise LanggroundError(f"dim {self.dim} must be a multiple of heads ({self.heads}) and of 4")
        if self.input_size % 32:
            raise LanggroundError(
                f"input_size {self.input_size} must be a multiple of 32 (the ResNet stride)"
            )
        check_box_head(self.box_head)
        if self.max_text_tokens < 1:
            raise LanggroundError(f"max_text_tokens must be at least 1, got {self.max_text_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class WordBert(nn.Module):
    """A BERT (transformers ``BertModel``, random init) over the batch's own word ids (ours: no sub-word
    tokenizer, so the graph is token ids -> features and exports to ONNX)."""

    def __init__(self, cfg: TransVGConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.text_dim,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            intermediate_size=cfg.text_ffn,
            max_position_embeddings=cfg.max_text_tokens,
            pad_token_id=0,
            attn_implementation="eager",
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        self.proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.max_tokens = cfg.max_text_tokens

    def forward(self, text: TextBatch) -> TextFeatures:
        # cut BEFORE encoding, as the released code pads / truncates the query to max_query_len
        ids, mask = text.token_ids[:, : self.max_tokens], text.attention_mask[:, : self.max_tokens].bool()
        hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return TextFeatures(self.proj(hidden), mask)


class TransVG(GroundingModel):
    supported_tasks = ("rec",)
    size_divisor = 32

    def __init__(self, cfg: TransVGConfig):
        super().__init__(
            cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, cfg.num_answers, cfg.to_dict()
        )
        self.config = cfg
        d = cfg.dim
        # visual branch ("visumodel" in the released code)
        self.backbone = build_backbone(
            cfg.backbone,
            out_indices=(-1,),
            backbone_weights=cfg.backbone_weights,
            frozen_stages=cfg.frozen_stages,
            freeze_bn=cfg.freeze_bn,
            **cfg.backbone_kwargs,
        )
        self.stride = int(self.backbone.reductions[-1])  # 32; 16 with output_stride=16 (released --dilation)
        if self.stride not in (16, 32):
            raise LanggroundError(
                f"backbone {cfg.backbone!r}: last level has stride {self.stride}, expected 16 or 32"
            )
        self.input_proj = nn.Conv2d(self.backbone.channels[-1], d, 1)
        self.pos = PositionEmbeddingSine2d(d)
        self.detr_encoder = PostNormEncoder(d, cfg.heads, cfg.ffn, cfg.detr_layers, cfg.dropout)
        self.visu_proj = nn.Linear(d, d)
        # linguistic branch ("textmodel"); its projection to d is part of the encoder
        if cfg.text_encoder == "word-bert":
            self.text_encoder: nn.Module = WordBert(cfg)
        else:
            self.text_encoder = build_text_encoder(
                cfg.text_encoder,
                cfg.vocab_size,
                0,
                d,
                cfg.heads,
                cfg.ffn,
                cfg.dropout,
                freeze=cfg.freeze_text_encoder,
                max_length=cfg.max_text_tokens,
            )
        # visual-linguistic transformer
        self.grid = cfg.input_size // self.stride
        self.reg_token = nn.Parameter(torch.randn(1, 1, d))  # nn.Embedding(1, d)'s N(0, 1) init
        self.vl_pos = nn.Parameter(torch.randn(1 + cfg.max_text_tokens + self.grid**2, d))
        self.vl_encoder = PostNormEncoder(d, cfg.heads, cfg.ffn, cfg.vl_layers, cfg.dropout)
        self.box_head = SequenceBoxHead(d, cfg.box_head)

    # ------------------------------------------------------------------ branches
    def encode_image(self, images: Tensor) -> tuple[Tensor, int, int]:
        """``(B, h*w, dim)`` visual tokens and the C5 grid ``(h, w)``."""
        c5 = self.backbone(images.to(self.input_proj.weight.dtype))[-1]
        v = self.input_proj(c5)
        h, w = v.shape[-2:]
        pos = self.pos(h, w, v.device, v.dtype).flatten(2).transpose(1, 2)
        v, _ = self.detr_encoder(v.flatten(2).transpose(1, 2), pos)
        return self.visu_proj(v), h, w

    def encode_text(self, text: TextBatch) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(N, L_t, dim)`` tokens, their ``(N, L_t)`` bool mask and word column (``None``: the tokens are
        the words), at most ``max_text_tokens`` long."""
        feats = self.text_encoder(text)
        n = self.config.max_text_tokens
        index = None if feats.word_index is None else feats.word_index[:, :n]
        return feats.tokens[:, :n], feats.mask[:, :n], index

    def position_embedding(self, text_len: int, h: int, w: int) -> Tensor:
        """[REG], the first ``text_len`` text slots and the visual slots, resized when the grid is not
        the one of ``input_size`` (bilinear on the learned ``grid x grid`` table)."""
        n_text, g = self.config.max_text_tokens, self.grid
        head = self.vl_pos[: 1 + text_len]
        vis = self.vl_pos[1 + n_text :]
        if (h, w) != (g, g):
            vis = vis.t().reshape(1, -1, g, g)
            vis = F.interpolate(vis, size=(h, w), mode="bilinear", align_corners=False).flatten(2)[0].t()
        return torch.cat([head, vis], 0)

    # ------------------------------------------------------------------ forward
    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        visual, h, w = self.encode_image(images)  # each distinct image once
        if text.image_index is not None:
            visual = visual.index_select(0, text.image_index.to(visual.device))
        tokens, mask, word_index = self.encode_text(text)
        n, lt = tokens.shape[:2]
        reg = self.reg_token.expand(n, -1, -1).to(visual.dtype)
        x = torch.cat([reg, tokens.to(visual.dtype), visual], 1)
        pad = torch.cat([mask.new_zeros(n, 1), ~mask, mask.new_zeros(n, h * w)], 1)
        pos = self.position_embedding(lt, h, w)[None].to(visual.dtype)
        x, maps = self.vl_encoder(x, pos, pad)
        attention = self.explain_maps(maps, mask, word_index, h, w, text.token_ids.shape[1])
        out, cells = self.box_head(x, h, w)
        return {**out, "aux": {"attention": attention, **cells}}

    def explain_maps(
        self, maps: list[Tensor], mask: Tensor, word_index: Tensor | None, h: int, w: int, words: int
    ) -> dict[str, Tensor]:
        """``{"vl<i>": (N, words, h, w)}`` per VL layer i: attention over the visual tokens (heads averaged,
        renormalised to sum to 1 over the image). ``explain="reg"``: [REG]'s map, the query the box is read
        from, in every word column; ``"words"``: each word's own map (its sub-words averaged)."""
        lt = mask.shape[1]
        out = {}
        for i, probs in enumerate(maps, 1):
            rows = slice(0, 1) if self.config.explain == "reg" else slice(1, 1 + lt)
            a = probs.detach()[:, :, rows, 1 + lt :].mean(1)  # (N, rows, h*w)
            a = (a / a.sum(-1, keepdim=True).clamp_min(1e-12)).reshape(a.shape[0], -1, h, w)
            if self.config.explain == "reg":
                out[f"vl{i}"] = a.expand(-1, words, -1, -1)
                continue
            a = a * mask[:, :, None, None].to(a.dtype)  # padding queries show nothing
            if word_index is None:  # the tokens are the words (cut at max_text_tokens)
                out[f"vl{i}"] = F.pad(a, (0, 0, 0, 0, 0, words - lt))
            else:
                count = words_to_columns(mask[:, :, None, None].to(a.dtype), word_index, words)
                out[f"vl{i}"] = words_to_columns(a, word_index, words) / count.clamp_min(1.0)
        return out


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(TransVGConfig)}
_R50: dict[str, Any] = {}
_T: dict[str, Any] = {
    "backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 48, 64], "stem_width": 16},
    "freeze_bn": False,
    "frozen_stages": -1,
    "input_size": 128,
    "vocab_size": 100,
    "text_encoder": "word-bert",
    "dim": 64,
    "heads": 4,
    "ffn": 128,
    "detr_layers": 2,
    "vl_layers": 2,
}


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> TransVG:
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown TransVG option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    return TransVG(TransVGConfig(**{**defaults, **kwargs}))


@register_model
def transvg_r50(**kwargs: Any) -> TransVG:
    """TransVG with ResNet-50, 6 DETR + 6 VL layers at 640^2 (the paper's); MiniLM text offline
    (``text_encoder="bert-base"`` or a local checkpoint directory for BERT-base)."""
    return _build(_R50, kwargs)


@register_model
def transvg_t(**kwargs: Any) -> TransVG:
    """Tiny TransVG for the synthetic world on CPU (ours): 4 narrow bottlenecks, a 2-layer word BERT,
    2 DETR + 2 VL layers, d = 64."""
    return _build(_T, kwargs)
