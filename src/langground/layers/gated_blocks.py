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


_GEOMETRY = (
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
    "_reversed_padding_repeated_twice",
)


def _conv_from(like: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """A Conv2d with ``like``'s geometry holding ``weight`` / ``bias``. Built without ``Conv2d.__init__``
    (no throw-away init of a weight, ~10x less Python per conv: subnets are built per expression)."""
    conv = nn.Conv2d.__new__(nn.Conv2d)
    nn.Module.__init__(conv)
    for name in _GEOMETRY:
        object.__setattr__(conv, name, getattr(like, name))
    conv.out_channels, conv.in_channels = weight.shape[0], weight.shape[1] * like.groups
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    conv.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=False)
    return conv


def fold_conv_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, out_idx: Tensor | None = None, in_idx: Tensor | None = None
) -> nn.Conv2d:
    """``bn(conv(x))`` in eval mode as ONE conv with its own weights (exact up to rounding), keeping only
    the output filters ``out_idx`` / input channels ``in_idx`` when given."""
    with torch.no_grad():
        scale, shift = _bn_affine(bn)
        w, b = conv.weight, conv.bias
        if out_idx is not None:
            w, scale, shift = w[out_idx], scale[out_idx], shift[out_idx]
            b = None if b is None else b[out_idx]
        if in_idx is not None:
            w = w[:, in_idx]
        w = w * scale[:, None, None, None]
        return _conv_from(conv, w, shift if b is None else b * scale + shift)


def _plain_ok(block: nn.Module) -> bool:
    down = getattr(block, "downsample", None)
    return (
        all(hasattr(block, n) for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"))
        and all(isinstance(getattr(block, n, None), nn.Identity | None) for n in ("aa", "se", "drop_block"))
        and isinstance(getattr(block, "drop_path", None), nn.Identity | None)
        and all(isinstance(getattr(block, n), nn.Conv2d) for n in ("conv1", "conv2", "conv3"))
        and (
            down is None
            or (
                isinstance(down, nn.Sequential)
                and len(down) == 2
                and isinstance(down[0], nn.Conv2d)
                and isinstance(down[1], nn.BatchNorm2d)
            )
        )
    )


class FoldedBottleneck(nn.Module):
    """An eval-mode bottleneck (any stride, projection shortcut or not) with every BatchNorm folded into
    its conv: the same function, no BatchNorm pass over the feature maps."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1 = fold_conv_bn(block.conv1, block.bn1)
        self.conv2 = fold_conv_bn(block.conv2, block.bn2)
        self.conv3 = fold_conv_bn(block.conv3, block.bn3)
        self.act1, self.act2, self.act3 = _act(block, "act1"), _act(block, "act2"), _act(block, "act3")
        down = getattr(block, "downsample", None)
        self.downsample = None if down is None else fold_conv_bn(down[0], down[1])

    def forward(self, x: Tensor) -> Tensor:
        sc = x if self.downsample is None else self.downsample(x)
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + sc)


def fold_block(block: nn.Module) -> nn.Module:
    """:class:`FoldedBottleneck` of a plain (timm / torchvision) bottleneck; any other block as it is."""
    return FoldedBottleneck(block) if _plain_ok(block) else block


def fold_gated(block: nn.Module) -> tuple[nn.Conv2d, nn.Conv2d, nn.Module]:
    """The three convs of a gated bottleneck with BN1-3 folded in, unsliced, conv2 with one extra ZERO
    output filter and conv3 with one extra ZERO input channel (index ``C``, the padding source): every
    pattern's :class:`SlicedBottleneck` shares conv1 and slices conv2 / conv3 from these. A 1x1 conv3
    comes as a :class:`Pointwise` (its weight as ``(C + 1, C_out)`` rows), so that slicing its inputs is
    a gather of whole rows instead of a strided one (lads_r50 subnet extraction 4.5 -> 3.4 ms, CPU)."""
    c1, c2, c3 = (fold_conv_bn(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")) for i in (1, 2, 3))
    with torch.no_grad():
        w2, b2, w3 = c2.weight, c2.bias, c3.weight
        c2 = _conv_from(c2, torch.cat([w2, w2.new_zeros(1, *w2.shape[1:])]), torch.cat([b2, b2.new_zeros(1)]))
        w3 = torch.cat([w3, w3.new_zeros(w3.shape[0], 1, *w3.shape[2:])], 1)
        if tuple(c3.kernel_size) == (1, 1) and tuple(c3.stride) == (1, 1) and c3.groups == 1:
            c3 = Pointwise(w3[:, :, 0, 0].t(), c3.bias)
        else:
            c3 = _conv_from(c3, w3, c3.bias)
    return c1, c2, c3


class Pointwise(nn.Module):
    """A 1x1 conv as a matrix product over channels-last pixels, its weight held as ``(C_in, C_out)``
    rows: ``y[n, :, h, w] = x[n, :, h, w] @ rows + bias`` (the sliced conv3 of a subnet: its kept input
    channels are rows of ``rows``, gathered without a strided copy). On a channels-last input both
    permutes are views."""

    def __init__(self, rows: Tensor, bias: Tensor):
        super().__init__()
        self.rows = nn.Parameter(rows.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)

    @property
    def in_channels(self) -> int:
        return self.rows.shape[0]

    @property
    def out_channels(self) -> int:
        return self.rows.shape[1]

    def select_inputs(self, index: Tensor) -> Pointwise:
        """The same conv reading only the input channels ``index`` (a gather of whole rows)."""
        return Pointwise(self.rows.index_select(0, index), self.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.addmm(self.bias, x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), self.rows)
        n, _, h, w = x.shape
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


class SlicedBottleneck(nn.Module):
    """The open bottleneck of one pattern with only the ``keep`` filters of conv2, every BatchNorm folded
    (exact in eval mode): conv2 keeps the ``keep`` outputs, conv3 the ``keep`` inputs. ``folded`` (from
    :func:`fold_gated`, shared by every pattern) is computed here when not given.

    ``multiple > 1`` rounds the kept width up to a multiple (at most the full width) with ZERO filters:
    a zero conv2 filter with zero bias outputs 0, and its conv3 input weights are 0, so the result is the
    same; the point is that widths repeat across expressions, so oneDNN reuses its compiled convolution
    kernels (a new width costs a kernel build on its first call, ~1 ms per conv on CPU)."""

    def __init__(self, block: nn.Module, keep: Sequence[int], folded: tuple | None = None, multiple: int = 1):
        super().__init__()
        c1, c2, c3 = folded if folded is not None else fold_gated(block)
        full = block.conv2.out_channels  # c2 / c3 hold one more, zero, channel at index ``full``
        keep = list(keep)
        self.kept = len(keep)
        width = min(full, -(-self.kept // multiple) * multiple) if self.kept else 0
        keep_t = torch.as_tensor(
            keep + [full] * (width - self.kept), dtype=torch.long, device=c2.weight.device
        )
        self.conv1 = c1
        self.act1, self.act2, self.act3 = _act(block, "act1"), _act(block, "act2"), _act(block, "act3")
        self.conv2: nn.Module | None = None
        self.conv3: nn.Module | None = None
        with torch.no_grad():
            if self.kept:
                # index_select: 3-5x faster than advanced indexing on these weights (CPU)
                self.conv2 = _conv_from(
                    c2, c2.weight.index_select(0, keep_t), c2.bias.index_select(0, keep_t)
                )
                self.conv3 = (
                    c3.select_inputs(keep_t)
                    if isinstance(c3, Pointwise)
                    else _conv_from(c3, c3.weight.index_select(1, keep_t), c3.bias.clone())
                )
            # every filter closed: conv3 sees zeros, the branch is its folded bias
            self.register_buffer("empty_branch", c3.bias.detach().clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv2 is None or self.conv3 is None:
            return self.act3(x + self.empty_branch[None, :, None, None].to(x.dtype))
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


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
    "FoldedBottleneck",
    "FusionLayer",
    "SlicedBottleneck",
    "StaticFusionLayer",
    "bottleneck_masked",
    "fold_block",
    "fold_conv_bn",
    "fold_gated",
    "is_gateable",
]
