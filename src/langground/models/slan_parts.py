"""SLAN's unimodal encoders (Sec. 3.1): word-aligned text features with a [CLS] first, and the vision
encoder's maps (timm ResNet-50 / ViT by name, or ``"tiny"``: a narrow timm ResNet for the CPU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from langground.models.backbones import build_backbone
from langground.models.text_encoders import MiniLMTextEncoder
from langground.ops import distributed as dist_ops
from langground.types import TextBatch


class ScratchTextEncoder(nn.Module):
    """Word embeddings (+ a [MASK] row at ``vocab_size``) + learned positions + a [CLS] + Transformer layers."""

    def __init__(
        self, vocab_size: int, dim: int, layers: int, heads: int, ffn: int, max_len: int, dropout: float
    ):
        super().__init__()
        self.mask_id = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.cls.expand(ids.shape[0], -1, -1), self.embed(ids)], 1)
        x = x + self.pos[:, : x.shape[1]]
        full = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1).bool()
        return self.norm(self.encoder(x, src_key_padding_mask=~full)), full


class MiniLMWords(nn.Module):
    """MiniLM features re-indexed by word column: ``(N, 1 + L, D)`` ([CLS], then each word's first
    sub-word; a word cut by the sub-word limit is masked)."""

    mask_id = -1  # masking is by word string ("[MASK]")

    def __init__(self, dim: int, freeze: bool = False):
        super().__init__()
        self.encoder = MiniLMTextEncoder(dim, freeze=freeze)

    def forward(self, text: TextBatch) -> tuple[Tensor, Tensor]:
        feats = self.encoder(text)
        n, length = text.token_ids.shape
        sub = feats.tokens.shape[1]
        pos = torch.arange(sub, device=feats.tokens.device).expand(n, -1)
        valid = feats.word_index >= 0
        first = torch.full((n, length), sub, device=pos.device, dtype=torch.long)
        first.scatter_reduce_(1, feats.word_index.clamp(0, length - 1), torch.where(valid, pos, sub), "amin")
        found = first < sub
        words = feats.tokens.gather(
            1, first.clamp_max(sub - 1)[..., None].expand(-1, -1, feats.tokens.shape[-1])
        )
        words = words * found[..., None].to(words.dtype)
        mask = torch.cat([found.new_ones(n, 1), found & text.attention_mask.bool()], 1)
        return torch.cat([feats.tokens[:, :1], words], 1), mask


class TinyResNet(nn.Module):
    """A narrow timm ResNet (BasicBlock, one block per stage): C3, C4, C5 at strides 8, 16, 32."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        from timm.models.resnet import BasicBlock, ResNet

        self.net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=0, channels=widths, stem_width=widths[0] // 2)
        self.channels = list(widths[1:])

    def forward(self, images: Tensor) -> list[Tensor]:
        n = self.net
        x = n.layer1(n.maxpool(n.act1(n.bn1(n.conv1(images)))))
        c3 = n.layer2(x)
        c4 = n.layer3(c3)
        return [c3, c4, n.layer4(c4)]


def build_vision(
    name: str, widths: tuple[int, ...], input_size: int, weights: str | None
) -> tuple[nn.Module, list[int]]:
    """``(module images -> [finer maps..., V], channels)``: the last map is ``V``."""
    if name == "tiny":
        net = TinyResNet(widths)
        return net, net.channels
    if name.startswith("vit"):
        net = build_backbone(name, out_indices=(-1,), backbone_weights=weights, img_size=input_size)
    else:
        net = build_backbone(name, out_indices=(2, 3, 4), backbone_weights=weights)
    return net, list(net.channels)


def world(x: Tensor) -> Tensor:
    """Every rank's rows of ``x`` (any shape; dim 1 padded to the largest over ranks), differentiable."""
    if not dist_ops.is_distributed():
        return x
    if x.dim() > 1:
        longest = int(dist_ops.all_gather_cat(torch.tensor([x.shape[1]], device=x.device)).max())
        if longest > x.shape[1]:
            pad = x.new_zeros(x.shape[0], longest - x.shape[1], *x.shape[2:])
            x = torch.cat([x, pad], 1)
    dtype = x.dtype
    flat = x.reshape(x.shape[0], -1).float() if dtype == torch.bool else x.reshape(x.shape[0], -1)
    out = dist_ops.all_gather_ragged(flat)
    out = out.reshape(out.shape[0], *x.shape[1:])
    return out.bool() if dtype == torch.bool else out


__all__ = ["MiniLMWords", "ScratchTextEncoder", "TinyResNet", "build_vision", "world"]
