"""The Trainer: builds one run from its config in small steps, then runs the loop: the optimiser steps
(:mod:`langground.engine.step`), validation and checkpoints (:mod:`langground.engine.callbacks`), the
trainer state (:mod:`langground.engine.train_state`). Use :func:`langground.engine.train.train`.

Hooks a model family can define (looked up on the bare model, never the DDP wrapper):

- ``on_epoch_start(epoch: int) -> None``: called when the loop enters an epoch, a resumed run's partial
  one included (first, when a validation of the interrupted run is still pending, for the epoch that
  validation belongs to). It is called once per entered epoch, so it should set the state *for* that
  epoch (freeze a backbone, switch a phase), not count calls; it cannot change the random streams (the
  RNG is restored after it), so resuming stays exact.
- ``training_step(batch, criterion, forward) -> dict[str, Tensor]``: one micro-batch's losses (with
  ``loss``) in place of ``criterion(forward(**batch.model_inputs()), batch.targets)``; ``forward`` is the
  DDP-wrapped model. Autocast, gradient accumulation, the scaler and the update stay the loop's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from langground.config import Config, load_config
from langground.engine import builders
from langground.engine import checkpoint as ckpt_io
from langground.engine import distributed as D
from langground.engine.callbacks import Checkpointing, StopRequest, TrainHooks, Validation
from langground.engine.ema import ModelEma
from langground.engine.evaluate import EvalResult
from langground.engine.logging import RunLogger, TrainProgress
from langground.engine.optim import build_optimizer, build_scheduler
from langground.engine.run_dir import (
    RunResult,
    budget_note,
    check_resumable,
    check_resume_config,
    prepare_run_dir,
    write_run_files,
)
from langground.engine.step import OptimiserStep, raise_diverged
from langground.engine.train_state import (
    Progress,
    TrainState,
    capture_rng,
    restore_rng,
    seed_everything,
)
from langground.errors import CheckpointError, LanggroundError
from langground.tasks import get_task
from langground.text.vocab import Vocabulary


class Trainer:
    """Holds the state of one training run; :meth:`setup` builds it, :meth:`fit` runs it."""

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
        self._setup_process()
        self._setup_data()
        self._setup_model()
        self._setup_loader()
        self._setup_optimisation()
        self._setup_state()

    def _setup_process(self) -> None:
        """Device, process group, run directory (checked before anything is built), threads, precision."""
        cfg, run = self.config, self.config.run
        self.device = builders.resolve_device(run.device, D.env_world().local_rank)
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

    def _setup_data(self) -> None:
        """Records, vocabulary and answers (rank 0 generates the synthetic world once; the others wait)."""
        cfg = self.config
        self.task = get_task(cfg.model.task)
        builders.check_config(cfg)  # a bad model or loss option fails before minutes of data generation
        if self.is_main:
            builders.ensure_dataset(cfg.data, generate=True, log=self._say)
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
            self.answers = builders.build_answers(self.train_records) if self.task.needs_answers else None

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def _setup_model(self) -> None:
        """Model, criterion and EMA with the same initial weights on every rank; then per-rank RNG."""
        cfg, run = self.config, self.config.run
        seed_everything(run.seed)
        self.model = builders.build_model(cfg, self.vocab, self.answers).to(self.device)
        self.criterion = builders.build_criterion(cfg, self.model).to(self.device)
        own = {id(p) for p in self.model.parameters()}
        orphans = [n for n, p in self.criterion.named_parameters() if p.requires_grad and id(p) not in own]
        if orphans:  # the optimiser only sees the model's parameters
            raise LanggroundError(
                f"model {cfg.model.name!r}: its loss modules have trainable parameters that no optimiser "
                f"updates ({', '.join(orphans[:3])}); register them on the model"
            )
        self.ema = ModelEma(self.model, run.ema_decay, run.ema_warmup) if run.ema else None
        self.ddp: nn.Module = self.model
        if self.info.enabled:
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        seed_everything(run.seed + 1_000_003 * self.info.rank)  # per-rank randomness (dropout) from here on

    def _setup_loader(self) -> None:
        """Training items, their resumable order (length curriculum) and the steps per epoch."""
        cfg, run = self.config, self.config.run
        dataset = builders.build_dataset(self.train_records, cfg, self.answers, train=True)
        # One item may hold several expressions (data.group_by_image): count and measure items.
        lengths = builders.item_lengths(self.train_records, dataset) if run.curriculum_epochs else None
        self.sampler = D.ResumableSampler(
            len(dataset), self.info, run.seed, shuffle=True, lengths=lengths,
            curriculum_epochs=run.curriculum_epochs,
        )  # fmt: skip
        self.steps_per_epoch = self.sampler.per_rank() // run.batch_size // run.grad_accum
        if self.steps_per_epoch < 1:
            raise LanggroundError(
                f"config run.batch_size={run.batch_size} x run.grad_accum={run.grad_accum} x "
                f"{self.info.world_size} process(es) is more than the {len(dataset)} training items of "
                f"split {cfg.data.train_split!r}: lower the batch size"
            )
        self.total_steps = run.max_steps or run.epochs * self.steps_per_epoch
        self.loader = builders.make_loader(
            D.SeededDataset(dataset, run.seed),
            self.vocab,
            cfg,
            run,
            batch_size=run.batch_size,
            sampler=self.sampler,
            drop_last=True,
            seed=run.seed,
            persistent=True,
        )

    def _setup_optimisation(self) -> None:
        cfg = self.config
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.schedule, self.total_steps, self.steps_per_epoch, self._budget_spent
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)

    def _budget_spent(self) -> float:
        """Fraction of ``run.max_minutes`` of training time used (0 before the state exists or without one)."""
        progress, minutes = getattr(self, "progress", None), self.config.run.max_minutes
        return 0.0 if progress is None or not minutes else progress.train_seconds / (60.0 * minutes)

    def _setup_state(self) -> None:
        """Trainer state (restored when resuming), callbacks; then the run directory's files and the log."""
        self.main_metric = self.task.primary_metric
        self.state = TrainState(
            self.model, self.optimizer, self.scheduler, self.scaler, self.criterion, self.ema,
            self.info, self.steps_per_epoch, self.main_metric,
        )  # fmt: skip
        self.progress: Progress = self.state.progress
        if self.resume:
            latest = ckpt_io.latest_checkpoint(self.run_dir)
            assert latest is not None  # prepare_run_dir checked
            self.state.load(latest)
            # before anything in the run directory changes
            check_resumable(self.run_dir, self.config.run, self.progress, self.total_steps)
        self.validation, self.checkpointing = Validation(), Checkpointing()
        self.optimiser_step = OptimiserStep()
        self._epoch: int | None = None  # the epoch the model's on_epoch_start was last called for
        if self.is_main:
            resumed_at = self.progress.step if self.resume else None
            write_run_files(self.run_dir, self.config, self.vocab, self.answers, resumed_at)
        run = self.config.run
        self.logger = RunLogger(
            self.run_dir, enabled=self.is_main, tensorboard=run.tensorboard, console=self.console
        )
        if self.resume:
            name = self.progress.last_checkpoint.name  # type: ignore[union-attr]
            self.logger.print(
                f"resuming {self.run_dir} from step {self.progress.step}/{self.total_steps} ({name})"
                f"{budget_note(self.config.run, self.progress)}",
                highlight=False,
                soft_wrap=True,
            )

    # ---------------------------------------------------------------- the run's position and weights

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def train_seconds(self) -> float:
        return self.progress.train_seconds

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save_checkpoint(self) -> Path:
        return self.checkpointing(self)

    def validate(self) -> EvalResult | None:
        return self.validation(self)

    def test(self) -> dict[str, EvalResult]:
        return self.validation.test(self)

    # ---------------------------------------------------------------- the loop

    def _enter_epoch(self, epoch: int) -> None:
        hook = getattr(self.model, "on_epoch_start", None)
        if self._epoch == epoch or not callable(hook):
            return
        self._epoch = epoch
        rng = capture_rng()
        hook(epoch)
        restore_rng(rng)  # a resumed run calls it at another moment of the random streams

    def _batches(self, epoch: int, position: int) -> Iterator[Any]:
        run = self.config.run
        self.sampler.set_epoch(epoch, start=position * run.grad_accum * run.batch_size)
        return iter(self.loader)

    def diverged(self, values: dict[str, float], what: str) -> None:
        """Log and raise :class:`TrainingDiverged` for step ``step + 1`` (nothing of it applied)."""
        raise_diverged(self.logger, self.progress.step + 1, self.progress.last_checkpoint, values, what)

    def _save_after_interrupt(self, stop: StopRequest) -> bool:
        """After a KeyboardInterrupt that bypassed ``stop``: checkpoint the last completed step, when
        there is a consistent one to save. Returns False when the interrupt must propagate."""
        in_flight = self.optimiser_step
        if stop.requested or self.info.enabled or in_flight.updating:
            return False  # a second Ctrl-C aborts; ranks cannot agree; weights half-updated
        self.logger.print(
            f"[yellow]KeyboardInterrupt: saving a checkpoint of step {self.step} (again to abort)[/]"
        )
        stop.requested = True  # a further Ctrl-C while saving aborts at once
        if in_flight.snapshot is not None:  # inside a step: undo its buffer, loss-state and RNG moves
            in_flight.snapshot.restore(self.model, self.criterion)
        self.save_checkpoint()
        return True

    def fit(self) -> RunResult:
        run = self.config.run
        progress = TrainProgress(
            self.total_steps,
            self.step,
            self.console,
            self.is_main and run.progress,
            run.log_every,
            time_budget_s=None if run.max_minutes is None else 60 * run.max_minutes,
        )
        if self.is_main and not self.resume:
            self.logger.print(
                f"training {self.config.model.name} ({self.task.name}) on {len(self.train_records)} "
                f"records: {self.total_steps} steps ({self.steps_per_epoch}/epoch)"
                + ("" if run.max_minutes is None else f" or {run.max_minutes:g} min (run.max_minutes)")
                + f", {self.precision.name} on {self.device}, {self.info.world_size} process(es) -> "
                f"{self.run_dir}",
                highlight=False,
            )
        try:
            with StopRequest(self.logger) as stop:
                try:
                    status = self._loop(stop, progress)
                except KeyboardInterrupt:
                    if not self._save_after_interrupt(stop):
                        raise
                    status = "interrupted"
        finally:
            progress.stop()
        return self._finish(status)

    def _stop_status(self, stop: StopRequest) -> str:
        """``completed`` (go on), ``interrupted`` or ``time_limit``: the same on every rank."""
        run = self.config.run
        # Ranks' clocks differ: they must agree on the time limit, or one would save while another trains.
        time_up = run.max_minutes is not None and self.train_seconds >= 60 * run.max_minutes
        if D.any_rank(stop.requested, self.device):
            return "interrupted"
        if run.max_minutes is not None and D.any_rank(time_up, self.device):
            return "time_limit"
        return "completed"

    def _loop(self, stop: StopRequest, progress: TrainProgress) -> str:
        run, p = self.config.run, self.progress
        samples_per_step = run.batch_size * run.grad_accum * self.info.world_size
        status = "completed"
        window_t, window_steps = time.perf_counter(), 0
        pending = self.resume and 0 < p.step < self.total_steps and p.last_eval_step != p.step
        if pending and self.validation.due(self, p.step):  # the interrupted run stopped before it
            self._enter_epoch((p.step - 1) // self.steps_per_epoch)  # the epoch it belongs to
            self.validate()
        while p.step < self.total_steps and status == "completed":
            epoch, position = divmod(p.step, self.steps_per_epoch)
            self._enter_epoch(epoch)
            batches = self._batches(epoch, position)
            for _ in range(position, self.steps_per_epoch):
                t0 = time.perf_counter()
                values, lrs = self.optimiser_step(self, batches)
                p.train_seconds += time.perf_counter() - t0
                window_steps += 1
                now = time.perf_counter()
                speed = window_steps * samples_per_step / max(now - window_t, 1e-9)
                progress.update(p.step, epoch + 1, values, speed, lrs["lr"], train_seconds=p.train_seconds)
                if p.step % run.log_every == 0 or p.step == self.total_steps:
                    logged = D.all_reduce_mean(values, self.device)  # mean over ranks
                    epochs = round(p.step / self.steps_per_epoch, 4)
                    self.logger.log("train", p.step, {**logged, **lrs, "samples_per_s": speed}, epoch=epochs)
                    window_t, window_steps = now, 0
                if self.hooks.after_step is not None:
                    self.hooks.after_step(p.step, values)
                last = p.step >= self.total_steps
                status = self._stop_status(stop)
                if status == "completed" and self.validation.due(self, p.step):
                    self.validate()
                if status != "completed" or self.checkpointing.due(self, p.step):
                    self.save_checkpoint()
                if last or status != "completed":
                    break
        return status

    def _finish(self, status: str) -> RunResult:
        # A time limit ends the run as planned (its budget is spent): it is evaluated like a finished one.
        finished = status in ("completed", "time_limit")
        p = self.progress
        if finished and p.last_eval_step != p.step:
            self.validate()
        tests = self.test() if finished else {}
        result = RunResult(
            run_dir=self.run_dir,
            status=status,
            step=p.step,
            total_steps=self.total_steps,
            epoch=p.step / self.steps_per_epoch,
            train_seconds=p.train_seconds,
            last_checkpoint=p.last_checkpoint,
            best_checkpoint=self.validation.best.path(self) if p.best_step is not None else None,
            main_metric=self.main_metric,
            best_value=p.best_value,
            best_step=p.best_step,
            val=self.validation.metrics,
            test=tests,
        )
        if self.is_main:
            result.write()
        return result

    def close(self) -> None:
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        if getattr(self, "_owns_group", False):  # the process group this trainer joined
            D.shutdown()
            self._owns_group = False
