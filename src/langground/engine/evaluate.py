"""Evaluation: model -> postprocess (original pixels) -> metrics, overall and per family, on any split.

Used by the training loop (validation, final test splits) and by ``langground eval``. Each rank scores
its own shard of the records (every record exactly once, no padding) and the metric states are merged
over ranks with ``all_gather_object``: the numbers equal a single-process run's exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from langground._files import chmod_default
from langground.config import Config
from langground.engine import distributed as D
from langground.engine.builders import (
    Precision,
    RecordSubset,
    autocast,
    build_dataset,
    make_loader,
    open_split,
    resolve_device,
    resolve_precision,
    worker_errors,
)
from langground.engine.metrics import Evaluator, MetricsConfig, format_table
from langground.errors import LanggroundError
from langground.postprocess import postprocess
from langground.tasks import get_task
from langground.text.vocab import Vocabulary
from langground.types import GroundingRecord, Prediction


@dataclass
class EvalResult:
    """Metrics of one split (fractions in [0, 1]; ``format_table`` shows %)."""

    metrics: dict[str, float]
    task: str
    dataset: str = ""
    split: str = ""
    protocol: str | None = None
    seconds: float = 0.0
    examples: list[tuple[GroundingRecord, Prediction]] = field(default_factory=list, repr=False)

    @property
    def main_metric(self) -> str:
        return get_task(self.task).primary_metric

    @property
    def main_value(self) -> float | None:
        return self.metrics.get(self.main_metric)

    @property
    def count(self) -> int:
        counts = [v for k, v in self.metrics.items() if k.endswith("/count")]
        return int(max(counts)) if counts else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "task": self.task,
            "protocol": self.protocol,
            "main_metric": self.main_metric,
            "main_value": self.main_value,
            "seconds": round(self.seconds, 3),
            "metrics": self.metrics,
        }


def metrics_config(config: Config, records: Any = None) -> MetricsConfig:
    """The benchmark's metric protocol: ``config.eval`` and the dataset's protocol
    (``records.protocol``), never the postprocess thresholds (docs/metrics.md)."""
    from langground.engine.metrics.protocol import metrics_config_for

    return metrics_config_for(config.eval, getattr(records, "protocol", None))


def _describe_protocol(records: Any, task: str) -> str | None:
    protocol = getattr(records, "protocol", None)
    if protocol is None:
        return None
    describe = getattr(protocol, "describe", None)
    return describe(task) if callable(describe) else str(protocol)


def prediction_row(record: GroundingRecord, pred: Prediction) -> dict[str, Any]:
    """One JSON-able line of ``--save-predictions``: the prediction next to its ground truth."""
    from langground.ops.masks import rle_encode

    row: dict[str, Any] = {
        "sample_id": record.sample_id,
        "image_id": record.image_id,
        "image_path": record.image_path,
        "split": record.split,
        "family": record.family,
        "text": record.text,
        "boxes": np.asarray(pred.boxes, np.float64).round(2).tolist(),
        "scores": np.asarray(pred.scores, np.float64).round(4).tolist(),
        "gt_boxes": np.asarray(record.boxes, np.float64).round(2).tolist(),
        "gt_no_target": bool(record.no_target),
    }
    if pred.no_target is not None:
        row["no_target"] = round(float(pred.no_target), 4)
    if pred.answer is not None:
        row.update(answer=pred.answer, answer_score=round(float(pred.answer_score or 0.0), 4))
    if record.answer is not None:
        row["gt_answer"] = record.answer
    if pred.mask is not None:
        row["mask_rle"] = rle_encode(pred.mask)
    return row


def iterate_outputs(
    model: nn.Module, loader: Any, device: torch.device, precision: Precision
) -> Iterator[tuple[Any, dict[str, Any], list[GroundingRecord]]]:
    """Batches of ``(batch, model outputs, full records)`` in evaluation mode, without gradients."""
    base = getattr(getattr(loader, "dataset", None), "records", None)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            with autocast(device, precision):
                outputs = model(**batch.model_inputs())
            # Full records (mask loaders included) from the dataset; the batch carries light copies.
            indices = batch.indices
            full = base is not None and len(indices) == len(batch.records) and min(indices, default=0) >= 0
            yield batch, outputs, [base[i] for i in indices] if full else batch.records


def iterate_predictions(
    model: nn.Module,
    loader: Any,
    config: Config,
    answers: Sequence[str] | None,
    device: torch.device,
    precision: Precision,
) -> Iterator[tuple[Any, list[GroundingRecord], list[Prediction]]]:
    """Batches of ``(batch, records, predictions in original pixels)``."""
    task = get_task(config.model.task)
    for batch, outputs, records in iterate_outputs(model, loader, device, precision):
        preds = postprocess(
            outputs,
            batch.transforms,
            [r.image_size for r in batch.records],
            task,
            canvas_size=config.transforms.input_size,
            answer_vocab=answers,
            config=config.postprocess,
            with_masks=task.decodes_masks,
        )
        yield batch, records, preds


def evaluate_model(
    model: nn.Module,
    records: Sequence[GroundingRecord],
    config: Config,
    vocab: Vocabulary,
    answers: Sequence[str] | None,
    *,
    device: torch.device,
    precision: Precision | None = None,
    batch_size: int | None = None,
    save_predictions: str | os.PathLike | None = None,
    examples: int = 0,
    progress: bool = False,
    console: Console | None = None,
) -> EvalResult:
    """Score ``model`` on ``records`` (this rank's shard; merged over ranks). Every rank returns the
    merged metrics; predictions are written (by rank 0, gathered from all ranks) when asked."""
    info = D.current()
    precision = precision or Precision(None, False)
    task = get_task(config.model.task)
    t0 = time.perf_counter()
    shard = RecordSubset(records, D.shard_indices(len(records), info))
    run = config.run
    loader = make_loader(
        build_dataset(shard, config, answers, train=False),
        vocab,
        config,
        run,
        batch_size=batch_size or run.eval_batch_size or 2 * run.batch_size,
    )
    metric_settings = metrics_config(config, records)
    scorer = task.output_scorer(metric_settings)
    if scorer is not None:  # scored over the whole split (retrieval): raw outputs, no per-sample predictions
        for batch, outputs, batch_records in iterate_outputs(model, loader, device, precision):
            scorer.update(batch_records, outputs, batch.text.image_index)
        total = task.output_scorer(metric_settings)
        for state in D.all_gather_object(scorer.state_dict()):
            total.merge(state)
        return _result(total.compute(), task.name, records, config, t0)
    evaluator = Evaluator(task.metrics, metric_settings)
    rows: list[tuple[int, dict[str, Any]]] = []  # (position in records, row)
    kept: list[tuple[GroundingRecord, Prediction]] = []
    bar = None
    if progress and info.is_main and console is not None and console.is_terminal:
        from rich.progress import Progress

        bar = Progress(console=console, transient=True)
        bar_task = bar.add_task(f"eval {getattr(records, 'split', '')}", total=len(loader))
        bar.start()
    try:
        for batch, batch_records, preds in iterate_predictions(
            model, loader, config, answers, device, precision
        ):
            evaluator.update_many(batch_records, preds)
            if save_predictions is not None:
                where = [shard.indices[i] for i in batch.indices]
                rows.extend(
                    (k, prediction_row(r, p)) for k, r, p in zip(where, batch_records, preds, strict=True)
                )
            if len(kept) < examples:
                kept.extend(list(zip(batch_records, preds, strict=True))[: examples - len(kept)])
            if bar is not None:
                bar.advance(bar_task)
    finally:
        if bar is not None:
            bar.stop()
    total = Evaluator(task.metrics, metric_settings)
    for state in D.all_gather_object(evaluator.state_dict()):
        total.merge(state)
    if save_predictions is not None:
        gathered = D.all_gather_object(rows)
        if info.is_main:
            # Ranks hold strided shards, and image grouping reorders a shard: back to record order.
            ordered = [
                row for _, row in sorted((pair for part in gathered for pair in part), key=lambda p: p[0])
            ]
            write_jsonl_atomic(Path(save_predictions), ordered)
    return _result(total.compute(), task.name, records, config, t0, kept)


def _result(
    metrics: dict[str, float],
    task: str,
    records: Any,
    config: Config,
    t0: float,
    examples: list[tuple[GroundingRecord, Prediction]] | None = None,
) -> EvalResult:
    return EvalResult(
        metrics=metrics,
        task=task,
        dataset=str(getattr(records, "name", config.data.dataset)),
        split=str(getattr(records, "split", "")),
        protocol=_describe_protocol(records, task),
        seconds=time.perf_counter() - t0,
        examples=examples or [],
    )


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        chmod_default(tmp, directory=False)  # mkstemp's 0600 -> what open() gives (0644 under umask 022)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Fail early (one line) when ``path`` cannot be written: missing or read-only folder, a directory."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise LanggroundError(f"{p}: {what} is a directory")
    if parent.exists() and not parent.is_dir():
        raise LanggroundError(f"{p}: cannot write {what}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise LanggroundError(f"{p}: cannot write {what}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LanggroundError(f"{p}: cannot write {what}: folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise LanggroundError(f"{p}: cannot write {what}: file is read-only")
    return p


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    split: str,
    *,
    dataset: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    limit: int | None = None,
    amp: str | None = None,
    save_predictions: str | os.PathLike | None = None,
    progress: bool = False,
    console: Console | None = None,
    mask_threshold: float | None = None,
) -> EvalResult:
    """Load a checkpoint (or a run directory's best one) and evaluate it on ``split`` of the data at
    ``data_root`` (``dataset``: the name for ``open_dataset``, the checkpoint config's by default).
    ``mask_threshold``: binarise masks at this probability instead of the checkpoint's
    ``postprocess.mask_threshold`` (e.g. the one picked on val: ``metrics.threshold_sweep``)."""
    import dataclasses

    from langground.engine.checkpoint import load_checkpoint

    if save_predictions is not None:
        check_output_file(save_predictions, "predictions file")
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, device=dev)
    config = ckpt.config
    if mask_threshold is not None:
        if not 0.0 <= float(mask_threshold) <= 1.0:
            raise LanggroundError(f"mask threshold {mask_threshold}: expected a probability in [0, 1]")
        config.postprocess = dataclasses.replace(config.postprocess, mask_threshold=float(mask_threshold))
    data_cfg = config.data
    data_cfg.root = str(data_root)
    if dataset is not None and dataset != data_cfg.dataset:
        data_cfg.dataset = dataset
        data_cfg.open_kwargs = {}  # layout options of another dataset do not carry over
    if num_workers is not None:
        config.run.num_workers = num_workers
    records = open_split(data_cfg, split, limit)
    precision = resolve_precision(amp or "none", dev)
    with worker_errors():
        return evaluate_model(
            ckpt.model,
            records,
            config,
            ckpt.vocab,
            ckpt.answers,
            device=dev,
            precision=precision,
            batch_size=batch_size,
            save_predictions=save_predictions,
            progress=progress,
            console=console,
        )


def print_result(result: EvalResult, console: Console, title: str | None = None) -> None:
    """The metrics table (overall and per family) and the dataset's protocol line."""
    name = title or f"{result.dataset} {result.split} ({result.task})".strip()
    console.print(format_table(result.metrics, title=name))
    if result.protocol:
        console.print(f"protocol: {result.protocol}", highlight=False, soft_wrap=True)
    main = result.main_value
    if main is not None:
        console.print(
            f"{result.main_metric} = {100 * main:.2f}%  ({result.count} samples, {result.seconds:.1f}s)",
            highlight=False,
        )
