"""LaConvNet (Luo et al.): a fully language-driven convolution network built from LaConv blocks.

Variants (per stage: widths, packing, kernel groups, kernel sizes, blocks):

==============  ========================  =========  ==========  =========  ============
variant         widths                    packing s  groups g    kernels k  blocks
==============  ========================  =========  ==========  =========  ============
laconvnet_s     16 / 64 / 128 / 256 / 512 8/4/2/1/1  4/4/8/8/16  3/7/7/7/7  2/1/2/4/1
laconvnet_b     16 / 64 / 128 / 256 / 512 8/4/2/1/1  4/4/8/8/16  3/7/7/7/7  3/3/4/6/3
laconvnet_t     16 / 32 / 64 / 96 / 128   8/4/2/1/1  4/4/8/8/8   3/5/5/5/5  1/1/1/1/1
==============  ========================  =========  ==========  =========  ============

Sources: widths, packing s and blocks are Table 1; kernels are Table 1 (3x3 then 7x7) and Tab. 10's
"kernels=[3,7,7,7,7]" (the released S/B use 3 then 5 (then 7) within stage 1); the groups 4/4/8/8/16
are the released code's (``models/visual_encoder.py``): the paper gives none. docs/fidelity.md lists every
choice with its source and switch.

``laconvnet_t`` is ours (not in the paper): a CPU-trainable model for the synthetic world (<= 256^2,
~60-word vocabulary) with a 64-d embedding, 128-d GRU + self-attention text encoder, 4 attention heads and
a 64-d neck predicting boxes at stride 16. S and B use GloVe-sized 300-d words, a 512-d LSTM + one
self-attention layer (8 heads, FFN 2048) as in Sec. 5.2 (the words start random unless ``glove_path`` is
given: Sec. 5.2 uses GloVe), and a 288-d neck (ours) predicting at stride 32.

Layout: stride-2 stem (Table 1's "16-d linear" + first pool, as one 3x3 conv), stage 1 at stride 2, then
before each later stage a "2x2 stride 2 pool" that also changes the width (a 2x2/stride-2 conv + BN, i.e. a
linear map of each 2x2 patch, as the released code's space-to-depth + 1x1 conv, without its SiLU).
Stage i ends at stride 2^i (C1..C5).

Ablations (Tab. 10-11) as keyword arguments: ``pixel_packing=False``, ``language_only=True``,
``groups=1``, ``kernel_size=3``, ``block="film" | "qghc"``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers import BLOCKS, ConvBNAct
from langground.models.base import GroundingModel
from langground.models.heads import (
    BoxHead,
    MultiScaleFusion,
    NoTargetHead,
    SegHead,
    TextGate,
    VQAHead,
    best_cell,
)
from langground.models.text_encoders import build_text_encoder, words_to_columns
from langground.registry import register_model
from langground.tasks import get_task
from langground.types import TextBatch

NUM_STAGES = 5
# Input sides used in the paper (Sec. 5.2): REC 416, RES 320, VQA 224.
PAPER_INPUT_SIZE = {"rec": 416, "gref": 416, "res": 320, "gres": 320, "vqa": 224}

PerStage = int | Sequence[int]


@dataclass
class LaConvNetConfig:
    """Everything needed to rebuild a LaConvNet (``create_model(name, **asdict)``).

    Per-stage fields take one int (same for every stage) or five values.
    """

    task: str = "rec"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int | None = None  # None: the paper's size for the task (416 / 320 / 224)
    max_text_length: int = 32
    # backbone: Table 1 (dims, depths, packing, kernels); groups from the released code
    dims: PerStage = (16, 64, 128, 256, 512)
    depths: PerStage = (2, 1, 2, 4, 1)
    groups: PerStage = (4, 4, 8, 8, 16)
    kernel_size: PerStage = (3, 7, 7, 7, 7)
    packing: PerStage = (8, 4, 2, 1, 1)
    pixel_packing: bool = True  # False: the "no pixel packing" ablation (s = 1 everywhere)
    language_only: bool = False  # True: kernels from the sentence only, shared over positions
    block: str = "laconv"  # "laconv" | "film" | "qghc"
    attn_min_dim: int = 128  # ours: attention width of a stage = max(width, attn_min_dim)
    num_heads: int = 8
    attn_qk_norm: bool = False  # ours: cosine attention, learned temperature (trains faster from scratch)
    kernel_dropout: float = 0.1  # the released code's LaConv weight_dropout (paper: silent)
    interleaved_groups: bool = False  # channel c uses kernel group c % g (the released code's SAN kernel)
    mlp_ratio: int = 4
    act: str = "silu"
    # language encoder (Sec. 5.2)
    text_encoder: str = "lstm"  # "lstm" (Sec. 5.2) | "gru" (the released code's) | "minilm"
    word_dim: int = 300
    text_dim: int = 512
    text_heads: int = 8
    text_ffn: int = 2048
    freeze_embeddings: bool = False
    freeze_text_encoder: bool = False
    # heads
    neck_dim: int = 288
    neck_depth: int = 1
    neck_text_gate: bool = False  # MCN-style fusion [54]: C3..C5 times a projection of the expression
    match_objectness: bool = False  # ours: objectness + cosine(cell feature, pooled expression)
    det_stride: int = 32
    det_convs: int = 2
    seg_dim: int = 128
    head_hidden: int = 1024
    dropout: float = 0.1

    def __post_init__(self) -> None:
        get_task(self.task)  # a one-line error for an unknown task
        if self.input_size is None:
            self.input_size = PAPER_INPUT_SIZE.get(self.task, 416)
        for name in ("dims", "depths", "groups", "kernel_size", "packing"):
            value = getattr(self, name)
            values = [int(value)] * NUM_STAGES if isinstance(value, int) else [int(v) for v in value]
            if len(values) != NUM_STAGES:
                raise LanggroundError(f"{name} needs {NUM_STAGES} values (one per stage), got {value!r}")
            setattr(self, name, values)
        if not self.pixel_packing:
            self.packing = [1] * NUM_STAGES
        if self.block not in BLOCKS:
            raise LanggroundError(f"unknown block {self.block!r}; expected one of {', '.join(BLOCKS)}")
        for d, g in zip(self.dims, self.groups, strict=True):
            if d % g:
                raise LanggroundError(f"stage width {d} is not divisible by its kernel groups {g}")
        for k in self.kernel_size:
            if k < 1 or k % 2 == 0:
                raise LanggroundError(f"kernel sizes must be odd and positive, got {self.kernel_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _attn_dim(width: int, min_dim: int, heads: int) -> int:
    dim = max(width, min_dim)
    return max(heads, dim - dim % heads)


class LaConvBackbone(nn.Module):
    """Stem + 5 stages of language-driven blocks; returns C1..C5 and each stage's last attention maps."""

    def __init__(self, cfg: LaConvNetConfig, text_dim: int):
        super().__init__()
        block_cls = BLOCKS[cfg.block]
        self.stem = ConvBNAct(3, cfg.dims[0], 3, stride=2, act=cfg.act)
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            d = cfg.dims[i]
            self.downsample.append(
                nn.Identity()
                if i == 0
                else ConvBNAct(cfg.dims[i - 1], d, 2, stride=2, act="identity", padding=0)
            )
            kwargs: dict[str, Any] = dict(
                kernel_size=cfg.kernel_size[i],
                groups=cfg.groups[i],
                act=cfg.act,
                mlp_ratio=cfg.mlp_ratio,
                interleaved=cfg.interleaved_groups,
            )
            if cfg.block == "laconv":
                kwargs.update(
                    packing=cfg.packing[i],
                    kernel_dropout=cfg.kernel_dropout,
                    attn_dim=_attn_dim(d, cfg.attn_min_dim, cfg.num_heads),
                    num_heads=cfg.num_heads,
                    language_only=cfg.language_only,
                    qk_norm=cfg.attn_qk_norm,
                )
            self.stages.append(
                nn.ModuleList([block_cls(d, text_dim, **kwargs) for _ in range(cfg.depths[i])])
            )
        self.dims = list(cfg.dims)

    def forward(
        self, x: Tensor, text: Tensor, text_mask: Tensor | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        x = self.stem(x)
        feats: list[Tensor] = []
        maps: dict[str, Tensor] = {}
        for i, (down, blocks) in enumerate(zip(self.downsample, self.stages, strict=True)):
            x = down(x)
            stage_map = None
            for block in blocks:
                x, m = block(x, text, text_mask)
                stage_map = m if m is not None else stage_map
            if stage_map is not None:
                maps[f"stage{i + 1}"] = stage_map
            feats.append(x)
        return feats, maps


class LaConvNet(GroundingModel):
    """LaConvNet with the head(s) of its task; see the module docstring for variants and options."""

    supported_tasks = ("rec", "res", "recres", "gref", "gres", "vqa")
    size_divisor = 32

    def __init__(
        self, cfg: LaConvNetConfig, glove_path: str | os.PathLike | None = None, vocab: object | None = None
    ):
        assert cfg.input_size is not None
        super().__init__(
            cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, cfg.num_answers, cfg.to_dict()
        )
        self.config = cfg
        self.text_encoder = build_text_encoder(
            cfg.text_encoder,
            cfg.vocab_size,
            cfg.word_dim,
            cfg.text_dim,
            cfg.text_heads,
            cfg.text_ffn,
            cfg.dropout,
            glove_path=glove_path,
            vocab=vocab,
            freeze_embeddings=cfg.freeze_embeddings,
            freeze=cfg.freeze_text_encoder,
        )
        self.backbone = LaConvBackbone(cfg, cfg.text_dim)
        dims, heads = cfg.dims, self.spec.heads
        if "box" in heads:
            self.neck = MultiScaleFusion(
                (dims[2], dims[3], dims[4]), cfg.neck_dim, cfg.det_stride, cfg.neck_depth, cfg.act
            )
            self.box_head = BoxHead(
                cfg.neck_dim,
                cfg.neck_dim,
                cfg.det_convs,
                act=cfg.act,
                text_dim=cfg.text_dim if cfg.match_objectness else None,
            )
            if cfg.neck_text_gate:
                self.text_gate = TextGate((dims[2], dims[3], dims[4]), cfg.text_dim)
        if "mask" in heads:
            self.seg_head = SegHead((dims[1], dims[2], dims[3], dims[4]), cfg.seg_dim, act=cfg.act)
        if "no_target" in heads:
            self.no_target_head = NoTargetHead(dims[4], cfg.text_dim, min(cfg.head_hidden, 256), cfg.dropout)
        if "answer" in heads:
            self.vqa_head = VQAHead(dims[4], cfg.text_dim, cfg.num_answers, cfg.head_hidden, cfg.dropout)

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        txt = self.text_encoder(text)
        # The expression drives every convolution: each row needs its own pass over its image.
        images = text.images_per_text(images).to(self.backbone.stem.conv.weight.dtype)
        heads = self.spec.heads
        feats, maps = self.backbone(images, txt.tokens.to(images.dtype), txt.mask)
        out: dict[str, Any] = {}
        aux: dict[str, Any] = {}
        if "box" in heads:
            scales = feats[2:]
            if self.config.neck_text_gate:
                scales = self.text_gate(scales, txt.tokens.to(images.dtype), txt.mask)
            det = self.box_head(self.neck(scales), txt.tokens.to(images.dtype), txt.mask)
            out.update(best_cell(det))
            aux["cell_centers"], aux["cell_size"] = det["centers"], det["cell"]
        if "mask" in heads:
            out["pred_masks"] = self.seg_head(feats[1:])
        if "no_target" in heads:
            out["pred_no_target"] = self.no_target_head(feats[-1], txt.tokens, txt.mask)
        if "answer" in heads:
            out["pred_answer"] = self.vqa_head(feats[-1], txt.tokens, txt.mask)
        num_words = text.token_ids.shape[1]
        aux["attention"] = {
            k: words_to_columns(v.float(), txt.word_index, num_words) for k, v in maps.items()
        }
        out["aux"] = aux
        return out


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(LaConvNetConfig)}

_S: dict[str, Any] = {}
_B: dict[str, Any] = {"depths": (3, 3, 4, 6, 3)}
_T: dict[str, Any] = {
    "dims": (16, 32, 64, 96, 128),
    "depths": (1, 1, 1, 1, 1),
    "groups": (4, 4, 8, 8, 8),
    "kernel_size": (3, 5, 5, 5, 5),
    "attn_min_dim": 32,
    "num_heads": 4,
    "word_dim": 64,
    "text_dim": 128,
    "text_encoder": "gru",
    "text_heads": 4,
    "text_ffn": 256,
    "neck_dim": 64,
    "det_stride": 16,
    "seg_dim": 32,
    "head_hidden": 128,
    "vocab_size": 100,
}
_TINY_INPUT = 256


def _build(defaults: dict[str, Any], kwargs: dict[str, Any], tiny: bool = False) -> LaConvNet:
    kwargs = dict(kwargs)
    glove_path = kwargs.pop("glove_path", None)
    vocab = kwargs.pop("vocab", None)
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown LaConvNet option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    cfg_kwargs = {**defaults, **kwargs}
    if tiny and cfg_kwargs.get("input_size") is None:
        cfg_kwargs["input_size"] = _TINY_INPUT
    return LaConvNet(LaConvNetConfig(**cfg_kwargs), glove_path=glove_path, vocab=vocab)


@register_model
def laconvnet_t(**kwargs: Any) -> LaConvNet:
    """Tiny LaConvNet for the synthetic world on CPU (ours; 256^2 by default)."""
    return _build(_T, kwargs, tiny=True)


@register_model
def laconvnet_s(**kwargs: Any) -> LaConvNet:
    """LaConvNet-S (Table 1: 10 LaConv blocks)."""
    return _build(_S, kwargs)


@register_model
def laconvnet_b(**kwargs: Any) -> LaConvNet:
    """LaConvNet-B (Table 1: 19 LaConv blocks)."""
    return _build(_B, kwargs)
