"""Image backbones from timm: multi-scale feature maps for any grounding model.

``build_backbone("resnet50")`` wraps ``timm.create_model(name, pretrained=False, features_only=True)``:
ResNet-50/101 (TransVG, RefTR, LADS), DPN-92 (DMN), Swin-T and the rest of timm's CNNs and hierarchical
transformers. Weights are never downloaded: the model starts from random init, or ``backbone_weights``
loads a local torchvision / timm checkpoint (``.pth``, ``.pt``, ``.safetensors``) into it.
``freeze_bn`` swaps BatchNorm for torchvision's ``FrozenBatchNorm2d`` (DETR / TransVG train with frozen
statistics); ``frozen_stages`` also stops gradients through the first stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from langground.errors import CheckpointError, LanggroundError

__all__ = ["Backbone", "build_backbone", "load_backbone_weights", "read_state_dict"]

_SHOWN = 3  # keys quoted in an error message


class Backbone(nn.Module):
    """A timm feature extractor returning NCHW maps at the strides in :attr:`reductions`.

    Attributes:
        name: the timm model name.
        out_indices: the feature levels returned (non-negative, 0 = the stem's or first stage's output).
        channels: channels of each returned map.
        reductions: stride of each returned map w.r.t. the input image.
    """

    def __init__(self, name: str, *, out_indices: Sequence[int] = (-3, -2, -1), **timm_kwargs) -> None:
        super().__init__()
        import timm  # the optional extra ``vision``: imported here so that langground imports without it

        if not timm.is_model(name.split(".", 1)[0]):
            raise LanggroundError(f"backbone: unknown timm model {name!r} (see timm.list_models())")
        # The full model on the meta device (no memory, no init) tells the feature levels and every key a
        # checkpoint of it may hold, including the classifier and the stages that features_only drops.
        with torch.device("meta"):
            full = timm.create_model(name, pretrained=False, **timm_kwargs)
        self._level_modules = [info["module"] for info in full.feature_info]
        self._full_keys = frozenset(full.state_dict())
        del full
        self.name = name
        self.out_indices = _resolve(out_indices, len(self._level_modules), "out_indices")
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=self.out_indices, **timm_kwargs
        )
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        self._nhwc = getattr(self.body, "output_fmt", "NCHW") == "NHWC"  # swin & co. return NHWC
        self._frozen: list[str] = []  # children of ``body`` in eval mode without gradients

    def freeze(self, frozen_stages: int = -1, freeze_bn: bool = False) -> None:
        """Freeze levels ``0..frozen_stages`` (parameters and BatchNorm statistics) and/or every BatchNorm."""
        if freeze_bn:
            from timm.layers import freeze_batch_norm_2d  # torchvision's FrozenBatchNorm2d (+ timm's BN-act)

            self.body = freeze_batch_norm_2d(self.body)
        if frozen_stages >= 0:
            last = _resolve([frozen_stages], len(self._level_modules), "frozen_stages")[0]
            # features_only flattens top-level Sequentials: level module "layers.0" is child "layers_0"
            child = self._level_modules[last].replace(".", "_", 1)
            names = [n for n, _ in self.body.named_children()]
            if child not in names:
                raise LanggroundError(
                    f"backbone {self.name!r}: frozen_stages is not supported for this model"
                )
            self._frozen = names[: names.index(child) + 1]
            for n in self._frozen:
                self.body.get_submodule(n).requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for n in self._frozen:  # frozen stages keep their BatchNorm statistics
            self.body.get_submodule(n).eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.body(images)
        return [f.permute(0, 3, 1, 2) for f in feats] if self._nhwc else list(feats)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, reductions={self.reductions}"


def _resolve(indices: Sequence[int], levels: int, field: str) -> tuple[int, ...]:
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -levels <= i < levels:
            raise LanggroundError(f"backbone: {field} {list(indices)} must be ints in [-{levels}, {levels})")
        out.append(i % levels)
    return tuple(out)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file holding one, bare or under
    ``"state_dict"`` / ``"model"`` (training checkpoints); a DDP ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone_weights: {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:  # weights_only: never run a pickle's code
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is the file's fault
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"backbone_weights: {path}: cannot read it as a state dict ({msg[:160]}); save the bare state "
            "dict with torch.save(model.state_dict(), path) or safetensors"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        got = list(obj)[:_SHOWN] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"backbone_weights: {path}: expected a state dict (name -> tensor), bare or under "
            f"'state_dict' / 'model', got {got}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a torchvision or timm checkpoint of the full classifier into ``backbone``.

    Keys are the full model's (torchvision's ResNets name their layers like timm's); keys of parts that
    ``features_only`` drops (classifier, stages after the last returned level) are ignored. Missing or
    unknown keys and shape mismatches are a one-line :class:`CheckpointError`.
    """
    state = read_state_dict(path)
    target = backbone.body.state_dict()
    mapped, unexpected = {}, []
    for key, value in state.items():
        # features_only flattens top-level Sequentials: "layers.0.x" is "layers_0.x" in the feature model
        name = key if key in target else key.replace(".", "_", 1)
        if name in target:
            mapped[name] = value
        elif key not in backbone._full_keys:
            unexpected.append(key)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"backbone_weights: {path} does not fit timm {backbone.name!r}: {len(missing)} missing keys "
            f"{missing[:_SHOWN]}, {len(unexpected)} unexpected keys {unexpected[:_SHOWN]}"
        )
    for name, value in mapped.items():
        if value.shape != target[name].shape:
            raise CheckpointError(
                f"backbone_weights: {path}: {name} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target[name].shape)} in timm {backbone.name!r}"
            )
    backbone.body.load_state_dict(mapped, strict=False)


def build_backbone(
    name: str,
    *,
    out_indices: Sequence[int] = (-3, -2, -1),
    backbone_weights: str | Path | None = None,
    frozen_stages: int = -1,
    freeze_bn: bool = False,
    **timm_kwargs,
) -> Backbone:
    """A timm backbone returning the feature maps of levels ``out_indices`` (default: the last three).

    Args:
        name: a timm model name (``resnet50``, ``resnet101``, ``dpn92``, ``swin_tiny_patch4_window7_224``).
        out_indices: feature levels as in timm (negative counts from the last); ResNets have 5 levels
            (strides 2..32), Swin 4 (strides 4..32).
        backbone_weights: a local torchvision / timm checkpoint of the classifier (see
            :func:`load_backbone_weights`); ``None`` keeps the random init. Never downloads.
        frozen_stages: freeze the parameters (and BatchNorm statistics) of every level up to and including
            this one (same indexing as ``out_indices``; ``-1``: none, ``1`` on a ResNet: stem + layer1).
        freeze_bn: replace every BatchNorm by ``FrozenBatchNorm2d`` (statistics and affine fixed).
        **timm_kwargs: passed to ``timm.create_model`` (``img_size=`` for Swin, ``drop_path_rate=``, ...).
    """
    backbone = Backbone(name, out_indices=out_indices, **timm_kwargs)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    backbone.freeze(frozen_stages, freeze_bn)  # after loading: FrozenBatchNorm2d copies the statistics
    return backbone
