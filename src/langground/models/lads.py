"""LADS (Su et al., AAAI 2023): Language Adaptive Dynamic Subnets for REC, with REAL subnet execution.

Supernet (paper "Framework"): a ResNet bottleneck backbone (C5 -> 1x1 conv to ``dim`` + 2-D sine
positions), a text encoder with a [CLS] token, ``M`` post-norm Transformer layers over [text; visual]
tokens, and a 3-layer MLP on the [CLS] position -> sigmoid -> normalised cxcywh (``pred_boxes``).
The Gating Network (``layers/gates.py``, Eq. 1-5) reads the expression ALONE and gates every stride-1
bottleneck (layer gate + one filter gate per conv2 channel) and every fusion sublayer (attention, FFN).

Execution: training runs the masked supernet (Eq. 6-7, gradients through the gates); evaluation computes
the gates first, reads them to the host once, groups the rows by gate pattern and runs each pattern's
static subnet (``layers/gated_blocks.py``) in which closed layers and filters are not computed.
``execution="masked"`` keeps the masked reference at eval. ``extract_subnet(text)`` returns one
expression's subnet as a plain module ``images -> boxes``.

==========  =====================  ============  ===============  ==========  =====
variant     backbone               text          fusion d/h/ffn   layers M    input
==========  =====================  ============  ===============  ==========  =====
lads_r50    ResNet-50 (timm)       MiniLM-L6     256 / 8 / 2048   6           512
lads_t      bottleneck 2-2-2-2,    scratch GRU   64 / 4 / 128     3           128
            widths 16/32/48/64
==========  =====================  ============  ===============  ==========  =====

``lads_t`` is ours (CPU / synthetic world). Sources of every choice: docs/fidelity.md ("LADS").
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.gated_blocks import (
    FusionLayer,
    SlicedBottleneck,
    StaticFusionLayer,
    bottleneck_masked,
    fold_block,
    fold_conv_bn,
    fold_gated,
    is_gateable,
)
from langground.layers.gates import Gates, GatingNetwork, gate_mutual_information
from langground.layers.position import PositionEmbeddingSine2d
from langground.models.base import GroundingModel
from langground.models.heads import SequenceBoxHead, check_box_head
from langground.models.lads_subnet import ExpressionSubnet, LADSSubnet, build_resnet, resnet_blocks
from langground.models.text_encoders import build_text_encoder
from langground.registry import register_model
from langground.types import TextBatch


@dataclass
class LADSConfig:
    task: str = "rec"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int = 512
    max_text_length: int = 40
    backbone: str = "resnet50"  # a timm ResNet name, or "bottleneck" (ours: widths/depths below)
    widths: tuple[int, ...] = (16, 32, 48, 64)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    stem_width: int = 16
    output_stride: int = 32  # 16: the last stage dilated instead of strided (4x the visual tokens)
    backbone_weights: str | None = None
    text_encoder: str = "minilm"  # "minilm" (6-layer BERT-shaped, the paper's) | "gru" | "lstm"
    word_dim: int = 300
    freeze_text_encoder: bool = False
    dim: int = 256
    heads: int = 8
    ffn: int = 2048
    fusion_layers: int = 6
    dropout: float = 0.1
    gate_hidden: int = 64  # d_h of Eq. 3
    gate_init: float = 3.0  # head bias: every gate starts open
    gate_head_init: str = (
        "xavier"  # W2 / W3: "xavier" (the paper's init of the rest) | "small" (N(0, 0.01^2))
    )
    execution: str = "subnet"  # eval: "subnet" (skip closed units) | "masked" (Eq. 6-7 reference)
    gates: str = (
        "learned"  # "learned" (the Gating Network) | "open" (every gate forced open: the plain supernet)
    )
    # "query": the paper's 3-layer MLP on [CLS]; "tokens": every visual token proposes a box and [CLS]
    # scores them (ours, heads.TokenBoxHead: learns from scratch within CPU budgets)
    box_head: str = "query"

    def __post_init__(self) -> None:
        self.widths, self.depths = tuple(int(w) for w in self.widths), tuple(int(d) for d in self.depths)
        if self.execution not in ("subnet", "masked"):
            raise LanggroundError(f"execution must be 'subnet' or 'masked', got {self.execution!r}")
        if self.gates not in ("learned", "open"):
            raise LanggroundError(f"gates must be 'learned' or 'open', got {self.gates!r}")
        if self.gate_head_init not in ("xavier", "small"):
            raise LanggroundError(f"gate_head_init must be 'xavier' or 'small', got {self.gate_head_init!r}")
        if self.dim % self.heads or self.dim % 4:
            raise LanggroundError(f"dim {self.dim} must be a multiple of heads ({self.heads}) and of 4")
        check_box_head(self.box_head)
        if self.output_stride not in (16, 32):
            raise LanggroundError(f"output_stride must be 16 or 32, got {self.output_stride!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LADS(GroundingModel):
    supported_tasks = ("rec",)
    size_divisor = 32
    loss_weights = {"mi": 0.1}  # Eq. 9's lambda_mi; the term is -I(G; F_l), see forward
    filter_multiple = 16  # kept widths padded to it with zero filters (exact; oneDNN reuses kernels)
    _CACHE = 4  # static subnets kept per model (a subnet of lads_r50 holds up to ~45 MB of sliced weights)

    def __init__(self, cfg: LADSConfig):
        super().__init__(
            cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, cfg.num_answers, cfg.to_dict()
        )
        self.config = cfg
        d = cfg.dim
        self.text_encoder = build_text_encoder(
            cfg.text_encoder,
            cfg.vocab_size,
            cfg.word_dim,
            d,
            cfg.heads,
            cfg.ffn,
            cfg.dropout,
            freeze=cfg.freeze_text_encoder,
        )
        # MiniLM brings its own [CLS] at position 0; the scratch encoders get a learned one
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.text_encoder != "minilm" else None
        self.backbone = build_resnet(cfg)
        self.gated_blocks = [n for n, m in self._blocks() if is_gateable(m)]
        c5 = self.backbone.num_features
        self.input_proj = nn.Conv2d(c5, d, 1)
        self.pos = PositionEmbeddingSine2d(d)
        self.fusion = nn.ModuleList(
            [FusionLayer(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.fusion_layers)]
        )
        self.box_head = SequenceBoxHead(d, cfg.box_head)
        filters = [self.backbone.get_submodule(n).conv2.out_channels for n in self.gated_blocks]
        self.gating = GatingNetwork(
            d, filters + [0] * (2 * cfg.fusion_layers), cfg.gate_hidden, cfg.gate_init, cfg.gate_head_init
        )
        self._offsets = [0]
        for c in filters:
            self._offsets.append(self._offsets[-1] + c)
        self._subnets: OrderedDict[tuple, LADSSubnet] = OrderedDict()
        self._fold_cache: tuple[tuple, dict[str, Any]] | None = None
        self._backbone_tensors: list[Tensor] | None = None  # walked once: the module traversal is 0.4 ms
        # the paper's Xavier init of the rest (TokenBoxHead keeps its own: boxes start small and local)
        for m in (*self.fusion, getattr(self.box_head, "mlp", nn.Identity()), self.input_proj):
            for p in m.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    # ------------------------------------------------------------------ parts
    def _blocks(self) -> list[tuple[str, nn.Module]]:
        return resnet_blocks(self.backbone)

    def _stem(self) -> nn.Module:
        b = self.backbone
        return nn.Sequential(b.conv1, b.bn1, b.act1, b.maxpool)

    def _encode(self, text: TextBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, L, dim)`` tokens with [CLS] first, ``(N, L)`` bool mask, ``(N, L)`` word column of each
        token (-1 for [CLS] and other special tokens)."""
        feats = self.text_encoder(text)
        tokens, mask, word = feats.tokens, feats.mask, feats.word_index
        if word is None:  # the tokens are the words
            word = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
            word = torch.cat([word.new_full((word.shape[0], 1), -1), word], 1)
        return tokens, mask, word

    def encode_text(self, text: TextBatch) -> tuple[Tensor, Tensor]:
        """``(N, L, dim)`` tokens with [CLS] first, ``(N, L)`` bool mask."""
        return self._encode(text)[:2]

    @torch.no_grad()
    def explain_gates(self, text: TextBatch) -> tuple[Gates, Tensor]:
        """The evaluation gates (hard, no noise; all ones with ``gates="open"``) and Eq. 1's ``alpha`` per
        WORD ``(N, U, W)`` (W = ``text.token_ids.shape[1]``: sub-words of a word summed, [CLS] dropped)."""
        tokens, mask, word = self._encode(text)
        was = self.gating.training
        self.gating.eval()
        try:
            g, alpha = self.gating(tokens, mask)
        finally:
            self.gating.train(was)
        if self.config.gates == "open":
            g = self.open_gates(tokens.shape[0], tokens.device)
        n, u, _ = alpha.shape
        keep = (word >= 0) & mask
        idx = torch.where(keep, word, torch.zeros_like(word)).clamp_max(text.token_ids.shape[1] - 1)
        src = alpha * keep[:, None, :].to(alpha.dtype)
        per_word = alpha.new_zeros(n, u, text.token_ids.shape[1])
        return g, per_word.scatter_add_(2, idx[:, None, :].expand(-1, u, -1), src)

    def units(self) -> list[dict[str, Any]]:
        """The gated units in gate order: ``name``, ``kind`` (bottleneck / attention / ffn), ``stage``,
        ``filters`` (conv2's width; 0 for fusion sublayers)."""
        out: list[dict[str, Any]] = [
            {"name": n, "kind": "bottleneck", "stage": n.split(".")[0], "filters": c}
            for n, c in zip(self.gated_blocks, self.gating.filters, strict=False)
        ]
        for j in range(len(self.fusion)):
            for kind in ("attention", "ffn"):
                out.append({"name": f"fusion{j}.{kind}", "kind": kind, "stage": "fusion", "filters": 0})
        return out

    def gates(self, text: TextBatch) -> tuple[Gates, Tensor, Tensor, Tensor]:
        """Eq. 1-5 from the expression alone: ``(gates, alpha, tokens, mask)``."""
        tokens, mask = self.encode_text(text)
        g, alpha = self.gating(tokens, mask)
        return g, alpha, tokens, mask

    def open_gates(self, n: int, device: torch.device | str = "cpu") -> Gates:
        """Every gate open for ``n`` expressions: the whole supernet."""
        u, c = self.gating.num_units, sum(self.gating.filters)
        return Gates(torch.ones(n, u, device=device), torch.ones(n, c, device=device))

    # ------------------------------------------------------------------ masked supernet (Eq. 6-7)
    def run_masked(
        self, images: Tensor, tokens: Tensor, mask: Tensor, g: Gates
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x = self._stem()(images)
        k = 0
        for name, block in self._blocks():
            if k < len(self.gated_blocks) and name == self.gated_blocks[k]:
                x = bottleneck_masked(
                    block, x, g.layer[:, k], g.filter[:, self._offsets[k] : self._offsets[k + 1]]
                )
                k += 1
            else:
                x = block(x)
        v = self.input_proj(x)
        grid = v.shape[-2:]
        v = (v + self.pos(*grid, v.device, v.dtype)).flatten(2).transpose(1, 2)
        h = torch.cat([tokens.to(v.dtype), v], 1)
        pad = ~torch.cat([mask, mask.new_ones(mask.shape[0], v.shape[1])], 1)
        u = len(self.gated_blocks)
        for j, layer in enumerate(self.fusion):
            h = layer(h, pad, g.layer[:, u + 2 * j], g.layer[:, u + 2 * j + 1])
        return self.box_head(h, *grid)

    # ------------------------------------------------------------------ static subnets
    def _folded(self) -> dict[str, Any]:
        """The parts every pattern shares, BatchNorm folded into the convs (eval): the stem, the
        always-run blocks and each gated block's three convs (unsliced); rebuilt when a backbone weight changes."""
        if self._backbone_tensors is None:
            self._backbone_tensors = [*self.backbone.parameters(), *self.backbone.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in self._backbone_tensors)
        if self._fold_cache is None or self._fold_cache[0] != key:
            b, gated = self.backbone, set(self.gated_blocks)
            parts: dict[str, nn.Module] = {
                "stem": nn.Sequential(fold_conv_bn(b.conv1, b.bn1), b.act1, b.maxpool)
            }
            for name, block in self._blocks():
                parts[name] = fold_gated(block) if name in gated else fold_block(block)
            self._fold_cache = (key, parts)
            self._subnets.clear()  # their sliced convs came from the old fold
        return self._fold_cache[1]

    def build_subnet(self, layer: Tensor, filt: Tensor) -> LADSSubnet:
        """The static subnet of one hard pattern (``layer`` ``(U,)``, ``filter`` ``(C,)``, on the host).
        Needs eval mode: conv2's BatchNorm is folded with its running statistics."""
        if self.training:
            raise LanggroundError("build_subnet / extract_subnet need model.eval() (BatchNorm is folded)")
        layer, filt = layer.bool().tolist(), filt.bool()
        folded = self._folded()
        blocks: list[nn.Module] = []
        k = 0
        for name, block in self._blocks():
            if k < len(self.gated_blocks) and name == self.gated_blocks[k]:
                if layer[k]:  # open: keep its open filters
                    keep = filt[self._offsets[k] : self._offsets[k + 1]].nonzero().flatten().tolist()
                    blocks.append(SlicedBottleneck(block, keep, folded[name], self.filter_multiple))
                k += 1  # closed: the block is its (identity) shortcut
            else:
                blocks.append(folded[name])
        u = len(self.gated_blocks)
        fusion = [
            StaticFusionLayer(m, layer[u + 2 * j], layer[u + 2 * j + 1]) for j, m in enumerate(self.fusion)
        ]
        return LADSSubnet(folded["stem"], blocks, self.input_proj, self.pos, fusion, self.box_head)

    def _cached_subnet(self, layer: Tensor, filt: Tensor) -> LADSSubnet:
        # A subnet copies only (sliced) folded backbone convs; the fusion layers and heads it holds are
        # the live modules. So a subnet is stale exactly when the fold is: _folded() checks the backbone's
        # tensor versions (an optimizer step, EMA copy or load_state_dict bumps them) and drops the cache.
        self._folded()
        key = (layer.numpy().tobytes(), filt.numpy().tobytes(), self.filter_multiple)
        net = self._subnets.pop(key, None)
        if net is None:
            net = self.build_subnet(layer, filt)
        self._subnets[key] = net
        while len(self._subnets) > self._CACHE:
            self._subnets.popitem(last=False)
        return net

    def run_subnets(self, images: Tensor, tokens: Tensor, mask: Tensor, g: Gates) -> Tensor:
        """Rows grouped by gate pattern; each group runs its static subnet (exact w.r.t. masked)."""
        pattern = torch.cat([g.layer, g.filter], 1).cpu().to(torch.uint8)  # the one device -> host read
        uniq, inverse = torch.unique(pattern, dim=0, return_inverse=True)
        out = images.new_empty(images.shape[0], 4)
        u = g.layer.shape[1]
        for p in range(uniq.shape[0]):
            rows = (inverse == p).nonzero().flatten().to(images.device)
            net = self._cached_subnet(uniq[p, :u], uniq[p, u:])
            out[rows] = net(images[rows], tokens[rows], mask[rows]).to(out.dtype)
        return out

    @torch.no_grad()
    def extract_subnet(self, text: TextBatch) -> ExpressionSubnet:
        """The subnet of ONE expression as a plain, static module ``images -> (N, 4)`` boxes (its own
        copy of the weights it keeps)."""
        if len(text) != 1:
            raise LanggroundError(f"extract_subnet takes one expression, got {len(text)}")
        self.eval()
        g, _, tokens, mask = self.gates(text)
        net = copy.deepcopy(self.build_subnet(g.layer[0].cpu(), g.filter[0].cpu()))
        return ExpressionSubnet(net, tokens, mask).eval()

    # ------------------------------------------------------------------ forward
    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        return self.forward_with_gates(images, text)

    def forward_with_gates(
        self, images: Tensor, text: TextBatch, gates: Gates | None = None
    ) -> dict[str, Any]:
        """The forward pass; ``gates`` (hard 0/1, e.g. a forced pattern) replace the Gating Network's."""
        if self.config.gates == "open":  # the all-open supernet: no Gating Network, no MI term
            tokens, mask = self.encode_text(text)
            g, alpha, probs = gates or self.open_gates(tokens.shape[0], tokens.device), None, None
        else:
            g, alpha, tokens, mask = self.gates(text)
            probs = None if g.layer_prob is None else torch.cat([g.layer_prob, g.filter_prob], 1)
            if gates is not None:
                g = gates
        images = text.images_per_text(images).to(self.input_proj.weight.dtype)
        cells: dict[str, Tensor] = {}
        if self.training or self.config.execution == "masked":
            out, cells = self.run_masked(images, tokens, mask, g)
        else:  # the subnets answer the box only (the dense head's argmax cell)
            out = {"pred_boxes": self.run_subnets(images, tokens, mask, g)}
        if probs is not None:  # Eq. 9: the criterion adds 0.1 * loss_mi, so the term is -I(G; F_l)
            out["losses"] = {"loss_mi": -gate_mutual_information(probs)}
        out["aux"] = {
            "gates": {"layer": g.layer.detach(), "filter": g.filter.detach()},
            "gate_attention": alpha,
            **cells,
        }
        return out

    def _drop_caches(self) -> None:
        self._subnets.clear()
        self._fold_cache = self._backbone_tensors = None

    def train(self, mode: bool = True) -> LADS:
        self._drop_caches()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> LADS:  # .to() / .cuda() / .half() may swap tensors
        self._drop_caches()
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._drop_caches()  # assign=True replaces the Parameters themselves
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(LADSConfig)}
_R50: dict[str, Any] = {}
_T: dict[str, Any] = {
    "backbone": "bottleneck",
    "input_size": 128,
    "max_text_length": 20,
    "vocab_size": 100,
    "text_encoder": "gru",
    "word_dim": 32,
    "dim": 64,
    "heads": 4,
    "ffn": 128,
    "fusion_layers": 3,
    "gate_hidden": 32,
}


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> LADS:
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown LADS option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    return LADS(LADSConfig(**{**defaults, **kwargs}))


@register_model
def lads_r50(**kwargs: Any) -> LADS:
    """LADS with ResNet-50, the 6-layer MiniLM and 6 fusion layers at 512^2 (the paper's)."""
    return _build(_R50, kwargs)


@register_model
def lads_t(**kwargs: Any) -> LADS:
    """Tiny LADS for the synthetic world on CPU (ours): 8 narrow bottlenecks, scratch GRU, 3 fusion layers."""
    return _build(_T, kwargs)
