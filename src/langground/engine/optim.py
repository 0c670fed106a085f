"""Optimiser and learning-rate schedule from the config (torch.optim underneath).

Parameter groups (``optim.groups``): each trainable parameter joins the first group one of whose ``fnmatch``
patterns matches its name, the rest form the default group (``optim.lr``, ``optim.weight_decay``). LADS,
RefTR and TransVG train the backbone and text encoder at 1e-5 and the rest at 1e-4. Every group is split
into a decayed half and a ``/no_decay`` half (biases, norm layers, embeddings; ``no_decay_norm_bias``)
when its weight decay is not 0. Each torch group carries a ``"name"`` (``default``, ``backbone``,
``backbone/no_decay``, ...); the default group comes first, so ``param_groups[0]`` is the base lr.

The schedule is a ``LambdaLR`` stepped once per optimiser step: linear warm-up from
``warmup_start * lr`` over ``warmup_epochs``, then cosine decay to ``min_lr_ratio * lr`` at the last step,
step decay by ``gamma`` at ``milestones`` (epochs), or constant. It scales every group's own base lr by
the same factor. LaConvNet (§5.2): Adam, lr 1e-4, 3 warm-up epochs of 25, cosine decay.
``plateau`` (:class:`PlateauLR`, DMN §4.3: "a scheduler that waits 2 epochs for loss stagnation to
reduce the learning rate by a factor of 10") multiplies by ``gamma`` when the mean training loss of
``patience`` epochs in a row has not improved on the best epoch (torch ``ReduceLROnPlateau``'s ``rel``
threshold 1e-4); the training step feeds it each step's loss through ``observe``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from langground.config import OptimConfig, ParamGroupConfig, ScheduleConfig
from langground.errors import LanggroundError

__all__ = ["PlateauLR", "build_optimizer", "build_scheduler", "group_lrs", "lr_factor", "param_groups"]

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Embedding)
_SHOWN = 4  # parameter names quoted in an error


def _named_trainable(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter, bool]], list[str]]:
    """``(name, parameter, exempt from decay)`` of every trainable parameter once, and every name."""
    out, names, seen = [], [], set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # shared (tied) parameters: the first name, as model.named_parameters()
                continue
            seen.add(id(p))
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            names.append(name)
            if p.requires_grad:
                exempt = isinstance(module, _NO_DECAY_TYPES) or p_name.endswith("bias") or p.ndim <= 1
                out.append((name, p, exempt))
    return out, names


def _group_name(i: int, group: ParamGroupConfig, taken: set[str]) -> str:
    """``backbone`` for ``[backbone.*]``, ``backbone+text_encoder`` for two patterns; ``group{i}`` else."""
    name = getattr(group, "name", None) or "+".join(p.split("*")[0].rstrip(".") for p in group.params)
    if not name or name in taken or name == "default":
        name = f"group{i}"
    taken.add(name)
    return name


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """torch parameter groups: ``params``, ``lr``, ``weight_decay`` and ``name``; default group first."""
    params, names = _named_trainable(model)
    for i, group in enumerate(cfg.groups):
        if not group.params:
            raise LanggroundError(
                f"optim.groups[{i}].params is empty; expected fnmatch patterns like backbone.*"
            )
        for pattern in group.params:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise LanggroundError(
                    f"optim.groups[{i}].params: {pattern!r} matches no parameter of the model; "
                    f"parameters are named like {names[:_SHOWN]}"
                )
    taken: set[str] = set()
    settings = [("default", cfg.lr, cfg.weight_decay)] + [
        (
            _group_name(i, g, taken),
            g.lr if g.lr is not None else cfg.lr * g.lr_scale,
            g.weight_decay if g.weight_decay is not None else cfg.weight_decay,
        )
        for i, g in enumerate(cfg.groups)
    ]
    members: list[list[tuple[nn.Parameter, bool]]] = [[] for _ in settings]
    for name, p, exempt in params:
        slot = next(
            (i + 1 for i, g in enumerate(cfg.groups) if any(fnmatchcase(name, pt) for pt in g.params)), 0
        )
        members[slot].append((p, exempt))
    groups = []
    for (name, lr, wd), ps in zip(settings, members, strict=True):
        split = wd != 0 and cfg.no_decay_norm_bias
        decay = [p for p, exempt in ps if not (split and exempt)]
        groups.append({"params": decay, "lr": lr, "weight_decay": wd, "name": name})
        if split:
            no_decay = [p for p, exempt in ps if exempt]
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current lr of each named group (a ``/no_decay`` half shares its group's lr), for logging."""
    out: dict[str, float] = {}
    for i, g in enumerate(optimizer.param_groups):
        out.setdefault(str(g.get("name", f"group{i}")).split("/")[0], g["lr"])
    return out


def lr_factor(
    step: int, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int, budget_spent: float = 0.0
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps``.

    ``budget_spent``: the fraction of the time budget used so far (``schedule.clock: budget``); the
    cosine then runs on whichever of steps and time is further along.
    """
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    if step < warmup:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup
    if cfg.name == "cosine":
        span = max(total_steps - warmup - 1, 1)
        progress = min(max(max(step - warmup, 0) / span, budget_spent), 1.0)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        bounds = sorted(int(round(m * steps_per_epoch)) for m in cfg.milestones)
        return cfg.gamma ** bisect.bisect_right(bounds, step)
    return 1.0


class PlateauLR(LambdaLR):
    """Warm-up, then ``gamma ** k`` after the k-th plateau of the epoch mean loss given to :meth:`observe`."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int
    ):
        self.patience, self.gamma = int(cfg.patience), float(cfg.gamma)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.scale, self.best, self.bad_epochs, self.loss_sum, self.loss_count = 1.0, math.inf, 0, 0.0, 0
        warm = dataclasses.replace(cfg, name="constant")
        super().__init__(
            optimizer, lambda step: lr_factor(step, warm, total_steps, steps_per_epoch) * self.scale
        )

    def observe(self, loss: float) -> None:
        """One optimiser step's loss; at an epoch's last step, the plateau rule (used from the next step)."""
        self.loss_sum, self.loss_count = self.loss_sum + float(loss), self.loss_count + 1
        if self.loss_count < self.steps_per_epoch:
            return
        mean = self.loss_sum / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        if mean < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = mean, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale, self.bad_epochs = self.scale * self.gamma, 0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    total_steps: int,
    steps_per_epoch: int,
    budget_spent: Callable[[], float] | None = None,
) -> LambdaLR:
    """``budget_spent``: the fraction of the run's time budget used so far, read at every step when
    ``cfg.clock == "budget"``."""
    if cfg.name == "plateau":
        return PlateauLR(optimizer, cfg, total_steps, steps_per_epoch)
    spent = budget_spent if cfg.clock == "budget" and budget_spent is not None else (lambda: 0.0)
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps, steps_per_epoch, spent()))
