"""Language-conditioned parameter generation (Eq. 3-4) with pixel packing (Sec. 3.2).

Shapes for image features ``X: (B, d, H, W)`` and text features ``Y: (B, L, d_t)``:

1. pack (Sec. 3.2): ``X -> (B, d*s*s, H/s, W/s)``; add a 2-D sine position embedding to the queries
   only. The embedding is the released code's (``layers/laconv.py`` ``ParameterGenerator``, which adds
   DETR's ``PositionEmbeddingSine`` of raw indices before packing); the paper mentions none. Ours embeds
   normalised coordinates of the packed grid;
2. multi-head scaled dot-product attention (Eq. 4 and its "multi-head version"): queries ``X W_X``
   (packed tokens), keys ``Y W_Y``, values ``Y W_A``; padded words are masked; ``A: (B, heads, HW/s^2, L)``;
3. ``A (Y W_A) W_C`` maps each packed token back to ``d_c * s * s`` values, recovered (unpacked) to a
   condition matrix ``C: (B, d_c, H, W)`` (Eq. 3, Sec. 3.2). Eq. 3 wraps this in a ``g(.)`` it never
   defines; ``g(.) = ReLU(BN(.))`` is the released code's (``ParameterGenerator.forward``): without a
   non-linearity W_C and W_1 would collapse into one linear map;
4. Eq. 3: ``W = C W_1 + b_1`` per position: ``(B, g, k*k, H, W)`` kernels.

Widths: ``d_att`` (attention) defaults to ``max(d, 128)`` (ours; the released code uses ``d_c``) so the
low-level stages still get enough heads x head-dim after packing; ``d_c`` defaults to ``d`` as in the paper
(``C`` has the image's shape; the released code widens stages 1-2 to ``d*s/2``). docs/fidelity.md lists
every choice with its source.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from langground.layers.packing import pixel_pack, pixel_unpack
from langground.layers.pooling import masked_mean
from langground.layers.position import PositionEmbeddingSine2d


class ParameterGenerator(nn.Module):
    """``phi(X, Y)`` of Eq. 3: per-position kernels ``(B, g, k*k, H, W)`` and the attention maps A."""

    def __init__(
        self,
        dim: int,
        text_dim: int,
        kernel_size: int,
        groups: int,
        packing: int = 1,
        attn_dim: int | None = None,
        num_heads: int = 8,
        cond_dim: int | None = None,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.packing = s = packing
        self.kernel_size, self.groups = kernel_size, groups
        attn_dim = attn_dim or max(dim, 128)
        cond_dim = cond_dim or dim
        if attn_dim % num_heads:
            raise ValueError(f"attention width {attn_dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, attn_dim // num_heads
        # qk_norm (ours): cosine attention with a learned per-head temperature (init 10) instead of the
        # 1/sqrt(d) scaling. From scratch, scaled dot products start tiny and A stays uniform over the
        # words for thousands of steps: every position then gets the same kernel.
        self.qk_norm = qk_norm
        if qk_norm:
            self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        packed = dim * s * s
        self.pos = PositionEmbeddingSine2d(packed)  # the released code's idea, not the paper's
        self.query = nn.Conv2d(packed, attn_dim, 1)  # W_X, on packed tokens
        self.key = nn.Linear(text_dim, attn_dim)  # W_Y
        self.value = nn.Linear(text_dim, attn_dim)  # W_A
        self.out = nn.Conv2d(attn_dim, cond_dim * s * s, 1, bias=False)  # W_C, then recovery
        self.norm: nn.Module = nn.BatchNorm2d(cond_dim)  # g = ReLU(BN): the released code's g of Eq. 3
        self.act = nn.ReLU(inplace=True)
        self.kernel = nn.Conv2d(cond_dim, kernel_size * kernel_size * groups, 1)  # W_1, b_1
        # Ours (paper silent, the code uses PyTorch's default init): kernels start as an averaging filter
        # plus a random part of about the same size (var ~ 0.5/k^2 for unit-variance C), so the output of
        # the dynamic conv keeps the scale of its input.
        nn.init.normal_(self.kernel.weight, std=1.0 / (kernel_size * math.sqrt(cond_dim)))
        nn.init.constant_(self.kernel.bias, 1.0 / (kernel_size * kernel_size))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        s = self.packing
        packed, size = pixel_pack(x, s)
        hp, wp = packed.shape[-2:]
        q = self.query(packed + self.pos(hp, wp, x.device, x.dtype))  # (B, A, hp, wp)
        q = q.flatten(2).transpose(1, 2).unflatten(2, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.key(text).unflatten(2, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, h, L, dh)
        v = self.value(text).unflatten(2, (self.num_heads, self.head_dim)).transpose(1, 2)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            scale = self.logit_scale.float().clamp(max=math.log(100.0)).exp()
            scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, h, N, L)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)).float() * (self.head_dim**-0.5)  # Eq. 4
        if text_mask is not None:
            scores = scores.masked_fill(~text_mask[:, None, None, :], float("-inf"))
        att = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(att.to(v.dtype), v)  # (B, h, N, dh)
        ctx = ctx.transpose(1, 2).flatten(2).transpose(1, 2).unflatten(2, (hp, wp))  # (B, A, hp, wp)
        cond = pixel_unpack(self.out(ctx), s, size)  # (B, d_c, H, W)
        cond = self.act(self.norm(cond))
        weight = self.kernel(cond).unflatten(1, (self.groups, self.kernel_size * self.kernel_size))
        # Head-averaged A of Eq. 4 as per-word maps (B, L, hp, wp), for explanations (Fig. 6).
        maps = att.mean(dim=1).transpose(1, 2).unflatten(2, (hp, wp))
        return weight, maps

    @torch.no_grad()
    def fuse_bn_(self) -> None:
        """Fold the condition BN into W_C (recovered channel c comes from packed channels c*s^2 ...)."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        r = self.packing * self.packing
        bn = self.norm
        mean, var = bn.running_mean.repeat_interleave(r), bn.running_var.repeat_interleave(r)
        gamma, beta = bn.weight.repeat_interleave(r), bn.bias.repeat_interleave(r)
        w, bias = fuse_conv_bn_weights(self.out.weight, None, mean, var, bn.eps, gamma, beta)
        fused = nn.Conv2d(self.out.in_channels, self.out.out_channels, 1, bias=True).to(w.device, w.dtype)
        fused.weight.copy_(w)
        fused.bias.copy_(bias)
        self.out = fused
        self.norm = nn.Identity()


class LanguageKernelGenerator(nn.Module):
    """ "Language only" ablation (Tab. 10): kernels from the sentence alone, shared over positions.

    Tab. 10 does not say how the kernels are predicted and the released code has no such ablation: the
    masked mean of the words through a 2-layer MLP is ours. Returns ``(B, g, k*k)`` kernels (no attention
    maps).
    """

    def __init__(self, text_dim: int, kernel_size: int, groups: int, hidden: int = 256):
        super().__init__()
        self.kernel_size, self.groups = kernel_size, groups
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, kernel_size * kernel_size * groups),
        )
        nn.init.normal_(self.mlp[-1].weight, std=1.0 / (kernel_size * math.sqrt(hidden)))
        nn.init.constant_(self.mlp[-1].bias, 1.0 / (kernel_size * kernel_size))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, None]:
        sentence = masked_mean(text, text_mask)
        return self.mlp(sentence).unflatten(1, (self.groups, self.kernel_size * self.kernel_size)), None
