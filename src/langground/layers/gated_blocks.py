"""The gated residual units of LADS, in two executions that compute the same function:

- *masked* (training, reference): Eq. 6-7 as written, ``x + g_L * F(x)`` and ``y * g_C`` per row;
- *static* (inference): the subnet of one gate pattern as plain modules. A closed bottleneck is its
  shortcut; closed filters are sliced out of conv2's outputs and conv3's inputs with conv2's BatchNorm
  folded in; a closed attention / FFN sublayer of a post-norm layer keeps only its LayerNorm. Nothing
  closed is computed, so the pruned FLOPs are not spent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_gateable(block: nn.Module) -> bool:
    """A stride-1 bottleneck with an identity shortcut (timm / torchvision layout), the paper's gated
    layers; the first block of each stage (projection shortcut) always runs."""
    return (
        all(hasattr(block, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"))
        and getattr(block, "downsample", None) is None
        and tuple(block.conv2.stride) == (1, 1)
        and block.conv2.groups == 1
        and all(isinstance(getattr(block, n, None), nn.Identity | None) for n in ("aa", "se", "drop_block"))
        and isinstance(getattr(block, "drop_path", None), nn.Identity | None)
    )


def _act(block: nn.Module, name: str, fallback: str = "relu"):
    return getattr(block, name, None) or getattr(block, fallback)


def bottleneck_masked(block: nn.Module, x: Tensor, g_layer: Tensor | None, g_filter: Tensor | None) -> Tensor:
    """Eq. 6-7: filter gates ``(B, C)`` on conv2's output after its BN, before the ReLU; the layer gate
    ``(B,)`` on the residual branch. The input is a ReLU output (>= 0), so ``act(x) == x`` when closed."""
    y = _act(block, "act1")(block.bn1(block.conv1(x)))
    y = block.bn2(block.conv2(y))
    if g_filter is not None:
        y = y * g_filter[:, :, None, None].to(y.dtype)
    y = block.bn3(block.conv3(_act(block, "act2")(y)))
    if g_layer is not None:
        y = y * g_layer[:, None, None, None].to(y.dtype)
    return _act(block, "act3")(y + x)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _conv_from(like: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """A Conv2d with ``like``'s geometry holding ``weight`` / ``bias`` (built on the meta device: no
    throw-away random init of a large weight)."""
    out_c, in_c = weight.shape[:2]
    conv = nn.Conv2d(
        in_c,
        out_c,
        like.kernel_size,
        like.stride,
        like.padding,
        like.dilation,
        bias=bias is not None,
        device="meta",
    )
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return conv


class SlicedBottleneck(nn.Module):
    """The open bottleneck of one pattern with only the ``keep`` filters of conv2 (BN2 folded: exact
    in eval mode). conv1/BN1 and BN3 are the supernet's modules; conv2/conv3 hold the sliced weights."""

    def __init__(self, block: nn.Module, keep: Sequence[int]):
        super().__init__()
        keep_t = torch.as_tensor(list(keep), dtype=torch.long, device=block.conv2.weight.device)
        self.conv1, self.bn1, self.act1 = block.conv1, block.bn1, _act(block, "act1")
        self.bn3, self.act3 = block.bn3, _act(block, "act3")
        self.act2 = _act(block, "act2")
        self.kept = int(keep_t.numel())
        with torch.no_grad():
            scale, shift = _bn_affine(block.bn2)
            c2, c3 = block.conv2, block.conv3
            self.conv2: nn.Module | None = None
            self.conv3: nn.Module | None = None
            if self.kept:
                w2 = c2.weight[keep_t] * scale[keep_t, None, None, None]
                b2 = shift[keep_t] if c2.bias is None else c2.bias[keep_t] * scale[keep_t] + shift[keep_t]
                self.conv2 = _conv_from(c2, w2, b2)
                self.conv3 = _conv_from(
                    c3, c3.weight[:, keep_t], None if c3.bias is None else c3.bias.clone()
                )
            # every filter closed: conv3 sees zeros, the branch is BN3's constant (plus conv3's bias)
            zero = torch.zeros(block.conv3.out_channels, device=c2.weight.device, dtype=c2.weight.dtype)
            const = zero if block.conv3.bias is None else block.conv3.bias.detach().clone()
            self.register_buffer("empty_branch", const, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv2 is None or self.conv3 is None:
            b3 = self.bn3
            scale, shift = _bn_affine(b3)
            return self.act3(x + (self.empty_branch * scale + shift)[None, :, None, None])
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(self.act2(self.conv2(y))))
        return self.act3(y + x)


class FusionLayer(nn.Module):
    """A post-norm Transformer encoder layer (DETR / TransVG) whose attention and FFN sublayers are gated:
    ``x = LN1(x + g_a * MHA(x))``, ``x = LN2(x + g_f * FFN(x))`` (Eq. 6 on each residual sublayer)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2 = (
            nn.Dropout(dropout),
            nn.Dropout(dropout),
            nn.Dropout(dropout),
        )

    def attention(self, x: Tensor, pad: Tensor) -> Tensor:
        return self.dropout1(self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0])

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(
        self, x: Tensor, pad: Tensor, g_attn: Tensor | None = None, g_ffn: Tensor | None = None
    ) -> Tensor:
        a = self.attention(x, pad)
        x = self.norm1(x + (a if g_attn is None else a * g_attn[:, None, None].to(a.dtype)))
        f = self.feed_forward(x)
        return self.norm2(x + (f if g_ffn is None else f * g_ffn[:, None, None].to(f.dtype)))


class StaticFusionLayer(nn.Module):
    """One gate pattern of a :class:`FusionLayer`: a closed sublayer is skipped, its LayerNorm kept
    (the post-norm formula with the sublayer's output zero)."""

    def __init__(self, layer: FusionLayer, attn_on: bool, ffn_on: bool):
        super().__init__()
        self.layer, self.attn_on, self.ffn_on = layer, bool(attn_on), bool(ffn_on)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        m = self.layer
        x = m.norm1(x + m.attention(x, pad)) if self.attn_on else m.norm1(x)
        return m.norm2(x + m.feed_forward(x)) if self.ffn_on else m.norm2(x)

    def extra_repr(self) -> str:
        return f"attn={'on' if self.attn_on else 'off'}, ffn={'on' if self.ffn_on else 'off'}"


__all__ = [
    "FusionLayer",
    "SlicedBottleneck",
    "StaticFusionLayer",
    "bottleneck_masked",
    "is_gateable",
]
