"""The training loop: one engine for every model that follows the model contract.

``train(config, out_dir)`` builds data, model, criterion, optimiser and schedule from the config and
runs optimiser steps (gradient accumulation, clipping, EMA, mixed precision, DDP), evaluating and
checkpointing on the way. Guarantees:

- **Deterministic**: data order and augmentation are functions of ``(seed, epoch, index)``
  (:mod:`langground.engine.distributed`), model randomness of the saved RNG states.
- **Exact resume**: a run interrupted at step k and resumed (``resume=True``) logs the same per-step
  losses as an uninterrupted run (trainer state: optimiser, schedule, scaler, EMA, RNG, position).
- **Safe stops**: Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and returns
  (a second Ctrl-C aborts at once). A ``KeyboardInterrupt`` that bypasses the handler (raised in a
  hook, or with the handler not installed) also writes one, of the last completed step, unless it
  lands inside the optimiser update (single process only: ranks cannot agree on it). A non-finite
  loss or gradient norm raises :class:`TrainingDiverged` before the optimiser step, and a checkpoint is
  never written with non-finite weights, so the last checkpoint is the last good one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from langground.config import Config, config_to_dict, load_config, save_config
from langground.engine import builders
from langground.engine import checkpoint as ckpt_io
from langground.engine import distributed as D
from langground.engine.ema import ModelEma
from langground.engine.evaluate import EvalResult, evaluate_model
from langground.engine.logging import METRICS_FILE, RunLogger, TrainProgress, draw_examples, truncate_jsonl
from langground.engine.metrics import PRIMARY_METRIC
from langground.engine.optim import build_optimizer, build_scheduler
from langground.errors import CheckpointError, LanggroundError
from langground.text.vocab import Vocabulary

RESULT_FILE = "result.json"
#: Config keys a resumed run may change (they do not alter what a step computes, or extend the run).
RESUMABLE_CHANGES = (
    "name",
    "description",
    "run.epochs",
    "run.max_steps",
    "run.max_minutes",
    "run.num_workers",
    "run.num_threads",
    "run.progress",
    "run.log_every",
    "run.eval_interval",
    "run.eval_steps",
    "run.save_interval",
    "run.save_steps",
    "run.keep_last",
    "run.tensorboard",
    "run.log_images",
    "run.out_dir",
    "run.eval_batch_size",
    "data.root",
    "data.test_splits",
    "data.synth_workers",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stopped before applying that step."""


@dataclass
class TrainHooks:
    """Callbacks (all ranks): ``after_step(step, values)`` after each optimiser step,
    ``after_eval(step, result)`` after each validation."""

    after_step: Callable[[int, dict[str, float]], None] | None = None
    after_eval: Callable[[int, EvalResult], None] | None = None


@dataclass
class RunResult:
    """What a training run returns (and writes to ``RUN_DIR/result.json``)."""

    run_dir: Path
    status: str  # "completed" | "interrupted" | "time_limit"
    step: int
    total_steps: int
    epoch: float
    train_seconds: float
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    main_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, EvalResult] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch, 4),
            "train_seconds": round(self.train_seconds, 2),
            "last_checkpoint": None if self.last_checkpoint is None else str(self.last_checkpoint),
            "best_checkpoint": None if self.best_checkpoint is None else str(self.best_checkpoint),
            "main_metric": self.main_metric,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "val": self.val,
            "test": {k: v.to_json() for k, v in self.test.items()},
        }


# --------------------------------------------------------------------------------------------------
# run directory


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create (or, resuming, check) the run directory; nothing is overwritten. One-line errors."""
    if resume:
        if not (run_dir / ckpt_io.CONFIG).is_file():
            raise LanggroundError(f"{run_dir}: cannot resume: not a run directory ({ckpt_io.CONFIG} missing)")
        if ckpt_io.latest_checkpoint(run_dir) is None:
            raise LanggroundError(f"{run_dir}: cannot resume: no checkpoint with {ckpt_io.TRAINER_STATE} yet")
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise LanggroundError(f"{run_dir}: run directory is a file")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise LanggroundError(
                f"{run_dir}: run directory is not empty; pass --resume to continue the run there or choose "
                "another --out"
            )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LanggroundError(f"{run_dir}: cannot create run directory ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LanggroundError(f"{run_dir}: run directory is not writable ({e.strerror or e})") from None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if (
            isinstance(v, dict)
            and v
            and not key.startswith(("model.kwargs", "loss", "data.synth", "data.open"))
        ):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(config: Config, saved: Config, run_dir: Path) -> None:
    """A resumed run must compute the same steps: only :data:`RESUMABLE_CHANGES` may differ."""
    new, old = _flat(config_to_dict(config)), _flat(config_to_dict(saved))
    changed = sorted(
        k for k in set(new) | set(old) if new.get(k) != old.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        raise LanggroundError(
            f"{run_dir / ckpt_io.CONFIG}: the run was started with another config ({diffs}); resume without "
            "--preset, or with the same one"
        )


# --------------------------------------------------------------------------------------------------
# RNG state


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


# --------------------------------------------------------------------------------------------------
# stop requests


class StopRequest:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one aborts."""

    def __init__(self, logger: RunLogger):
        self.requested = False
        self.signal_name = ""
        self.logger = logger
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.logger.print(
            f"[yellow]{self.signal_name}: stopping after this step and saving a checkpoint "
            "(again to abort)[/]"
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()


# --------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Holds the state of one training run; :meth:`fit` runs it. Use :func:`train`."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        resume: bool = False,
        console: Console | None = None,
        hooks: TrainHooks | None = None,
    ):
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.hooks = hooks or TrainHooks()
        self.console = console or Console(stderr=True)

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, run = self.config, self.config.run
        env = D.env_world()
        self.device = builders.resolve_device(run.device, env.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._owns_group = not D.current().enabled
        self.info = D.init_distributed(self.device)
        self._owns_group = self._owns_group and self.info.enabled
        self.is_main = self.info.is_main
        if self.is_main:
            prepare_run_dir(self.run_dir, self.resume)
            if self.resume:
                check_resume_config(cfg, load_config(self.run_dir / ckpt_io.CONFIG), self.run_dir)
        D.barrier()
        if run.num_threads:
            torch.set_num_threads(run.num_threads)
        if run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.precision = builders.resolve_precision(run.amp, self.device)

        # data (rank 0 generates the synthetic world once; the others wait and read it)
        if self.is_main:
            builders.ensure_dataset(cfg.data, generate=True)
        D.barrier()
        builders.ensure_dataset(cfg.data, generate=False)
        self.train_records = builders.open_split(cfg.data, cfg.data.train_split, cfg.data.train_limit)
        self.val_records = (
            builders.open_split(cfg.data, cfg.data.val_split, cfg.data.eval_limit)
            if cfg.data.val_split
            else None
        )
        if self.resume:
            try:
                self.vocab = Vocabulary.load(self.run_dir / ckpt_io.VOCAB)
            except ValueError as e:
                raise CheckpointError(f"cannot resume: {e}") from None
            self.answers = ckpt_io.read_answers(self.run_dir)
        else:
            self.vocab = builders.build_vocab(self.train_records, cfg.data)
            self.answers = builders.build_answers(self.train_records) if cfg.model.task == "vqa" else None

        # model: the same initial weights on every rank
        seed_everything(run.seed)
        self.model = builders.build_model(cfg, self.vocab, self.answers).to(self.device)
        self.criterion = builders.build_criterion(cfg).to(self.device)
        self.ema = ModelEma(self.model, run.ema_decay, run.ema_warmup) if run.ema else None
        self.ddp: nn.Module = self.model
        if self.info.enabled:
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        # per-rank randomness (dropout) from here on
        seed_everything(run.seed + 1_000_003 * self.info.rank)

        # data order
        lengths = None
        if run.curriculum_epochs:
            lengths = [len(self.train_records[i].text.split()) for i in range(len(self.train_records))]
        self.sampler = D.ResumableSampler(
            len(self.train_records), self.info, run.seed, shuffle=True, lengths=lengths,
            curriculum_epochs=run.curriculum_epochs,
        )
        micro_per_epoch = self.sampler.per_rank() // run.batch_size
        self.steps_per_epoch = micro_per_epoch // run.grad_accum
        if self.steps_per_epoch < 1:
            raise LanggroundError(
                f"config run.batch_size={run.batch_size} x run.grad_accum={run.grad_accum} x "
                f"{self.info.world_size} process(es) is more than the {len(self.train_records)} records of "
                f"split {cfg.data.train_split!r}: lower the batch size"
            )
        self.total_steps = run.max_steps or run.epochs * self.steps_per_epoch
        dataset = D.SeededDataset(
            builders.build_dataset(self.train_records, cfg, self.answers, train=True), run.seed
        )
        self.loader = builders.make_loader(
            dataset,
            self.vocab,
            cfg,
            run,
            batch_size=run.batch_size,
            sampler=self.sampler,
            drop_last=True,
            seed=run.seed,
            persistent=True,
        )

        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)

        self.step = 0
        self._updating = False  # inside the optimiser update: no consistent state to save
        self._step_rng: dict[str, Any] | None = None  # RNG at the start of the step in flight
        self._step_buffers: dict[str, torch.Tensor] = {}  # and the model's buffers
        self.train_seconds = 0.0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.last_eval_step = -1
        self.val_metrics: dict[str, float] = {}
        self.main_metric = PRIMARY_METRIC[cfg.model.task]
        if self.resume:
            self._load_state()

        # Only now, with config, data, model and checkpoint all accepted, does the run directory change:
        # a run that fails to start leaves nothing behind that would block running it again.
        if self.is_main and self.resume:
            # The steps after the checkpoint are logged again (before the log file is opened).
            truncate_jsonl(self.run_dir / METRICS_FILE, self.step)
        elif self.is_main:
            save_config(cfg, self.run_dir / ckpt_io.CONFIG)
            self.vocab.save(self.run_dir / ckpt_io.VOCAB)
            if self.answers is not None:
                (self.run_dir / ckpt_io.ANSWERS).write_text(json.dumps({"answers": self.answers}))
        self.logger = RunLogger(
            self.run_dir, enabled=self.is_main, tensorboard=run.tensorboard, console=self.console
        )
        if self.resume:
            self.logger.print(f"resuming {self.run_dir} from step {self.step} ({self.last_checkpoint.name})")

    def _load_state(self) -> None:
        latest = ckpt_io.latest_checkpoint(self.run_dir)
        assert latest is not None  # prepare_run_dir checked
        state = ckpt_io.load_trainer_state(latest, map_location="cpu")
        try:
            if "model" in state:
                self.model.load_state_dict(state["model"])
            else:
                ckpt_io.load_weights(self.model, latest / ckpt_io.WEIGHTS)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                if "ema" not in state:
                    raise LanggroundError("the run kept no EMA but the config asks for one (run.ema)")
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise LanggroundError(
                f"{latest}: cannot resume from this checkpoint: {str(e).splitlines()[0]}"
            ) from None
        if int(state.get("world_size", 1)) != self.info.world_size:
            raise LanggroundError(
                f"{latest}: the run used {state.get('world_size')} process(es); resume it with the same number"
            )
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        best = state.get("best") or {}
        self.best_value, self.best_step = best.get("value"), best.get("step")
        self.last_eval_step = int(state.get("last_eval_step", -1))
        self.last_checkpoint = latest
        rng = state["rng"]
        restore_rng(rng[self.info.rank] if isinstance(rng, list) else rng)

    # ---------------------------------------------------------------- checkpoints

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _trainer_state(self, rng_state: dict[str, Any] | None = None) -> dict[str, Any]:
        rng = D.all_gather_object(rng_state if rng_state is not None else capture_rng())
        state: dict[str, Any] = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.info.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "best": {"metric": self.main_metric, "value": self.best_value, "step": self.best_step},
            "last_eval_step": self.last_eval_step,
            "train_seconds": self.train_seconds,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["model"] = self.model.state_dict()
        return state

    def _check_finite_weights(self) -> None:
        bad = [
            k for k, v in self.model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()
        ]
        # Parameters agree over ranks but buffers (BatchNorm statistics) are each rank's own: agree first.
        if D.any_rank(bool(bad), self.device):
            shown = ", ".join(bad[:3]) + (f", ... ({len(bad)} in all)" if len(bad) > 3 else "")
            self._diverged({}, f"non-finite weights ({shown}); no checkpoint written for this step")

    def save_checkpoint(self, rng_state: dict[str, Any] | None = None) -> Path:
        """Checkpoint of the current step (``rng_state``: the RNG to resume with, default: now)."""
        self._check_finite_weights()  # all ranks raise together
        state = self._trainer_state(rng_state)  # collective: every rank takes part
        path = self.run_dir / ckpt_io.CHECKPOINTS_DIR / ckpt_io.step_dir_name(self.step)
        if self.is_main:
            ckpt_io.save_checkpoint(
                path,
                model=self.eval_model,
                config=self.config,
                vocab=self.vocab,
                answers=self.answers,
                trainer_state=state,
                metadata={"step": self.step, "weights": "ema" if self.ema is not None else "raw"},
            )
            ckpt_io.prune_checkpoints(self.run_dir, self.config.run.keep_last)
        D.barrier()
        self.last_checkpoint = path
        return path

    def _save_best(self, result: EvalResult) -> None:
        if not self.is_main:
            return
        path = self.run_dir / ckpt_io.BEST_DIR
        ckpt_io.save_checkpoint(
            path,
            model=self.eval_model,
            config=self.config,
            vocab=self.vocab,
            answers=self.answers,
            metadata={
                "step": self.step,
                "weights": "ema" if self.ema is not None else "raw",
                "metric": self.main_metric,
                "value": result.main_value,
            },
        )

    # ---------------------------------------------------------------- evaluation

    def validate(self) -> EvalResult | None:
        if self.val_records is None:
            return None
        run = self.config.run
        result = evaluate_model(
            self.eval_model,
            self.val_records,
            self.config,
            self.vocab,
            self.answers,
            device=self.device,
            precision=self.precision,
            examples=run.log_images if self.logger.tb is not None else 0,
        )
        self.last_eval_step = self.step
        self.val_metrics = result.metrics
        value = result.main_value
        improved = value is not None and (self.best_value is None or value > self.best_value)
        if improved:
            self.best_value, self.best_step = value, self.step
            self._save_best(result)
        D.barrier()
        self.logger.log(
            "val",
            self.step,
            result.metrics,
            epoch=round(self.step / self.steps_per_epoch, 4),
            split=result.split,
        )
        if result.examples:
            records, preds = zip(*result.examples, strict=True)
            self.logger.images("val/examples", self.step, draw_examples(records, preds))
        shown = "n/a" if value is None else f"{100 * value:.2f}%"
        best = (
            "" if self.best_value is None else f" (best {100 * self.best_value:.2f}% @ step {self.best_step})"
        )
        self.logger.print(f"step {self.step}: val {self.main_metric} = {shown}{best}", highlight=False)
        if self.hooks.after_eval is not None:
            self.hooks.after_eval(self.step, result)
        return result

    def test(self) -> dict[str, EvalResult]:
        """Evaluate the best weights (else the final ones) on ``data.test_splits``."""
        cfg = self.config
        if not cfg.data.test_splits:
            return {}
        model = self.eval_model
        best = self.run_dir / ckpt_io.BEST_DIR / ckpt_io.WEIGHTS
        D.barrier()
        if best.is_file():
            model = builders.build_model(cfg, self.vocab, self.answers, pretrained=False)
            ckpt_io.load_weights(model, best)
            model.to(self.device)
        out = {}
        for split in cfg.data.test_splits:
            records = builders.open_split(cfg.data, split, cfg.data.eval_limit)
            result = evaluate_model(
                model, records, cfg, self.vocab, self.answers, device=self.device, precision=self.precision
            )
            out[split] = result
            self.logger.log("test", self.step, result.metrics, split=split)
            value = result.main_value
            self.logger.print(
                f"test {split}: {self.main_metric} = {'n/a' if value is None else f'{100 * value:.2f}%'}",
                highlight=False,
            )
        return out

    # ---------------------------------------------------------------- the loop

    def _batches(self, epoch: int, position: int) -> Iterator[Any]:
        run = self.config.run
        self.sampler.set_epoch(epoch, start=position * run.grad_accum * run.batch_size)
        return iter(self.loader)

    def _train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches (``self.step`` += 1); returns the mean
        loss terms."""
        run = self.config.run
        # A KeyboardInterrupt before the update can still save step `self.step`: with the RNG and the
        # buffers (BatchNorm statistics, updated by the forward) as they were before this step.
        if not self.info.enabled:
            self._step_rng = capture_rng()
            self._step_buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        self.ddp.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(run.grad_accum):
            batch = next(batches).to(self.device)
            sync = micro == run.grad_accum - 1
            ctx = self.ddp.no_sync() if (self.info.enabled and not sync) else contextlib.nullcontext()
            with ctx:
                with builders.autocast(self.device, self.precision):
                    outputs = self.ddp(batch.images, batch.text)
                    losses = self.criterion(outputs, batch.targets)
                self.scaler.scale(losses["loss"].float() / run.grad_accum).backward()
            for k, v in losses.items():
                if k == "loss" or k.startswith("loss_"):
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / run.grad_accum
        values = {k: float(v) for k, v in sums.items()}
        if D.any_rank(not math.isfinite(values["loss"]), self.device):
            self._diverged(values, "non-finite loss")
        values["lr"] = self.optimizer.param_groups[0]["lr"]  # the lr this step used
        if run.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), run.clip_grad_norm))
            values["grad_norm"] = norm
            # With a scaler an inf norm only skips the step; without one it would poison the weights.
            # Gradients are all-reduced, so every rank sees the same norm.
            if not math.isfinite(norm) and not self.precision.scaler:
                self._diverged(values, "non-finite gradient norm")
        self._updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self._updating = False
        self._step_rng, self._step_buffers = None, {}
        return values

    def _diverged(self, values: dict[str, float], what: str) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "lr")
        where = (
            f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"
        )
        message = (
            f"step {self.step + 1}: {what}{f' ({terms})' if terms else ''}; training stopped before this "
            f"step, {where}. Try a lower optim.lr, run.clip_grad_norm, or run.amp=none"
        )
        self.logger.log("error", self.step + 1, {k: v for k, v in values.items()}, message=message)
        raise TrainingDiverged(message)

    def _eval_due(self, step: int) -> bool:
        run, end_of_epoch = self.config.run, step % self.steps_per_epoch == 0
        return (
            step >= self.total_steps
            or bool(run.eval_steps and step % run.eval_steps == 0)
            or bool(
                end_of_epoch and run.eval_interval and (step // self.steps_per_epoch) % run.eval_interval == 0
            )
        )

    def _save_due(self, step: int) -> bool:
        run, end_of_epoch = self.config.run, step % self.steps_per_epoch == 0
        return (
            step >= self.total_steps
            or bool(run.save_steps and step % run.save_steps == 0)
            or bool(
                end_of_epoch and run.save_interval and (step // self.steps_per_epoch) % run.save_interval == 0
            )
        )

    def _save_after_interrupt(self, stop: StopRequest) -> bool:
        """After a KeyboardInterrupt that bypassed ``stop``: checkpoint the last completed step, when
        there is a consistent one to save. Returns False when the interrupt must propagate."""
        if stop.requested or self.info.enabled or self._updating:
            return False  # a second Ctrl-C aborts; ranks cannot agree; weights half-updated
        self.logger.print(
            f"[yellow]KeyboardInterrupt: saving a checkpoint of step {self.step} (again to abort)[/]"
        )
        stop.requested = True  # a further Ctrl-C while saving aborts at once
        if self._step_rng is not None:  # interrupted inside a step: undo its forward's buffer updates
            with torch.no_grad():
                for name, buf in self.model.named_buffers():
                    buf.copy_(self._step_buffers[name])
        self.save_checkpoint(rng_state=self._step_rng)
        return True

    def fit(self) -> RunResult:
        run = self.config.run
        progress = TrainProgress(
            self.total_steps, self.step, self.console, self.is_main and run.progress, run.log_every
        )
        samples_per_step = run.batch_size * run.grad_accum * self.info.world_size
        if self.is_main and not self.resume:
            self.logger.print(
                f"training {self.config.model.name} ({self.config.model.task}) on {len(self.train_records)} "
                f"records: {self.total_steps} steps ({self.steps_per_epoch}/epoch), {self.precision.name} on "
                f"{self.device}, {self.info.world_size} process(es) -> {self.run_dir}",
                highlight=False,
            )
        try:
            with StopRequest(self.logger) as stop:
                try:
                    status = self._loop(stop, progress, samples_per_step)
                except KeyboardInterrupt:
                    if not self._save_after_interrupt(stop):
                        raise
                    status = "interrupted"
        finally:
            progress.stop()
        return self._finish(status)

    def _loop(self, stop: StopRequest, progress: TrainProgress, samples_per_step: int) -> str:
        run = self.config.run
        status = "completed"
        window_t, window_steps = time.perf_counter(), 0
        resumed_before_eval = (
            self.resume and 0 < self.step < self.total_steps and self.last_eval_step != self.step
        )
        if resumed_before_eval and self._eval_due(self.step):  # the interrupted run stopped before it
            self.validate()
        while self.step < self.total_steps and status == "completed":
            epoch = self.step // self.steps_per_epoch
            position = self.step - epoch * self.steps_per_epoch
            batches = self._batches(epoch, position)
            for _ in range(position, self.steps_per_epoch):
                t0 = time.perf_counter()
                values = self._train_step(batches)
                self.train_seconds += time.perf_counter() - t0
                window_steps += 1
                lr = values.pop("lr")
                now = time.perf_counter()
                speed = window_steps * samples_per_step / max(now - window_t, 1e-9)
                progress.update(self.step, epoch + 1, values, speed, lr)
                if self.step % run.log_every == 0 or self.step == self.total_steps:
                    logged = D.all_reduce_mean(values, self.device)  # mean over ranks
                    self.logger.log(
                        "train",
                        self.step,
                        {**logged, "lr": lr, "samples_per_s": speed},
                        epoch=round(self.step / self.steps_per_epoch, 4),
                    )
                    window_t, window_steps = now, 0
                if self.hooks.after_step is not None:
                    self.hooks.after_step(self.step, values)
                last = self.step >= self.total_steps
                # Ranks' clocks differ: they must agree on the time limit, or one would save while
                # another trains on.
                time_up = run.max_minutes is not None and self.train_seconds >= 60 * run.max_minutes
                if D.any_rank(stop.requested, self.device):
                    status = "interrupted"
                elif run.max_minutes is not None and D.any_rank(time_up, self.device):
                    status = "time_limit"
                if status == "completed" and self._eval_due(self.step):
                    self.validate()
                if status != "completed" or self._save_due(self.step):
                    self.save_checkpoint()
                if last or status != "completed":
                    break
        return status

    def _finish(self, status: str) -> RunResult:
        # A time limit ends the run as planned (its budget is spent): it is evaluated like a finished one.
        finished = status in ("completed", "time_limit")
        if finished and self.last_eval_step != self.step:
            self.validate()
        tests = self.test() if finished else {}
        result = RunResult(
            run_dir=self.run_dir,
            status=status,
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.step / self.steps_per_epoch,
            train_seconds=self.train_seconds,
            last_checkpoint=self.last_checkpoint,
            best_checkpoint=(self.run_dir / ckpt_io.BEST_DIR) if self.best_step is not None else None,
            main_metric=self.main_metric,
            best_value=self.best_value,
            best_step=self.best_step,
            val=self.val_metrics,
            test=tests,
        )
        if self.is_main:
            (self.run_dir / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=1))
        return result

    def close(self) -> None:
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        if getattr(self, "_owns_group", False):  # the process group this trainer joined
            D.shutdown()
            self._owns_group = False


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
