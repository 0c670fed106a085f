"""LADS's plain parts: the ResNet supernet backbone and the static subnet modules (no gates inside)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from langground.errors import CheckpointError
from langground.models.backbones import read_state_dict


def build_resnet(cfg: Any) -> nn.Module:
    import timm
    from timm.models.resnet import Bottleneck, ResNet

    if cfg.backbone == "bottleneck":
        net = ResNet(
            Bottleneck,
            cfg.depths,
            num_classes=0,
            channels=cfg.widths,
            stem_width=cfg.stem_width,
            output_stride=cfg.output_stride,
        )
    else:
        net = timm.create_model(
            cfg.backbone, pretrained=False, num_classes=0, output_stride=cfg.output_stride
        )
    if cfg.backbone_weights:
        state = {k: v for k, v in read_state_dict(cfg.backbone_weights).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise CheckpointError(
                f"backbone_weights: {cfg.backbone_weights} does not fit {cfg.backbone!r}: {len(missing)} "
                f"missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
            )
    return net


def resnet_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``("layer<s>.<i>", block)`` for every residual block of a timm / torchvision ResNet, in order."""
    return [
        (f"{s}.{i}", b)
        for s in ("layer1", "layer2", "layer3", "layer4")
        for i, b in enumerate(net.get_submodule(s))
    ]


class LADSSubnet(nn.Module):
    """A static subnet: ``(images, text tokens, text mask) -> boxes``; no gates, nothing closed computed."""

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        proj: nn.Module,
        pos: nn.Module,
        fusion: list[nn.Module],
        head: nn.Module,
    ):
        super().__init__()
        self.stem, self.blocks = stem, nn.Sequential(*blocks)
        self.proj, self.pos, self.fusion, self.head = proj, pos, nn.ModuleList(fusion), head

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        # channels_last: oneDNN's native layout (no per-conv reorders; max-pool / BN ~10x faster on CPU)
        v = self.proj(self.blocks(self.stem(images.contiguous(memory_format=torch.channels_last))))
        grid = v.shape[-2:]
        v = (v + self.pos(*grid, v.device, v.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([tokens.to(v.dtype), v], 1)
        pad = ~torch.cat([mask, mask.new_ones(mask.shape[0], v.shape[1])], 1)
        for layer in self.fusion:
            x = layer(x, pad)
        return self.head(x, *grid)[0]["pred_boxes"]


class ExpressionSubnet(nn.Module):
    """One expression's subnet with its (precomputed) text features: ``images -> (N, 4)`` boxes."""

    def __init__(self, subnet: LADSSubnet, tokens: Tensor, mask: Tensor):
        super().__init__()
        self.subnet = subnet
        self.register_buffer("tokens", tokens.detach().clone())
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, images: Tensor) -> Tensor:
        n = images.shape[0]
        return self.subnet(images, self.tokens.expand(n, -1, -1), self.mask.expand(n, -1))


__all__ = ["ExpressionSubnet", "LADSSubnet", "build_resnet", "resnet_blocks"]
