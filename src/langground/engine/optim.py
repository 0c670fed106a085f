"""Optimiser and learning-rate schedule from the config (torch.optim underneath).

The schedule is a ``LambdaLR`` stepped once per optimiser step: linear warm-up from
``warmup_start * lr`` over ``warmup_epochs``, then cosine decay to ``min_lr_ratio * lr`` at the last step,
step decay by ``gamma`` at ``milestones`` (epochs), or constant. LaConvNet (§5.2): Adam, lr 1e-4,
3 warm-up epochs of 25, cosine decay.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from langground.config import OptimConfig, ScheduleConfig

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Two groups: decayed weights and (optionally) biases / norm / embedding parameters without decay."""
    if weight_decay == 0 or not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (
                no_decay
                if isinstance(module, _NO_DECAY_TYPES) or name.endswith("bias") or p.ndim <= 1
                else decay
            ).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def lr_factor(step: int, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps``."""
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    if step < warmup:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup
    if cfg.name == "cosine":
        span = max(total_steps - warmup - 1, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        bounds = sorted(int(round(m * steps_per_epoch)) for m in cfg.milestones)
        return cfg.gamma ** bisect.bisect_right(bounds, step)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps, steps_per_epoch))
