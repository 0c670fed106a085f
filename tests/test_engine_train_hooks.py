"""What a model family can plug into the training loop: ``on_epoch_start`` (also after a resume),
``training_step``, a stateful criterion (saved per rank, restored on resume), per-group learning rates,
and training items that are not records (``builders.item_lengths``, ``len(dataset)``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import langground.engine.trainer as trainer_module
import test_engine_train as engine_train_tests
from langground.engine import builders
from langground.engine import checkpoint as ckpt_io
from langground.engine.train import Trainer, TrainHooks, train

# The run settings, the tiny world and the log reader of the training tests (one definition of each).
world = engine_train_tests.world  # a module-scoped fixture, shared by assignment
RESUME, TINY, quiet, tiny, lines = (
    engine_train_tests.RESUME,
    engine_train_tests.TINY,
    engine_train_tests.quiet,
    engine_train_tests.tiny,
    engine_train_tests.train_lines,
)


def sigint_at(step: int) -> TrainHooks:
    def after_step(s: int, values: dict) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)

    return TrainHooks(after_step=after_step)


# --------------------------------------------------------------------------------------------------
# on_epoch_start


def two_phase(monkeypatch, calls: list[int]) -> None:
    """Models whose text encoder trains in epoch 0 only, and whose hook draws random numbers."""
    real = builders.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)

        def on_epoch_start(epoch: int) -> None:
            calls.append(epoch)
            model.text_encoder.requires_grad_(epoch < 1)
            torch.rand(3)  # the loop keeps the random streams as they were

        model.on_epoch_start = on_epoch_start
        return model

    monkeypatch.setattr(builders, "build_model", build)


@pytest.fixture(scope="module")
def two_phase_reference(world, tmp_path_factory) -> tuple[Path, list[int]]:
    mp, calls = pytest.MonkeyPatch(), []
    two_phase(mp, calls)
    try:
        run_dir = tmp_path_factory.mktemp("ref") / "run"
        assert train(tiny(world, *RESUME), run_dir, console=quiet()).step == 7
    finally:
        mp.undo()
    return run_dir, calls


def test_on_epoch_start_is_called_per_epoch(world, two_phase_reference, tmp_path):
    reference, calls = two_phase_reference
    assert calls == [0, 1, 2]
    # the hook takes effect: without it (the text encoder trains on in epoch 1) the losses differ from
    # step 5 on (step 4, the first of epoch 1, is the first update without it)
    plain = tmp_path / "plain"
    train(tiny(world, *RESUME), plain, console=quiet())
    plain_losses, losses = [r["loss"] for r in lines(plain)], [r["loss"] for r in lines(reference)]
    assert plain_losses[:4] == losses[:4] and plain_losses[4] != losses[4]


@pytest.mark.parametrize(
    ("stop", "first", "second"),
    [
        (4, [0, 1], [1, 2]),  # mid-epoch: the resumed run re-enters the epoch it continues
        (3, [0], [0, 1, 2]),  # the validation at 3 is pending: it runs in epoch 0's state first
    ],
)
def test_on_epoch_start_after_resume(world, two_phase_reference, tmp_path, monkeypatch, stop, first, second):
    reference, _ = two_phase_reference
    calls: list[int] = []
    two_phase(monkeypatch, calls)
    run_dir = tmp_path / "run"
    assert train(tiny(world, *RESUME), run_dir, console=quiet(), hooks=sigint_at(stop)).step == stop
    assert calls == first
    calls.clear()
    assert train(tiny(world, *RESUME), run_dir, resume=True, console=quiet()).step == 7
    assert calls == second
    assert lines(run_dir) == lines(reference)  # frozen text encoder and RNG as in the uninterrupted run
    assert lines(run_dir, "val") == lines(reference, "val")


# --------------------------------------------------------------------------------------------------
# training_step

SHORT = ["run.max_steps=3", "data.val_split=null"]


def test_training_step_replaces_the_forward_and_the_criterion(world, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    train(tiny(world, *SHORT, "run.grad_accum=2", "run.batch_size=2"), plain, console=quiet())

    seen: list[tuple] = []
    real = builders.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)

        def training_step(batch, criterion, forward):
            seen.append((criterion, forward, len(batch.records)))
            losses = criterion(forward(**batch.model_inputs()), batch.targets)
            # a constant: the same gradients, so the same run, but every logged loss is 0.5 higher
            losses["loss_custom"] = torch.tensor(0.5)
            losses["loss"] = losses["loss"] + 0.5
            return losses

        model.training_step = training_step
        return model

    monkeypatch.setattr(builders, "build_model", build)
    cfg = tiny(world, *SHORT, "run.grad_accum=2", "run.batch_size=2")
    trainer = Trainer(cfg, tmp_path / "run", console=quiet())
    trainer.setup()
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert len(seen) == 3 * 2  # every micro-batch
    assert all(c is trainer.criterion and f is trainer.ddp and n == 2 for c, f, n in seen)
    custom, reference = lines(tmp_path / "run"), lines(plain)
    assert [r["loss_custom"] for r in custom] == [0.5] * 3
    for row, ref in zip(custom, reference, strict=True):
        assert row["loss"] == pytest.approx(ref["loss"] + 0.5, abs=1e-5)
        assert row["loss_giou"] == pytest.approx(ref["loss_giou"], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# a stateful criterion


class Counting(nn.Module):
    """The real criterion plus state that a resumed run must carry on: a call counter and a queue of
    the last 4 losses (like a momentum queue), both in the logged terms."""

    def __init__(self, inner: nn.Module, interrupt_at: int | None = None):
        super().__init__()
        self.inner, self.interrupt_at = inner, interrupt_at
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("queue", torch.zeros(4))

    def forward(self, outputs, targets):
        losses = self.inner(outputs, targets)
        self.calls += 1
        self.queue.copy_(torch.cat([self.queue[1:], losses["loss"].detach().float().reshape(1)]))
        if self.interrupt_at is not None and int(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # inside step 6, after the state moved
        losses["loss_calls"] = self.calls.float()
        losses["loss_queue"] = self.queue.mean()
        losses["loss"] = losses["loss"] + 0.01 * losses["loss_queue"]
        return losses


BUILD_CRITERION = builders.build_criterion


def counting(monkeypatch, interrupt_at: int | None = None) -> None:
    monkeypatch.setattr(
        builders,
        "build_criterion",
        lambda cfg, model=None: Counting(BUILD_CRITERION(cfg, model), interrupt_at),
    )


@pytest.fixture(scope="module")
def counting_reference(world, tmp_path_factory) -> Path:
    mp = pytest.MonkeyPatch()
    counting(mp)
    try:
        run_dir = tmp_path_factory.mktemp("ref") / "run"
        assert train(tiny(world, *RESUME), run_dir, console=quiet()).step == 7
    finally:
        mp.undo()
    return run_dir


def criterion_state(run_dir: Path) -> dict:
    (state,) = ckpt_io.load_trainer_state(run_dir / "checkpoints" / "step-00000007")["criterion"]
    return state


def test_criterion_state_is_saved_and_resumed(world, counting_reference, tmp_path, monkeypatch):
    reference = counting_reference
    assert [r["loss_calls"] for r in lines(reference)] == [1, 2, 3, 4, 5, 6, 7]
    assert int(criterion_state(reference)["calls"]) == 7
    counting(monkeypatch)
    run_dir = tmp_path / "run"
    train(tiny(world, *RESUME), run_dir, console=quiet(), hooks=sigint_at(4))
    state = ckpt_io.load_trainer_state(run_dir / "checkpoints" / "step-00000004")
    assert int(state["criterion"][0]["calls"]) == 4  # one entry per rank
    train(tiny(world, *RESUME), run_dir, resume=True, console=quiet())
    assert lines(run_dir) == lines(reference)  # the counter and the queue went on where they were
    ours, theirs = criterion_state(run_dir), criterion_state(reference)
    assert set(ours) == {"calls", "queue"} and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_keyboard_interrupt_inside_a_step_rewinds_the_criterion_state(
    world, counting_reference, tmp_path, monkeypatch
):
    counting(monkeypatch, interrupt_at=6)
    run_dir = tmp_path / "run"
    first = train(tiny(world, *RESUME), run_dir, console=quiet())
    assert first.status == "interrupted" and first.step == 5
    assert int(ckpt_io.load_trainer_state(first.last_checkpoint)["criterion"][0]["calls"]) == 5  # not 6
    counting(monkeypatch)
    train(tiny(world, *RESUME), run_dir, resume=True, console=quiet())
    assert lines(run_dir) == lines(counting_reference)


def test_a_checkpoint_without_criterion_state_resumes_with_a_fresh_one(world, tmp_path, monkeypatch):
    counting(monkeypatch)
    run_dir = tmp_path / "run"
    train(tiny(world, *SHORT, "run.save_steps=2"), run_dir, console=quiet(), hooks=sigint_at(2))
    path = run_dir / "checkpoints" / "step-00000002" / ckpt_io.TRAINER_STATE
    state = torch.load(path, weights_only=True)
    del state["criterion"]  # as written before criteria had state
    torch.save(state, path)
    assert train(tiny(world, *SHORT), run_dir, resume=True, console=quiet()).step == 3
    assert [r["loss_calls"] for r in lines(run_dir)] == [1, 2, 1]


# --------------------------------------------------------------------------------------------------
# learning rates of named parameter groups


def test_named_parameter_groups_log_their_learning_rates(world, tmp_path, monkeypatch):
    train(tiny(world, *SHORT), tmp_path / "plain", console=quiet())
    assert not [k for r in lines(tmp_path / "plain") for k in r if k.startswith("lr/")]  # unnamed groups

    def named(model, cfg):
        params = list(model.parameters())
        groups = [
            {"params": params[:4], "name": "stem", "lr": cfg.lr / 10},
            {"params": params[4:], "name": "rest"},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr)

    monkeypatch.setattr(trainer_module, "build_optimizer", named)
    seen: list[dict] = []
    cfg = tiny(world, *SHORT, "schedule.name=cosine", "schedule.warmup_epochs=0")
    train(cfg, tmp_path / "run", console=quiet(), hooks=TrainHooks(after_step=lambda s, v: seen.append(v)))
    rows = lines(tmp_path / "run")
    assert [r["lr"] for r in rows] == [r["lr/stem"] for r in rows]  # lr: group 0's
    assert all(r["lr/rest"] == pytest.approx(10 * r["lr/stem"], rel=1e-9) for r in rows)
    assert rows[0]["lr/rest"] == pytest.approx(cfg.optim.lr) and rows[2]["lr/rest"] < rows[1]["lr/rest"]
    assert not [k for v in seen for k in v if k.startswith("lr")]  # the hooks get the loss terms only


# --------------------------------------------------------------------------------------------------
# training items


class FirstItems(torch.utils.data.Dataset):
    """The first ``n`` items of a dataset, with lengths of their own (like a dataset of images whose
    items hold several expressions)."""

    def __init__(self, base, n: int, lengths: list[int]):
        self.base, self.n, self.lengths = base, n, lengths

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return self.base[key]

    def item_lengths(self) -> list[int]:
        return self.lengths


def test_sampler_and_curriculum_count_dataset_items_not_records(world, tmp_path, monkeypatch):
    lengths = [5, 1, 4, 2, 8, 3, 7, 6]
    real = builders.build_dataset
    monkeypatch.setattr(builders, "build_dataset", lambda *a, **k: FirstItems(real(*a, **k), 8, lengths))
    cfg = tiny(world, *SHORT, "run.curriculum_epochs=1")
    trainer = Trainer(cfg, tmp_path / "run", console=quiet())
    trainer.setup()
    try:
        assert len(trainer.train_records) == 12 and trainer.sampler.size == 8
        assert trainer.steps_per_epoch == 8 // 4
        assert trainer.sampler.pool(0) == [1, 2, 3, 5]  # the shortest half by the dataset's lengths
        trainer.fit()
    finally:
        trainer.close()
    assert [r["step"] for r in lines(tmp_path / "run")] == [1, 2, 3]


def test_a_loss_driven_schedule_observes_every_step_loss(world, tmp_path, monkeypatch):
    from langground.engine.optim import PlateauLR

    seen: list[float] = []
    real = PlateauLR.observe
    monkeypatch.setattr(PlateauLR, "observe", lambda self, loss: (seen.append(loss), real(self, loss)))
    cfg = tiny(world, *SHORT, "schedule.name=plateau", "schedule.warmup_epochs=0")
    train(cfg, tmp_path / "run", console=quiet())
    rows = lines(tmp_path / "run")
    assert len(seen) == len(rows) > 1  # one observation per optimiser step, the loss that step logged
    assert seen == pytest.approx([r["loss"] for r in rows], rel=1e-5)
