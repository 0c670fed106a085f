"""Task heads on top of a backbone's stage features (shared by LaConvNet and later models).

Sources (LaConvNet; docs/fidelity.md has the full table):

- :class:`MultiScaleFusion` — top-down + bottom-up fusion of the last three stages, output at one stride.
  It stands in for Sec. 5.2's "simple multi-scale fusion module [54]" (MCN); the released code uses
  YOLOX's CSP ``PAFPN``. The layout and widths are ours.
- :class:`BoxHead` — anchor-free one-box detection: every cell predicts objectness and a box; the
  highest-objectness cell is the answer (generalized REC keeps all cells' boxes and logits). Anchor-free
  like the released code's YOLOX-style ``REChead`` (one output at stride 32); Sec. 5.2 cites "a detection
  head [68]", which it calls anchor-based for ViLT. The bounded decoding is ours.
- :class:`TokenBoxHead` — the same cells' boxes over a transformer's visual tokens, scored by a query token
  (ours, for TransVG / LADS / RefTR trained from scratch; their papers regress one box from the query).
- :class:`SegHead` — dilated context on the last stage, top-down fusion to stride 4, mask logits (ours;
  the released ``REShead`` is an ASPP on a stride-8 map upsampled x8).
- :class:`VQAHead` — attentive pooling of the last visual map and of the text, added, then an MLP over
  answers (Sec. 5.2; the LayerNorm after the sum is ours).
- :class:`NoTargetHead` — the same pooling and one no-target logit (ours: LaConvNet's Tab. 6 uses no such
  head but counts masks under 50 pixels as no-target).
- :class:`TextGate` — MCN's language gate before the neck (ours for LaConvNet; off by default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.conv import ConvBNAct
from langground.layers.pooling import AttentionPool


class ResidualConv(nn.Module):
    """``x + conv3x3(conv1x1(x))`` with a half-width bottleneck."""

    def __init__(self, dim: int, act: str = "silu"):
        super().__init__()
        self.reduce = ConvBNAct(dim, dim // 2, 1, act=act)
        self.conv = ConvBNAct(dim // 2, dim, 3, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(self.reduce(x))


class FuseBlock(nn.Sequential):
    """Concatenated inputs -> 1x1 conv to ``out_dim`` -> ``depth`` residual 3x3 bottlenecks."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 1, act: str = "silu"):
        super().__init__(
            ConvBNAct(in_dim, out_dim, 1, act=act), *[ResidualConv(out_dim, act) for _ in range(depth)]
        )


def _up_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class TextGate(nn.Module):
    """MCN's multi-modal fusion [54]: each stage map times a projection of the pooled expression.

    ``forward(feats, text (B, L, D), mask) -> feats``, ``x_i * (W_i t + b_i)`` per channel, so the
    neck sees language directly, not only through the kernels that shaped the maps.
    """

    def __init__(self, in_dims: tuple[int, ...], text_dim: int):
        super().__init__()
        self.pool = AttentionPool(text_dim, text_dim, dropout=0.0)
        self.proj = nn.ModuleList(nn.Linear(text_dim, d) for d in in_dims)
        for lin in self.proj:  # start as the identity gate: x * 1
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.ones_(lin.bias)

    def forward(self, feats: list[Tensor], text: Tensor, text_mask: Tensor | None) -> list[Tensor]:
        sentence = self.pool(text, text_mask)
        return [
            x * lin(sentence).to(x.dtype)[:, :, None, None] for x, lin in zip(feats, self.proj, strict=True)
        ]


class MultiScaleFusion(nn.Module):
    """Fuse stage features ``(C3, C4, C5)`` (strides 8/16/32) and return one map at ``out_stride``.

    Top-down: ``P5 = lat(C5)``, ``P4 = fuse(up(P5), C4)``, ``P3 = fuse(up(P4), C3)``; bottom-up:
    ``N4 = fuse(down(P3), P4)``, ``N5 = fuse(down(N4), P5)``. Only the path the output needs is built.
    """

    def __init__(
        self, in_dims: tuple[int, int, int], dim: int, out_stride: int = 32, depth: int = 1, act: str = "silu"
    ):
        super().__init__()
        if out_stride not in (8, 16, 32):
            raise ValueError(f"fusion out_stride must be 8, 16 or 32, got {out_stride}")
        c3, c4, c5 = in_dims
        self.out_stride = out_stride
        self.lat5 = ConvBNAct(c5, dim, 1, act=act)
        self.td4 = FuseBlock(dim + c4, dim, depth, act)
        self.td3 = FuseBlock(dim + c3, dim, depth, act)
        if out_stride >= 16:
            self.down3 = ConvBNAct(dim, dim, 3, stride=2, act=act)
            self.bu4 = FuseBlock(2 * dim, dim, depth, act)
        if out_stride == 32:
            self.down4 = ConvBNAct(dim, dim, 3, stride=2, act=act)
            self.bu5 = FuseBlock(2 * dim, dim, depth, act)
        self.out_dim = dim

    def forward(self, feats: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        c3, c4, c5 = feats
        p5 = self.lat5(c5)
        p4 = self.td4(torch.cat((_up_to(p5, c4), c4), dim=1))
        p3 = self.td3(torch.cat((_up_to(p4, c3), c3), dim=1))
        if self.out_stride == 8:
            return p3
        n4 = self.bu4(torch.cat((self.down3(p3), p4), dim=1))
        if self.out_stride == 16:
            return n4
        return self.bu5(torch.cat((self.down4(n4), p5), dim=1))


class BoxHead(nn.Module):
    """Anchor-free dense box head: per cell ``(tx, ty, tw, th, objectness)``.

    Anchor-free as the released code's ``REChead`` (``models/laconvnet_det/head.py``, YOLOX-style), not the
    anchor-based head [68] the paper cites. Decoding (ours; normalized canvas units):
    ``cx = (j + 0.5 + r * tanh(tx)) / W``, ``cy`` likewise, ``w = sigmoid(tw)``, ``h = sigmoid(th)``:
    bounded, so a cell up to ``r`` cells from the referent's centre can still reach it, and no exp() can
    overflow (the released code decodes ``(t + grid) * stride`` and ``exp(t) * stride``). Centres are clamped to the canvas.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 256,
        num_convs: int = 2,
        radius: float = 2.0,
        act: str = "silu",
        text_dim: int | None = None,
    ):
        """``text_dim``: add a text-matching term to the objectness (:class:`TextMatch`, ours)."""
        super().__init__()
        self.stem = ConvBNAct(in_dim, dim, 1, act=act)
        self.convs = nn.Sequential(*[ConvBNAct(dim, dim, 3, act=act) for _ in range(num_convs)])
        self.pred = nn.Conv2d(dim, 5, 1)
        self.match = TextMatch(dim, text_dim) if text_dim else None
        self.radius = radius
        with torch.no_grad():
            self.pred.weight.normal_(std=0.01)
            self.pred.bias.zero_()
            self.pred.bias[2:4] = math.log(0.2 / 0.8)  # boxes start at 20% of the canvas
            self.pred.bias[4] = -math.log((1 - 0.01) / 0.01)  # objectness prior 0.01

    def forward(
        self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        feats = self.convs(self.stem(x))
        out = self.pred(feats).float()  # (B, 5, h, w)
        if self.match is not None:
            if text is None:
                raise ValueError("BoxHead built with text_dim needs the text features")
            out = torch.cat((out[:, :4], out[:, 4:] + self.match(feats, text, text_mask)), dim=1)
        return decode_cells(out[:, :4], out[:, 4], self.radius)


def decode_cells(t: Tensor, logits: Tensor, radius: float) -> dict[str, Tensor]:
    """Cell outputs ``t`` ``(B, 4, h, w)`` and ``logits`` ``(B, h, w)`` -> the dense-head dict the box
    terms read (``box_set`` ``(B, h*w, 4)``, ``logits`` ``(B, h*w)``, cell ``centers`` ``(h*w, 2)`` and
    ``cell`` size, normalized): ``cx = (j + 0.5 + r * tanh(tx)) / w``, ``w = sigmoid(tw)`` (ours)."""
    b, _, h, w = t.shape
    ys = (torch.arange(h, device=t.device, dtype=t.dtype) + 0.5) / h
    xs = (torch.arange(w, device=t.device, dtype=t.dtype) + 0.5) / w
    cx = (xs.view(1, 1, w) + radius * torch.tanh(t[:, 0]) / w).clamp(0.0, 1.0)
    cy = (ys.view(1, h, 1) + radius * torch.tanh(t[:, 1]) / h).clamp(0.0, 1.0)
    boxes = torch.stack((cx, cy, torch.sigmoid(t[:, 2]), torch.sigmoid(t[:, 3])), dim=-1)
    centers = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).reshape(-1, 2)
    return {
        "box_set": boxes.reshape(b, h * w, 4),
        "logits": logits.reshape(b, h * w),
        "centers": centers,  # (h*w, 2) normalized (cx, cy) of each cell
        "cell": torch.tensor([1.0 / w, 1.0 / h], device=t.device),
    }


def best_cell(det: dict[str, Tensor]) -> dict[str, Tensor]:
    """A dense head's answer in the model outputs' names: the highest-logit cell's box and score, and
    every cell's box, logit and geometry for the dense loss terms and generalized REC."""
    logits, box_set = det["logits"], det["box_set"]
    top, best = logits.max(dim=1)
    return {
        "pred_boxes": box_set[torch.arange(box_set.shape[0], device=best.device), best],
        "pred_scores": torch.sigmoid(top),
        "pred_box_set": box_set,
        "pred_box_logits": logits,
    }


class TokenBoxHead(nn.Module):
    """A dense box head for transformers: every visual token proposes a box, and the query token (TransVG's
    [REG], LADS's [CLS], a RefTR query) scores the tokens by a scaled cosine (ours).

    The papers regress one box from the query token alone; trained from scratch, such a box first settles
    on one input-independent box and leaves it only after far more samples than a CPU budget gives
    (docs/lads.md, docs/reftr.md). Here the box comes from the best-matching token, so localisation is a
    choice among tokens trained by the cells' objectness from step one, like LaConvNet's :class:`BoxHead`.

    ``forward(query (N, d), tokens (N, h*w, d), h, w) -> decode_cells`` dict.
    """

    def __init__(self, dim: int, embed_dim: int = 64, radius: float = 2.0, init_scale: float = 10.0):
        super().__init__()
        self.query = nn.Linear(dim, embed_dim)
        self.key = nn.Linear(dim, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.box = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 4))
        self.radius = radius
        with torch.no_grad():
            self.box[-1].weight.normal_(std=0.01)
            self.box[-1].bias.zero_()
            self.box[-1].bias[2:4] = math.log(0.2 / 0.8)  # boxes start at 20% of the canvas

    def forward(self, query: Tensor, tokens: Tensor, h: int, w: int) -> dict[str, Tensor]:
        q = F.normalize(self.query(query).float(), dim=-1)
        k = F.normalize(self.key(tokens).float(), dim=-1)
        logits = self.log_scale.exp() * torch.einsum("nc,nlc->nl", q, k)
        t = self.box(torch.cat((tokens, query[:, None].expand_as(tokens)), dim=-1)).float()
        t = t.transpose(1, 2).reshape(t.shape[0], 4, h, w)
        return decode_cells(t, logits.reshape(-1, h, w), self.radius)


#: How a [query; text; visual] transformer reads its box: the papers' MLP on the query token ("query"),
#: or every visual token proposing one and the query scoring them ("tokens", :class:`TokenBoxHead`).
SEQUENCE_BOX_HEADS = ("query", "tokens")


def check_box_head(kind: str) -> None:
    """A model config's ``box_head`` check: one line naming the value and the choices."""
    if kind not in SEQUENCE_BOX_HEADS:
        raise LanggroundError(f"box_head must be one of {', '.join(SEQUENCE_BOX_HEADS)}, got {kind!r}")


class SequenceBoxHead(nn.Module):
    """The box of a fused sequence whose position 0 is the query ([REG] / [CLS]) and whose last ``h*w``
    positions are the visual tokens. ``forward(x (N, L, d), h, w) -> (outputs, aux)``: ``pred_boxes``
    (and the dense head's outputs and cell geometry with ``kind="tokens"``)."""

    def __init__(self, dim: int, kind: str = "query"):
        super().__init__()
        if kind not in SEQUENCE_BOX_HEADS:
            raise ValueError(f"box head {kind!r}: expected one of {', '.join(SEQUENCE_BOX_HEADS)}")
        self.kind = kind
        if kind == "tokens":
            self.tokens = TokenBoxHead(dim)
        else:  # TransVG's / LADS's 3-layer MLP -> sigmoid -> cxcywh
            self.mlp = nn.Sequential(
                nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4)
            )

    def forward(self, x: Tensor, h: int, w: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.kind == "query":
            return {"pred_boxes": self.mlp(x[:, 0]).sigmoid()}, {}
        det = self.tokens(x[:, 0], x[:, x.shape[1] - h * w :], h, w)
        return best_cell(det), {"cell_centers": det["centers"], "cell_size": det["cell"]}


class TextMatch(nn.Module):
    """Objectness from matching: the cosine of each cell's feature and the pooled expression, times a
    learned temperature (ours, a CLIP-style region-text score). The cells then compete by how well they
    fit the words from the first step, instead of by a saliency the words reach only through the
    kernels that shaped the map.

    ``forward(feats (B, C, h, w), text (B, L, D), mask) -> (B, 1, h, w)`` logits.
    """

    def __init__(self, dim: int, text_dim: int, embed_dim: int = 64, init_scale: float = 10.0):
        super().__init__()
        self.pool = AttentionPool(text_dim, embed_dim, dropout=0.0)
        self.visual = nn.Conv2d(dim, embed_dim, 1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, feats: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        v = F.normalize(self.visual(feats).float(), dim=1)
        t = F.normalize(self.pool(text.to(feats.dtype), text_mask).float(), dim=-1)
        return self.log_scale.exp() * torch.einsum("bchw,bc->bhw", v, t)[:, None]


class SegHead(nn.Module):
    """Dilated context on C5, then top-down fusion with C4, C3, C2 (stride 4) -> 1-channel mask logits."""

    def __init__(
        self,
        in_dims: tuple[int, int, int, int],
        dim: int = 128,
        dilations: tuple[int, ...] = (1, 2, 3),
        act: str = "silu",
    ):
        super().__init__()
        c2, c3, c4, c5 = in_dims
        self.context = nn.ModuleList([ConvBNAct(c5, dim, 3, dilation=d, act=act) for d in dilations])
        # Image-level branch without BN: batch-1 training would leave BN a single value per channel.
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c5, dim, 1), nn.ReLU(inplace=True))
        self.project = ConvBNAct(dim * (len(dilations) + 1), dim, 1, act=act)
        self.laterals = nn.ModuleList([ConvBNAct(c, dim, 1, act=act) for c in (c4, c3, c2)])
        self.fuses = nn.ModuleList([ConvBNAct(2 * dim, dim, 3, act=act) for _ in range(3)])
        self.pred = nn.Conv2d(dim, 1, 1)

    def forward(self, feats: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        c2, c3, c4, c5 = feats
        ctx = [branch(c5) for branch in self.context]
        ctx.append(self.image_pool(c5).expand(-1, -1, *c5.shape[-2:]))
        x = self.project(torch.cat(ctx, dim=1))
        for lateral, fuse, skip in zip(self.laterals, self.fuses, (c4, c3, c2), strict=True):
            x = fuse(torch.cat((_up_to(x, skip), lateral(skip)), dim=1))
        return self.pred(x).float()


class _PooledFusion(nn.Module):
    """``LayerNorm(attpool(visual) + attpool(text))``."""

    def __init__(self, vis_dim: int, text_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.visual = AttentionPool(vis_dim, hidden, hidden=min(vis_dim, 512), dropout=dropout)
        self.text = AttentionPool(text_dim, hidden, hidden=min(text_dim, 512), dropout=dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, vis: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        v = self.visual(vis.flatten(2).transpose(1, 2))
        return self.norm(v + self.text(text, text_mask))


class VQAHead(nn.Module):
    """Attentive pooling of the last visual map and the text, added, MLP -> ``(B, num_answers)`` logits."""

    def __init__(
        self, vis_dim: int, text_dim: int, num_answers: int, hidden: int = 1024, dropout: float = 0.1
    ):
        super().__init__()
        self.fuse = _PooledFusion(vis_dim, text_dim, hidden, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_answers),
        )

    def forward(self, vis: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        return self.mlp(self.fuse(vis, text, text_mask)).float()


class NoTargetHead(nn.Module):
    """One logit per sample: does the expression refer to nothing (gRefCOCO)?

    Ours: LaConvNet's Tab. 6 has no no-target classifier (its rows carry no dagger) and decides by the
    50-pixel mask rule instead (``eval.gres_no_target: min_pixels``).
    """

    def __init__(self, vis_dim: int, text_dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.fuse = _PooledFusion(vis_dim, text_dim, hidden, dropout)
        self.logit = nn.Linear(hidden, 1)

    def forward(self, vis: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        return self.logit(self.fuse(vis, text, text_mask)).squeeze(-1).float()
