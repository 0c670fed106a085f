"""A new task in one file, trained and evaluated by the unchanged engine.

Everything the task needs lives here: its loss, its decoding, its metric family and a model for it. The
engine (train, evaluate, checkpoint, criterion) is not told about it: it asks the task registry.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from langground import registry
from langground.config import load_preset
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine.builders import open_split
from langground.engine.checkpoint import load_checkpoint
from langground.engine.evaluate import evaluate_model
from langground.engine.logging import read_jsonl
from langground.engine.metrics import MetricAccumulator, register_metric
from langground.engine.train import train
from langground.losses import Criterion, build_criterion
from langground.models.base import GroundingModel
from langground.tasks import Task, get_task, list_tasks, register_task
from langground.tasks.decode import empty_prediction
from langground.types import Targets, TextBatch
from tiny_config import TINY_RUN

MAX_COUNT = 3


def _count(n: int) -> int:
    return min(n, MAX_COUNT)


class CountMetric(MetricAccumulator):
    prefix = "count"
    family_metrics = ("acc",)

    def sample_stats(self, record, prediction, gt_mask):
        return {"count": 1, "correct": int(prediction.answer == str(_count(len(record.boxes))))}

    def summarize(self, sums: Mapping[str, Any]) -> dict[str, float]:
        return {"acc": sums["correct"] / sums["count"]} if sums.get("count") else {}


register_metric("count", lambda cfg: CountMetric(cfg.by_family), replace=True)


@register_task
class CountTask(Task):
    """How many objects does the expression refer to (0..3+)? A classification over the referent count."""

    name = "count"
    heads = frozenset({"count"})
    metrics = ("count",)
    primary_metric = "count/acc"
    loss_weights = {"count": 1.0}

    def loss_terms(self, outputs, targets, **options) -> dict[str, Tensor]:
        logits = outputs["pred_count"].float()
        target = torch.tensor([_count(b.shape[0]) for b in targets.boxes], device=logits.device)
        return {"loss_count": F.cross_entropy(logits, target)}

    def predict(self, outputs, i, frame, ctx):
        pred = empty_prediction()
        pred.answer = str(int(outputs["pred_count"][i].argmax()))
        return pred


class ToyCounter(GroundingModel):
    """Mean word embedding + pooled image -> count logits, with one auxiliary layer and an own term."""

    supported_tasks = ("count",)
    loss_weights = {"l2": 1e-3}  # the default weight of the model's own term

    def __init__(self, task: str, input_size: int, max_text_length: int, vocab_size: int, **_: Any):
        super().__init__(task, input_size, max_text_length, vocab_size, model_config={})
        self.embed = nn.Embedding(vocab_size, 32)
        self.image = nn.Conv2d(3, 8, 8, stride=8)
        self.hidden = nn.Linear(40, 32)
        self.aux_head = nn.Linear(40, MAX_COUNT + 1)
        self.head = nn.Linear(32, MAX_COUNT + 1)

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        mask = text.attention_mask.float()[..., None]
        words = (self.embed(text.token_ids) * mask).sum(1) / mask.sum(1)
        pixels = self.image(text.images_per_text(images)).mean((2, 3))
        x = torch.cat([words, pixels], dim=1)
        return {
            "pred_count": self.head(torch.relu(self.hidden(x))),
            "aux_outputs": [{"pred_count": self.aux_head(x)}],
            "losses": {"loss_l2": self.head.weight.pow(2).sum()},
        }


@pytest.fixture(scope="module")
def toy_model():
    def toy_counter(**kwargs: Any) -> ToyCounter:
        return ToyCounter(**kwargs)

    registry.register_model(toy_counter)
    yield "toy_counter"
    registry._MODELS.pop("toy_counter", None)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    return generate_world(root, SynthConfig(images=24, size=(96, 72), seed=0), workers=1)


def test_the_toy_task_is_registered_with_its_metric():
    assert "count" in list_tasks() and get_task("count").primary_metric == "count/acc"


def test_a_task_in_one_file_trains_and_evaluates_through_the_engine(world, toy_model, tmp_path):
    config = load_preset(
        "synth-laconvnet-t-gref",
        [
            f"data.root={world}",
            f"model.name={toy_model}",
            "model.task=count",
            "model.kwargs={}",
            "transforms.input_size=64",
            *TINY_RUN,
            "run.epochs=6",
            "run.batch_size=8",
            "run.ema=false",
            "optim.lr=0.01",
            "data.train_limit=48",
            "data.eval_limit=48",
            "loss.count_0=0.5",  # the auxiliary layer at half weight
        ],
    )
    result = train(config, tmp_path / "run", console=Console(file=io.StringIO()))
    assert result.status == "completed" and result.main_metric == "count/acc"
    assert "count/acc" in result.val and result.best_value == pytest.approx(result.val["count/acc"])

    lines = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    # The task's term, its per-layer repeat and the model's own term, summed with their weights.
    first, last = lines[0], lines[-1]
    for row in (first, last):
        expected = row["loss_count"] + 0.5 * row["loss_count_0"] + 1e-3 * row["loss_l2"]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert last["loss_count"] < 0.8 * first["loss_count"]  # it learns

    # The best checkpoint rebuilds the toy model and scores the same accuracy again.
    ckpt = load_checkpoint(tmp_path / "run" / "best")
    records = open_split(ckpt.config.data, "val", 48)
    again = evaluate_model(ckpt.model, records, ckpt.config, ckpt.vocab, None, device=torch.device("cpu"))
    assert again.metrics["count/acc"] == pytest.approx(result.best_value)
    assert again.metrics["count/count"] == len(records) > 0
    # and beats always answering the most common count
    counts = np.bincount([_count(len(r.boxes)) for r in records], minlength=MAX_COUNT + 1)
    assert again.metrics["count/acc"] > counts.max() / counts.sum()


def test_unknown_weight_names_the_tasks_and_models_terms(toy_model):
    model = ToyCounter("count", 64, 8, 10)
    with pytest.raises(ValueError, match=r"unknown loss weight or option 'cnt'.*valid: count, l2"):
        build_criterion("count", model=model, cnt=1.0)
    assert build_criterion("count", model=model).weights == {"count": 1.0, "l2": 1e-3}


def test_a_models_term_without_a_weight_is_a_clear_error():
    criterion = Criterion(get_task("count"), {"count": 1.0})
    outputs = {"pred_count": torch.zeros(2, 4), "losses": {"loss_extra": torch.tensor(1.0)}}
    targets = Targets(
        [torch.zeros(1, 4), torch.zeros(0, 4)], None, torch.zeros(2, dtype=torch.bool), -torch.ones(2)
    )
    with pytest.raises(ValueError, match="no weight for loss term 'loss_extra'"):
        criterion(outputs, targets)
    weighted = Criterion(get_task("count"), {"count": 2.0, "extra": 3.0})(outputs, targets)
    assert float(weighted["loss"]) == pytest.approx(2.0 * float(weighted["loss_count"]) + 3.0)
