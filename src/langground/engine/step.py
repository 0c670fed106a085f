"""One optimiser step: ``run.grad_accum`` micro-batches under autocast (the model's ``training_step``
hook, else ``criterion(forward(**batch.model_inputs()), targets)``), scaled backward with the DDP gradient
sync on the last micro-batch only, the non-finite checks, clipping, the update, the schedule and EMA.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from langground.engine import builders
from langground.engine import distributed as D
from langground.engine.train_state import Snapshot

if TYPE_CHECKING:
    from langground.engine.trainer import Trainer


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stopped before applying that step."""


def raise_diverged(logger: Any, step: int, last_checkpoint: Any, values: dict[str, float], what: str) -> None:
    """Log the failed step ``step`` and raise :class:`TrainingDiverged` saying where the last good state is."""
    terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if not (k == "lr" or k.startswith("lr/")))
    where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
    message = (
        f"step {step}: {what}{f' ({terms})' if terms else ''}; training stopped before this "
        f"step, {where}. Try a lower optim.lr, run.clip_grad_norm, or run.amp=none"
    )
    logger.log("error", step, dict(values), message=message)
    raise TrainingDiverged(message)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` of group 0 and, with several named groups (``optim.groups``), ``lr/<name>`` of each; the
    ``<name>/no_decay`` half of a group shares its lr and is not repeated."""
    groups = optimizer.param_groups
    named: dict[str, float] = {}
    for g in groups:
        if g.get("name"):
            named.setdefault(str(g["name"]).split("/")[0], g["lr"])
    lrs = {"lr": groups[0]["lr"]}
    if len(named) > 1:
        lrs.update({f"lr/{name}": lr for name, lr in named.items()})
    return lrs


def micro_losses(t: Trainer, batch: Any) -> dict[str, torch.Tensor]:
    """One micro-batch's losses (``loss`` and the ``loss_*`` terms)."""
    custom = getattr(t.model, "training_step", None)  # the bare model's hook, called with the DDP forward
    if callable(custom):
        return custom(batch, t.criterion, t.ddp)
    return t.criterion(t.ddp(**batch.model_inputs()), batch.targets)


class OptimiserStep:
    """Runs the steps of a :class:`Trainer`; knows, for a KeyboardInterrupt, whether one is in flight
    (``snapshot``: its start, single process) and whether it is inside the update (``updating``)."""

    def __init__(self) -> None:
        self.updating = False  # inside the optimiser update: no consistent state to save
        self.snapshot: Snapshot | None = None

    def __call__(self, t: Trainer, batches: Iterator[Any]) -> tuple[dict[str, float], dict[str, float]]:
        """One step (``t.progress.step`` += 1); returns the mean loss terms (and ``grad_norm``) and the
        learning rates this step used."""
        run = t.config.run
        # A KeyboardInterrupt before the update can still save the previous step: rewound to this.
        self.snapshot = None if t.info.enabled else Snapshot.take(t.model, t.criterion)
        t.ddp.train()
        t.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(run.grad_accum):
            batch = next(batches).to(t.device)
            sync = micro == run.grad_accum - 1
            ctx = t.ddp.no_sync() if (t.info.enabled and not sync) else contextlib.nullcontext()
            with ctx:
                with builders.autocast(t.device, t.precision):
                    losses = micro_losses(t, batch)
                t.scaler.scale(losses["loss"].float() / run.grad_accum).backward()
            for k, v in losses.items():
                if k == "loss" or k.startswith("loss_"):
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / run.grad_accum
        values = {k: float(v) for k, v in sums.items()}
        if D.any_rank(not math.isfinite(values["loss"]), t.device):
            t.diverged(values, "non-finite loss")
        lrs = learning_rates(t.optimizer)  # the ones this step uses
        if run.clip_grad_norm is not None:
            t.scaler.unscale_(t.optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), run.clip_grad_norm))
            values["grad_norm"] = norm
            # With a scaler an inf norm only skips the step; without one it would poison the weights.
            # Gradients are all-reduced, so every rank sees the same norm.
            if not math.isfinite(norm) and not t.precision.scaler:
                t.diverged({**values, **lrs}, "non-finite gradient norm")
        self.updating = True
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step()
        observe = getattr(t.scheduler, "observe", None)  # loss-driven schedules (plateau)
        if observe is not None:  # every rank decides on the same (all-reduced) loss
            observe(D.all_reduce_mean({"loss": values["loss"]}, t.device)["loss"])
        if t.ema is not None:
            t.ema.update(t.model)
        t.progress.step += 1
        self.updating = False
        self.snapshot = None
        return values, lrs
