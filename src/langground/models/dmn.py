"""DMN (Margffoy-Tuay, Pérez, Botero & Arbeláez, ECCV 2018): the Dynamic Multimodal Network for referring
expression segmentation.

- Visual Module (Eq. 1): a timm backbone's N = 5 maps ``I_1..I_5`` at strides 2..32 (DPN-92 in the paper:
  ``conv1_1, conv2_3, conv3_4, conv4_20, conv5_3`` as the release's ``dpn_model.py`` takes them); the SM
  reads ``I_N`` after DPN's final BN + ReLU (``conv5_bn_ac``, which ``features_only`` drops: ``vm_norm``).
- Language Module (Eq. 2-8) and Synthesis Module (Eq. 9-10): ``layers/dmn_synthesis.py``, SRUs of
  ``layers/sru.py``, LOC of ``layers/loc.py``.
- Upsampling Module (Sec. 3.5): ``layers/dmn_upsample.py``; ``upsampling=False`` is the low-resolution
  stage (a 1x1 conv on ``R_N``, bilinear to the input size), as the release's ``high_res=False``.

==========  =============  ==========  ===========  ============  ===========  =====
variant     backbone       WE / SRU    K filters    SM / mSRU     UM widths    input
==========  =============  ==========  ===========  ============  ===========  =====
dmn         dpn92          1000/1000   10           1000 / 1000   512 .. 32    512
dmn_t       resnet18 thin  64 / 64     10           64 / 64       64 .. 8      128
==========  =============  ==========  ===========  ============  ===========  =====

Table 1 ablations: ``use_language=False`` (only VM), ``r_with_embedding=False`` (only h_t),
``um_skips=False`` (no skips), ``num_filters=0`` (no dynamic filters), ``concat_r=False`` (no r_t in
M_t). ``train_only_um=True`` freezes everything but the UM (the second stage). Sources of every choice:
docs/fidelity.md ("DMN").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import CheckpointError, LanggroundError
from langground.layers.dmn_loss import SoftIoULoss
from langground.layers.dmn_synthesis import LanguageModule, SynthesisModule, filter_responses
from langground.layers.dmn_upsample import UpsamplingModule
from langground.layers.loc import LOC_CHANNELS, spatial_map
from langground.layers.sru import ACTIVATIONS
from langground.models.backbones import build_backbone, read_state_dict
from langground.models.base import GroundingModel
from langground.models.heads import NoTargetHead
from langground.registry import register_model
from langground.tasks import get_task
from langground.types import TextBatch


@dataclass
class DMNConfig:
    """Everything needed to rebuild a DMN (``create_model(name, **asdict)``)."""

    task: str = "res"
    vocab_size: int = 10000
    num_answers: int = 0
    input_size: int = 512  # the release's --size 512
    max_text_length: int = 20
    backbone: str = "dpn92"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None  # a local timm / torchvision checkpoint of the classifier
    init_weights: str | None = None  # a DMN checkpoint (dir or .safetensors), e.g. the low-res stage's
    vm_norm: bool = True  # BN + ReLU on I_N before the SM (DPN's conv5_bn_ac)
    # Language Module (Sec. 4.3): WE 1000, 2-layer SRU of 1000 (the release's README runs 3 layers)
    emb_dim: int = 1000
    hidden_dim: int = 1000
    lang_layers: int = 2
    sru_activation: str = "tanh"  # g of Eq. 6: tanh (SRU v1, the release) | sigmoid (Eq. 6's text)
    sru_dropout: float = 0.0
    num_filters: int = 10  # K; 0: the "no dynamic filters" ablation
    # Synthesis Module: 1000 1x1 filters, 3-layer mSRU of 1000 (the release's default: 1005)
    mixed_dim: int = 1000
    msru_hidden: int = 1000
    msru_layers: int = 3
    msru_layout: str = "paper"  # "paper" (words per pixel) | "official" (the release's raster sequence)
    # Upsampling Module
    upsampling: bool = True  # False: the low-resolution stage
    um_channels: tuple[int, ...] = (512, 256, 128, 64, 32)
    um_order: str = "conv_up"  # paper: conv then x2 | "up_conv": the release's
    um_act: str = "none"  # the release's default (no non-linearity between stages)
    train_only_um: bool = False
    # Table 1 ablations
    use_language: bool = True
    r_with_embedding: bool = True
    um_skips: bool = True
    concat_r: bool = True
    # gres: no-target head on R_N and r_t (ours: the paper has no gres)
    head_hidden: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        get_task(self.task)
        self.um_channels = tuple(int(c) for c in self.um_channels)
        if self.sru_activation not in ACTIVATIONS:
            raise LanggroundError(
                f"sru_activation {self.sru_activation!r}: expected one of {', '.join(ACTIVATIONS)}"
            )
        if self.num_filters < 0:
            raise LanggroundError(f"num_filters {self.num_filters}: expected >= 0 (0: no dynamic filters)")
        if not self.use_language and self.task != "res":
            raise LanggroundError(
                f"use_language=False (Table 1's 'only VM') is a res ablation, not {self.task}"
            )
        if self.train_only_um and not self.upsampling:
            raise LanggroundError("train_only_um=True needs upsampling=True (it trains the UM only)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DMN(GroundingModel):
    """DMN with the head(s) of its task; see the module docstring for variants and switches."""

    supported_tasks = ("res", "gres")
    size_divisor = 32

    def __init__(self, cfg: DMNConfig):
        super().__init__(cfg.task, cfg.input_size, cfg.max_text_length, cfg.vocab_size, 0, cfg.to_dict())
        self.config = cfg
        self.vm = build_backbone(
            cfg.backbone, out_indices=tuple(range(-5, 0)), backbone_weights=cfg.backbone_weights,
            **cfg.backbone_kwargs,
        )  # fmt: skip
        dims = self.vm.channels
        c_n = dims[-1]
        self.vm_norm = (
            nn.Sequential(nn.BatchNorm2d(c_n), nn.ReLU(inplace=True)) if cfg.vm_norm else nn.Identity()
        )
        vis_channels = c_n + LOC_CHANNELS
        if cfg.use_language:
            self.lm = LanguageModule(
                cfg.vocab_size, cfg.emb_dim, cfg.hidden_dim, cfg.lang_layers, cfg.num_filters, vis_channels,
                cfg.r_with_embedding, cfg.sru_activation, cfg.sru_dropout,
            )  # fmt: skip
            self.sm = SynthesisModule(
                vis_channels, self.lm.out_dim, cfg.num_filters, cfg.mixed_dim, cfg.msru_hidden,
                cfg.msru_layers, cfg.concat_r, cfg.msru_layout, cfg.sru_activation, cfg.sru_dropout,
            )  # fmt: skip
        else:  # Table 1 "only VM": [I_N, LOC] -> 1x1 conv in place of the SM
            self.vm_head = nn.Conv2d(vis_channels, cfg.msru_hidden, 1)
        if cfg.upsampling:
            self.um = UpsamplingModule(
                cfg.msru_hidden, dims, cfg.um_channels, cfg.um_skips, cfg.um_order, cfg.um_act
            )
        else:
            self.output_collapse = nn.Conv2d(cfg.msru_hidden, 1, 1)
        if "no_target" in self.spec.heads:
            self.no_target_head = NoTargetHead(cfg.msru_hidden, self.lm.out_dim, cfg.head_hidden, cfg.dropout)
        if cfg.vm_norm and cfg.backbone_weights:
            self._load_vm_norm(cfg.backbone_weights)
        if cfg.init_weights:
            self._load_init(cfg.init_weights)
        if cfg.train_only_um:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("um."))

    # ------------------------------------------------------------------ weights
    def _load_vm_norm(self, path: str) -> None:
        """DPN's ``conv5_bn_ac.bn`` from the classifier checkpoint (features_only drops it)."""
        state = read_state_dict(path)
        bn = {k.split("conv5_bn_ac.bn.", 1)[1]: v for k, v in state.items() if "conv5_bn_ac.bn." in k}
        if bn:
            self.vm_norm[0].load_state_dict(bn)

    def _load_init(self, path: str) -> None:
        """Every weight of a DMN checkpoint whose name and shape fit (the UM is new in the second stage)."""
        p = Path(path)
        p = p / "model.safetensors" if p.is_dir() else p
        if not p.is_file():
            raise CheckpointError(
                f"init_weights: {path}: no such checkpoint (a run's best/ or a .safetensors)"
            )
        state = read_state_dict(p)
        own = self.state_dict()
        fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fit:
            raise CheckpointError(f"init_weights: {path}: no weight fits this DMN (is it a DMN checkpoint?)")
        self.load_state_dict(fit, strict=False)

    def train(self, mode: bool = True) -> DMN:
        super().train(mode)
        if self.config.train_only_um and mode:  # the frozen part keeps its BN statistics (release: eval())
            for name, child in self.named_children():
                if name != "um":
                    child.eval()
        return self

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"mask_iou": 0.0}  # the release's --iou-loss; off by default (BCE)

    def build_loss_modules(self) -> dict[str, nn.Module]:
        return {"mask_iou": SoftIoULoss()}

    # ------------------------------------------------------------------ forward
    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        cfg = self.config
        feats = self.vm(images)  # [I_1 .. I_N], Eq. 1
        if text.image_index is not None:  # the VM does not read the text: each image once
            feats = [text.images_per_text(f) for f in feats]
        i_n = self.vm_norm(feats[-1])
        vis = torch.cat((i_n, spatial_map(*i_n.shape[-2:], i_n).expand(i_n.shape[0], -1, -1, -1)), dim=1)
        out: dict[str, Any] = {}
        aux: dict[str, Any] = {}
        mask = text.attention_mask.bool()
        if cfg.use_language:
            r, filters = self.lm(text.token_ids, mask)
            responses = None if filters is None else filter_responses(vis, filters)  # F_t
            r_n = self.sm(vis, r, mask, responses)  # R_N, Eq. 10
            if responses is not None:  # --explain: each filter's response per word
                keep = mask[:, :, None, None].to(responses.dtype)
                aux["attention"] = {
                    f"filter{k + 1}": responses[:, :, k] * keep for k in range(cfg.num_filters)
                }
        else:
            r, r_n = None, self.vm_head(vis)
        size = (images.shape[-2], images.shape[-1])
        if cfg.upsampling:
            r_n_in = r_n.detach() if cfg.train_only_um else r_n
            logits = self.um(r_n_in, feats, size)
        else:
            logits = F.interpolate(self.output_collapse(r_n), size=size, mode="bilinear", align_corners=False)
        out["pred_masks"] = logits.float()
        if "no_target" in self.spec.heads:
            assert r is not None
            out["pred_no_target"] = self.no_target_head(r_n, r, mask)
        out["aux"] = aux
        return out


# ----------------------------------------------------------------------------- registered variants

_FIELDS = {f.name for f in dataclasses.fields(DMNConfig)}

_PAPER: dict[str, Any] = {}
_T: dict[str, Any] = {
    "backbone": "resnet18",
    "backbone_kwargs": {"channels": [32, 64, 96, 128]},
    "input_size": 128,
    "vocab_size": 100,
    "emb_dim": 64,
    "hidden_dim": 64,
    "mixed_dim": 64,
    "msru_hidden": 64,
    "um_channels": (64, 32, 32, 16, 8),
    "head_hidden": 64,
}


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> DMN:
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise LanggroundError(
            f"unknown DMN option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    return DMN(DMNConfig(**{**defaults, **kwargs}))


@register_model
def dmn(**kwargs: Any) -> DMN:
    """DMN as the paper trains it: DPN-92, WE/SRU 1000, K = 10, SM/mSRU 1000, the UM, 512^2."""
    return _build(_PAPER, kwargs)


@register_model
def dmn_t(**kwargs: Any) -> DMN:
    """Tiny DMN for the synthetic world on CPU (ours): a thin timm ResNet-18, 64-d language and mSRU, 128^2."""
    return _build(_T, kwargs)
