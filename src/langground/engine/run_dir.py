"""The run directory: created empty (or, resuming, checked), what a resumed run may change, the files a
run writes once it has started, and its result (``result.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langground.config import Config, RunConfig, config_to_dict, save_config
from langground.engine import checkpoint as ckpt_io
from langground.engine.evaluate import EvalResult
from langground.engine.logging import METRICS_FILE, truncate_jsonl
from langground.errors import LanggroundError
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


def write_run_files(
    run_dir: Path,
    config: Config,
    vocab: Vocabulary,
    answers: Sequence[str] | None,
    resumed_at: int | None,
) -> None:
    """Rank 0, once config, data, model and checkpoint are all accepted: a new run writes its config,
    vocabulary and answers; a resumed one (``resumed_at``: its step) drops the metrics logged after its
    checkpoint, which it logs again. Nothing before this changes the directory, so a run that fails to
    start leaves nothing behind that would block running it again."""
    if resumed_at is not None:
        truncate_jsonl(run_dir / METRICS_FILE, resumed_at)
        return
    save_config(config, run_dir / ckpt_io.CONFIG)
    vocab.save(run_dir / ckpt_io.VOCAB)
    if answers is not None:
        (run_dir / ckpt_io.ANSWERS).write_text(json.dumps({"answers": list(answers)}))


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

    def write(self) -> None:
        (self.run_dir / RESULT_FILE).write_text(json.dumps(self.to_json(), indent=1))


def check_resumable(run_dir: Path, run: RunConfig, progress: Any, total_steps: int) -> None:
    """A resumed run must have something left to do: a run that ended (all its steps, or its time budget
    spent) would train one step and evaluate every split again. One line saying what to raise."""
    step, seconds = progress.step, progress.train_seconds
    if step >= total_steps:
        raise LanggroundError(
            f"{run_dir}: cannot resume: the run is complete (step {step}/{total_steps}); "
            f"train longer with --set run.max_steps=N (N > {step}) or a larger run.epochs"
        )
    if run.max_minutes is not None and seconds >= 60 * run.max_minutes:
        raise LanggroundError(
            f"{run_dir}: cannot resume: the run stopped on its time limit (run.max_minutes="
            f"{run.max_minutes:g}: {seconds / 60:.1f} min trained, step {step}/{total_steps}); "
            f"continue with --set run.max_minutes=M (M > {seconds / 60:.1f}) or run.max_minutes=null"
        )


def budget_note(run: RunConfig, progress: Any) -> str:
    """``; time budget ...`` of a resumed run with ``run.max_minutes`` (what is left of it)."""
    if run.max_minutes is None:
        return ""
    trained = progress.train_seconds / 60
    return (
        f"; time budget run.max_minutes={run.max_minutes:g}: {trained:.1f} min trained, "
        f"{run.max_minutes - trained:.1f} min left"
    )
