"""The training entry point: one engine for every model that follows the model contract.

``train(config, out_dir)`` builds data, model, criterion, optimiser and schedule from the config and
runs optimiser steps (gradient accumulation, clipping, EMA, mixed precision, DDP), evaluating and
checkpointing on the way. Guarantees:

- **Deterministic**: data order and augmentation are functions of ``(seed, epoch, index)``
  (:mod:`langground.engine.distributed`), model randomness of the saved RNG states.
- **Exact resume**: a run interrupted at step k and resumed (``resume=True``) logs the same per-step
  losses as an uninterrupted run (trainer state: optimiser, schedule, scaler, EMA, RNG and criterion
  state per rank, position; :mod:`langground.engine.train_state`).
- **Safe stops**: Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and returns
  (a second Ctrl-C aborts at once). A ``KeyboardInterrupt`` that bypasses the handler (raised in a
  hook, or with the handler not installed) also writes one, of the last completed step, unless it
  lands inside the optimiser update (single process only: ranks cannot agree on it). A non-finite
  loss or gradient norm raises :class:`TrainingDiverged` before the optimiser step, and a checkpoint is
  never written with non-finite weights, so the last checkpoint is the last good one.
- **DDP**: ranks agree on stops and on the time limit (their clocks differ), so they save together.
- **Clean failed starts**: a run that cannot start (bad config, data, run directory or checkpoint)
  leaves no directory behind.

The parts: :mod:`~langground.engine.run_dir` (run directory, resume check, result),
:mod:`~langground.engine.train_state` (RNG, trainer state), :mod:`~langground.engine.callbacks`
(validation, checkpoints, best checkpoint, stop requests, hooks), :mod:`~langground.engine.step` (one
optimiser step), :mod:`~langground.engine.trainer` (setup, the loop, and the model hooks
``on_epoch_start`` / ``training_step``).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from langground.config import Config
from langground.engine import builders
from langground.engine.callbacks import StopRequest, TrainHooks
from langground.engine.run_dir import (
    RESULT_FILE,
    RESUMABLE_CHANGES,
    RunResult,
    check_resume_config,
    prepare_run_dir,
)
from langground.engine.step import TrainingDiverged
from langground.engine.train_state import capture_rng, restore_rng, seed_everything
from langground.engine.trainer import Trainer
from langground.errors import LanggroundError

__all__ = [
    "RESULT_FILE",
    "RESUMABLE_CHANGES",
    "RunResult",
    "StopRequest",
    "TrainHooks",
    "Trainer",
    "TrainingDiverged",
    "capture_rng",
    "check_resume_config",
    "prepare_run_dir",
    "restore_rng",
    "seed_everything",
    "train",
]


def train(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    console: Console | None = None,
    hooks: TrainHooks | None = None,
) -> RunResult:
    """Train ``config`` into ``out_dir`` (default ``config.run.out_dir``); ``resume=True`` continues the
    run there from its newest checkpoint. Also runs under ``torchrun`` (one call per process).

    Raises:
        LanggroundError: bad config, data or run directory (one-line message).
        TrainingDiverged: the loss became NaN/inf (the last checkpoint is the last good state).
    """
    target = out_dir if out_dir is not None else config.run.out_dir
    if target is None:
        raise LanggroundError("no run directory: pass --out RUN_DIR (or set run.out_dir)")
    config.validate()
    run_dir = Path(target)
    created = not run_dir.exists()
    trainer = Trainer(config, run_dir, resume=resume, console=console, hooks=hooks)
    try:
        with builders.worker_errors():
            trainer.setup()
            return trainer.fit()
    except LanggroundError:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that could not start leaves no directory behind
        raise
    finally:
        trainer.close()
