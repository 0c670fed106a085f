"""Inference preparation for CPU/GPU latency: BN folding, channels-last, bf16, torch.compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from langground._hardware import cpu_bf16_native
from langground.layers.conv import fuse_bn_

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_supported(device: str = "cpu") -> bool:
    """True when bf16 matmuls run natively (CPU: AVX512-BF16 / AMX via oneDNN; CUDA: sm80+)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_bf16_native()


def prepare_for_inference(
    model: nn.Module,
    *,
    fuse_bn: bool = True,
    channels_last: bool = False,
    dtype: str = "fp32",
    compile: bool = False,
) -> Callable[..., Any]:
    """Turn ``model`` (in place) into an inference callable ``fn(images, text) -> outputs``.

    - ``fuse_bn``: fold BatchNorms into the preceding convs (modules with ``fuse_bn_()``);
    - ``channels_last``: NHWC weights (inputs must be made channels-last too: :func:`prepare_inputs`);
    - ``dtype="bf16"``: bf16 weights and activations (text encoders with recurrent layers included);
    - ``compile``: ``torch.compile`` of the unchecked forward, with Inductor's "freezing" so constant
      weights are folded and pre-packed for oneDNN.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model.eval()
    if fuse_bn:
        fuse_bn_(model)
    if dtype != "fp32":
        model.to(DTYPES[dtype])
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fn: Callable[..., Any] = getattr(model, "forward_unchecked", model)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fn = torch.compile(fn, dynamic=False)
    return fn


def prepare_inputs(images: torch.Tensor, *, channels_last: bool = False, dtype: str = "fp32") -> torch.Tensor:
    images = images.to(DTYPES[dtype])
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
