"""Run logging: JSONL always, TensorBoard when installed, a rich progress bar (or plain lines off a TTY).

Only rank 0 logs; other ranks get a :class:`RunLogger` with everything disabled.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from langground.types import GroundingRecord, Prediction

METRICS_FILE = "metrics.jsonl"


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class JsonlWriter:
    """Appends one JSON object per line and flushes it (a crash loses at most the line being written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> None:
    """Drop lines logged after ``max_step`` (a resumed run re-logs the steps after its checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= max_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def _tensorboard_writer(log_dir: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(log_dir))


class RunLogger:
    """Scalars to ``metrics.jsonl`` (+ TensorBoard), console messages, example pictures.

    Args:
        run_dir: where ``metrics.jsonl`` and ``tb/`` go; ``None`` disables files.
        enabled: False on ranks other than 0.
    """

    def __init__(
        self,
        run_dir: Path | None,
        enabled: bool = True,
        tensorboard: bool = True,
        console: Console | None = None,
    ):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.jsonl = JsonlWriter(run_dir / METRICS_FILE) if (enabled and run_dir is not None) else None
        self.tb = _tensorboard_writer(run_dir / "tb") if (enabled and tensorboard and run_dir) else None

    def log(self, kind: str, step: int, values: Mapping[str, Any], **extra: Any) -> None:
        """One JSONL line ``{"kind", "step", ..., values}``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        if self.jsonl is not None:
            self.jsonl.write({"kind": kind, "step": step, **extra, **values})
        if self.tb is not None:
            for key, value in values.items():
                v = _json_safe(value)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{key}", v, step)

    def images(self, tag: str, step: int, pictures: Sequence[torch.Tensor]) -> None:
        """uint8 ``(3, H, W)`` pictures to TensorBoard (nothing without it)."""
        if self.enabled and self.tb is not None:
            for i, pic in enumerate(pictures):
                self.tb.add_image(f"{tag}/{i}", pic, step)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            self.console.print(*args, **kwargs)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def format_terms(values: Mapping[str, float], limit: int = 6) -> str:
    items = [(k, v) for k, v in values.items() if k == "loss" or k.startswith("loss_")][:limit]
    return " ".join(f"{k.removeprefix('loss_') if k != 'loss' else 'loss'} {v:.4f}" for k, v in items)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours unbounded), ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class TrainProgress:
    """Progress over optimiser steps: a rich bar with ETA, loss terms and throughput on a terminal,
    a plain line every ``log_every`` steps otherwise (CI logs, ``make demo | tee``).

    The ETA is the sooner of the steps left at the pace so far and, with a time budget
    (``run.max_minutes``: ``time_budget_s`` of training time), what is left of the budget; it says which.
    """

    def __init__(
        self,
        total: int,
        start: int,
        console: Console,
        enabled: bool,
        log_every: int,
        time_budget_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total, self.console, self.enabled, self.log_every = total, console, enabled, log_every
        self.time_budget_s, self.clock = time_budget_s, clock
        self.interactive = enabled and console.is_terminal
        self._t0, self._s0 = clock(), start
        self.progress: Progress | None = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, info="", eta="ETA ?")
            self.progress.start()

    def eta(self, step: int, train_seconds: float | None = None) -> tuple[float, str]:
        """``(seconds left, why)``: ``"steps"`` (steps left at the pace since the start) or
        ``"time limit"`` (the budget left, in training seconds), whichever is sooner; NaN when unknown."""
        done = step - self._s0
        elapsed = self.clock() - self._t0
        by_steps = elapsed / done * (self.total - step) if done > 0 else math.nan
        if self.time_budget_s is None or train_seconds is None:
            return by_steps, "steps"
        by_budget = max(0.0, self.time_budget_s - train_seconds)
        if math.isnan(by_steps) or by_budget < by_steps:
            return by_budget, "time limit"
        return by_steps, "steps"

    def update(
        self,
        step: int,
        epoch: int,
        values: Mapping[str, float],
        samples_per_s: float,
        lr: float,
        train_seconds: float | None = None,
    ) -> None:
        if not self.enabled:
            return
        info = f"ep {epoch} {format_terms(values)} lr {lr:.2e} {samples_per_s:.1f} samples/s"
        if self.progress is not None:
            left, why = self.eta(step, train_seconds)
            eta = f"ETA {format_duration(left)} ({why})"
            self.progress.update(self.task, completed=step, info=info, eta=eta)
        elif step % self.log_every == 0 or step == self.total:
            left, why = self.eta(step, train_seconds)
            self.console.print(
                f"step {step}/{self.total} {info} ETA {format_duration(left)} ({why})",
                highlight=False,
                soft_wrap=True,  # a log line: never hard-wrapped mid-word
            )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# --------------------------------------------------------------------------------------------------
# example pictures


def draw_examples(
    records: Sequence[GroundingRecord], predictions: Sequence[Prediction], max_side: int = 320
) -> list[torch.Tensor]:
    """Original images with the ground truth (green) and the predicted boxes/masks (red), uint8 CHW."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    pictures = []
    for record, pred in zip(records, predictions, strict=False):
        try:  # PIL: torchvision's own image decoding is deprecated
            with Image.open(record.image_path) as img:
                image = F.pil_to_tensor(img.convert("RGB"))
        except OSError:
            continue
        if pred.mask is not None and pred.mask.shape == tuple(image.shape[-2:]):
            image = draw_segmentation_masks(image, torch.from_numpy(pred.mask.astype(bool)), 0.4, "red")
        gt = torch.as_tensor(np.asarray(record.boxes, np.float32).reshape(-1, 4))
        if gt.numel():
            image = draw_bounding_boxes(image, gt, colors="lime", width=2)
        boxes = torch.as_tensor(np.asarray(pred.boxes, np.float32).reshape(-1, 4))
        if boxes.numel():
            image = draw_bounding_boxes(image, boxes, colors="red", width=2)
        scale = max_side / max(image.shape[-2:])
        if scale < 1:
            image = F.resize(
                image, [round(image.shape[-2] * scale), round(image.shape[-1] * scale)], antialias=True
            )
        pictures.append(image)
    return pictures
