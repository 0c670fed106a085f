"""What the loop does around its steps: validation, step checkpoints, the best checkpoint, stop requests,
and the user's hooks.

Each callback says when it is due and what it does; it reads the run from the :class:`Trainer` it is
given (config, model, vocabulary, progress, logger). All ranks call them: the collective parts (the
evaluation's merge, the trainer state's gather, the barriers) need every rank; rank 0 alone writes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langground.engine import builders
from langground.engine import checkpoint as ckpt_io
from langground.engine import distributed as D
from langground.engine.evaluate import EvalResult, evaluate_model
from langground.engine.logging import RunLogger, draw_examples
from langground.engine.train_state import non_finite_weights

if TYPE_CHECKING:
    from langground.engine.trainer import Trainer


@dataclass
class TrainHooks:
    """Callbacks (all ranks): ``after_step(step, values)`` after each optimiser step,
    ``after_eval(step, result)`` after each validation."""

    after_step: Callable[[int, dict[str, float]], None] | None = None
    after_eval: Callable[[int, EvalResult], None] | None = None


def due(
    step: int, total_steps: int, steps_per_epoch: int, every_steps: int | None, every_epochs: int | None
) -> bool:
    """At the last step, every ``every_steps`` steps, and at the end of every ``every_epochs``-th epoch
    (0 / None: never)."""
    end_of_epoch = step % steps_per_epoch == 0
    return (
        step >= total_steps
        or bool(every_steps and step % every_steps == 0)
        or bool(end_of_epoch and every_epochs and (step // steps_per_epoch) % every_epochs == 0)
    )


def _weights_kind(t: Trainer) -> str:
    return "ema" if t.ema is not None else "raw"


class Checkpointing:
    """``checkpoints/step-N/`` (weights, config, vocabulary, trainer state), the newest ``run.keep_last``
    kept; due every ``run.save_steps`` steps / ``run.save_interval`` epochs, at the end, and on a stop.
    Non-finite weights are never written: the last checkpoint is the last good state."""

    def due(self, t: Trainer, step: int) -> bool:
        run = t.config.run
        return due(step, t.total_steps, t.steps_per_epoch, run.save_steps, run.save_interval)

    def __call__(self, t: Trainer) -> Path:
        bad = non_finite_weights(t.model)
        # Parameters agree over ranks but buffers (BatchNorm statistics) are each rank's own: agree first.
        if D.any_rank(bool(bad), t.device):  # all ranks raise together
            shown = ", ".join(bad[:3]) + (f", ... ({len(bad)} in all)" if len(bad) > 3 else "")
            t.diverged({}, f"non-finite weights ({shown}); no checkpoint written for this step")
        state = t.state.state_dict()  # collective: every rank takes part
        step = t.progress.step
        path = t.run_dir / ckpt_io.CHECKPOINTS_DIR / ckpt_io.step_dir_name(step)
        if t.is_main:
            ckpt_io.save_checkpoint(
                path,
                model=t.eval_model,
                config=t.config,
                vocab=t.vocab,
                answers=t.answers,
                trainer_state=state,
                metadata={"step": step, "weights": _weights_kind(t)},
            )
            ckpt_io.prune_checkpoints(t.run_dir, t.config.run.keep_last)
        D.barrier()
        t.progress.last_checkpoint = path
        return path


class BestCheckpoint:
    """``best/``: the weights (EMA when kept) of the best validation so far on the task's primary metric
    (higher is better); the test splits are evaluated on them."""

    def update(self, t: Trainer, result: EvalResult) -> bool:
        """Record ``result`` of the current step; True (and ``best/`` rewritten) when it is the best."""
        p, value = t.progress, result.main_value
        if value is None or (p.best_value is not None and value <= p.best_value):
            return False
        p.best_value, p.best_step = value, p.step
        if t.is_main:
            ckpt_io.save_checkpoint(
                t.run_dir / ckpt_io.BEST_DIR,
                model=t.eval_model,
                config=t.config,
                vocab=t.vocab,
                answers=t.answers,
                metadata={
                    "step": p.step,
                    "weights": _weights_kind(t),
                    "metric": t.main_metric,
                    "value": value,
                },
            )
        return True

    @staticmethod
    def path(t: Trainer) -> Path:
        return t.run_dir / ckpt_io.BEST_DIR


class Validation:
    """Evaluates the eval weights on ``data.val_split``; due every ``run.eval_steps`` steps /
    ``run.eval_interval`` epochs and at the end. Logs the metrics (and example pictures), updates the
    best checkpoint, then calls ``hooks.after_eval``. :meth:`test` scores the best weights on
    ``data.test_splits``."""

    def __init__(self, best: BestCheckpoint | None = None):
        self.best = best or BestCheckpoint()
        self.metrics: dict[str, float] = {}  # of the last validation

    def due(self, t: Trainer, step: int) -> bool:
        run = t.config.run
        return due(step, t.total_steps, t.steps_per_epoch, run.eval_steps, run.eval_interval)

    def __call__(self, t: Trainer) -> EvalResult | None:
        if t.val_records is None:
            return None
        run, p = t.config.run, t.progress
        result = evaluate_model(
            t.eval_model,
            t.val_records,
            t.config,
            t.vocab,
            t.answers,
            device=t.device,
            precision=t.precision,
            examples=run.log_images if t.logger.tb is not None else 0,
        )
        p.last_eval_step = p.step
        self.metrics = result.metrics
        self.best.update(t, result)
        D.barrier()
        t.logger.log(
            "val", p.step, result.metrics, epoch=round(p.step / t.steps_per_epoch, 4), split=result.split
        )
        if result.examples:
            records, preds = zip(*result.examples, strict=True)
            t.logger.images("val/examples", p.step, draw_examples(records, preds))
        value = result.main_value
        shown = "n/a" if value is None else f"{100 * value:.2f}%"
        best = "" if p.best_value is None else f" (best {100 * p.best_value:.2f}% @ step {p.best_step})"
        t.logger.print(f"step {p.step}: val {t.main_metric} = {shown}{best}", highlight=False)
        if t.hooks.after_eval is not None:
            t.hooks.after_eval(p.step, result)
        return result

    def test(self, t: Trainer) -> dict[str, EvalResult]:
        """Evaluate the best weights (else the final ones) on ``data.test_splits``."""
        cfg = t.config
        if not cfg.data.test_splits:
            return {}
        model = t.eval_model
        best = self.best.path(t) / ckpt_io.WEIGHTS
        D.barrier()
        if best.is_file():
            model = builders.build_model(cfg, t.vocab, t.answers, pretrained=False)
            ckpt_io.load_weights(model, best)
            model.to(t.device)
        out = {}
        for split in cfg.data.test_splits:
            records = builders.open_split(cfg.data, split, cfg.data.eval_limit)
            result = evaluate_model(
                model, records, cfg, t.vocab, t.answers, device=t.device, precision=t.precision
            )
            out[split] = result
            t.logger.log("test", t.progress.step, result.metrics, split=split)
            value = result.main_value
            t.logger.print(
                f"test {split}: {t.main_metric} = {'n/a' if value is None else f'{100 * value:.2f}%'}",
                highlight=False,
            )
        return out


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
