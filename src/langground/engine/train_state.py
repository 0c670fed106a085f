"""The trainer state: what an exact resume restores besides the weights.

A checkpoint's ``trainer_state.pt`` holds the optimiser, schedule, grad scaler and EMA, the raw weights
(when the saved ones are EMA), the position (step, train seconds, last validation, best so far) and, per
rank (lists indexed by rank), the RNG states and the criterion's state (loss-module buffers, e.g. a
momentum queue). The data order is a function of ``(seed, epoch, index)`` and needs no state.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from langground.engine import checkpoint as ckpt_io
from langground.engine.distributed import DistInfo, all_gather_object
from langground.engine.ema import ModelEma
from langground.errors import LanggroundError

# --------------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _detached(state: dict[str, Any], cpu: bool) -> dict[str, Any]:
    """A copy of a module's ``state_dict()`` (on the CPU, or where it lies) that later updates do not reach."""

    def copied(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.detach().to("cpu", copy=True) if cpu else v.detach().clone()
        return copy.deepcopy(v)

    return {k: copied(v) for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# the state of a step in flight


@dataclass
class Snapshot:
    """The state at the start of a step: a KeyboardInterrupt inside the step rewinds to it and saves
    the previous step (single process). The step's forward moves the model's buffers (BatchNorm
    statistics) and the loss can move the criterion's (a queue), both before the optimiser update."""

    rng: dict[str, Any]
    buffers: dict[str, Tensor]
    criterion: dict[str, Any]

    @classmethod
    def take(cls, model: nn.Module, criterion: nn.Module) -> Snapshot:
        buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        return cls(capture_rng(), buffers, _detached(criterion.state_dict(), cpu=False))

    def restore(self, model: nn.Module, criterion: nn.Module) -> None:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(self.buffers[name])
        criterion.load_state_dict(self.criterion)
        restore_rng(self.rng)


def _one_line(e: Exception) -> str:
    """``load_state_dict`` says what is wrong on the lines after its first ("Error(s) in loading ...:")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]).rstrip(".")[:300]


def non_finite_weights(model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]


# --------------------------------------------------------------------------------------------------
# the state dict


@dataclass
class Progress:
    """Where a run stands. All but ``last_checkpoint`` (found again on resume) is saved."""

    step: int = 0
    train_seconds: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    last_eval_step: int = -1
    last_checkpoint: Path | None = None


@dataclass
class TrainState:
    """The objects whose state a resumed run restores, and where the run stands."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    ema: ModelEma | None
    info: DistInfo
    steps_per_epoch: int
    metric: str
    progress: Progress = field(default_factory=Progress)

    def state_dict(self) -> dict[str, Any]:
        """The trainer state of this moment. Collective: every rank takes part (RNG and criterion
        state are gathered from each rank)."""
        p = self.progress
        per_rank = {"rng": capture_rng(), "criterion": _detached(self.criterion.state_dict(), cpu=True)}
        gathered = all_gather_object(per_rank)
        state: dict[str, Any] = {
            "step": p.step,
            "epoch": p.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.info.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": [g["rng"] for g in gathered],
            "criterion": [g["criterion"] for g in gathered],
            "best": {"metric": self.metric, "value": p.best_value, "step": p.best_step},
            "last_eval_step": p.last_eval_step,
            "train_seconds": p.train_seconds,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["model"] = self.model.state_dict()
        return state

    def load(self, checkpoint: Path) -> None:
        """Restore everything from ``checkpoint`` (a step directory); rank r takes its own RNG and
        criterion state. One-line LanggroundError when the checkpoint does not fit this run."""
        state = ckpt_io.load_trainer_state(checkpoint, map_location="cpu")
        rank = self.info.rank
        try:
            if "model" in state:
                self.model.load_state_dict(state["model"])
            else:
                ckpt_io.load_weights(self.model, checkpoint / ckpt_io.WEIGHTS)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                if "ema" not in state:
                    raise LanggroundError("the run kept no EMA but the config asks for one (run.ema)")
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise LanggroundError(
                f"{checkpoint}: cannot resume from this checkpoint: {_one_line(e)}"
            ) from None
        if int(state.get("world_size", 1)) != self.info.world_size:
            raise LanggroundError(
                f"{checkpoint}: the run used {state.get('world_size')} process(es); resume it with the same "
                "number"
            )
        if "criterion" in state:  # checkpoints from before stateful losses have none
            try:
                self.criterion.load_state_dict(state["criterion"][rank])
            except (RuntimeError, KeyError, ValueError) as e:
                raise LanggroundError(f"{checkpoint}: cannot resume the loss state: {_one_line(e)}") from None
        p = self.progress
        p.step = int(state["step"])
        p.train_seconds = float(state.get("train_seconds", 0.0))
        best = state.get("best") or {}
        p.best_value, p.best_step = best.get("value"), best.get("step")
        p.last_eval_step = int(state.get("last_eval_step", -1))
        p.last_checkpoint = checkpoint
        rng = state["rng"]
        restore_rng(rng[rank] if isinstance(rng, list) else rng)
