"""The training loop on a tiny synthetic world: run directory, checkpoints, exact resume, Ctrl-C,
divergence, gradient accumulation and clipping, EMA, best-checkpoint tracking, bf16 autocast."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from langground._hardware import cpu_bf16_native, cpu_bf16_runs
from langground.config import load_config, load_preset
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine import builders
from langground.engine import checkpoint as ckpt_io
from langground.engine.evaluate import EvalResult, evaluate_model
from langground.engine.logging import read_jsonl
from langground.engine.train import Trainer, TrainHooks, TrainingDiverged, train
from langground.errors import LanggroundError
from tiny_config import TINY_MODEL, TINY_RUN

# A model of a few thousand parameters at 64x64: a step takes milliseconds on one core.
TINY = [
    *TINY_MODEL,
    *TINY_RUN,
    "data.train_limit=12",  # 3 steps per epoch: runs cross epoch boundaries
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    return generate_world(root, SynthConfig(images=24, size=(96, 72), seed=0), workers=1)


def tiny(world: Path, *extra: str):
    return load_preset("synth-laconvnet-t-rec", [f"data.root={world}", *TINY, *extra])


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def train_lines(run_dir: Path, kind: str = "train") -> list[dict]:
    drop = ("samples_per_s", "seconds")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == kind]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def same_weights(a: Path, b: Path) -> bool:
    """Bitwise-equal tensors and equal metadata (safetensors writes its metadata in no fixed order)."""
    ta, tb = load_file(str(a)), load_file(str(b))
    meta = ckpt_io.read_metadata(a.parent) == ckpt_io.read_metadata(b.parent)
    return meta and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


# The resume tests compare against one uninterrupted run: 7 steps over 3 epochs, dropout and random
# flips/crops on, EMA and clipping (from the preset), validation at steps 3 and 6 and at the end.
RESUME = ["run.max_steps=7", "run.save_steps=2", "run.keep_last=2", "run.eval_steps=3"]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = train(tiny(world, *RESUME), run_dir, console=quiet())
    assert result.status == "completed" and result.step == 7
    return run_dir


def test_run_directory_checkpoints_and_keep_last(world, reference):
    cfg = tiny(world, *RESUME)
    # keep_last=2 of the saves at 2, 4, 6 and the final 7
    assert [p.name for p in ckpt_io.list_checkpoints(reference)] == ["step-00000006", "step-00000007"]
    files = {"model.safetensors", "config.yaml", "vocab.json", "trainer_state.pt"}
    for ckpt in ckpt_io.list_checkpoints(reference):
        assert {p.name for p in ckpt.iterdir()} == files
        assert load_config(ckpt / "config.yaml") == cfg  # the resolved config travels with the weights
        meta = ckpt_io.read_metadata(ckpt)
        assert meta["model_name"] == "laconvnet_t" and meta["task"] == "rec" and meta["weights"] == "ema"
        assert meta["step"] == ckpt.name.removeprefix("step-").lstrip("0")
        state = ckpt_io.load_trainer_state(ckpt)
        assert state["step"] == int(meta["step"]) and state["steps_per_epoch"] == 3
        assert {"optimizer", "scheduler", "scaler", "ema", "model", "rng", "best"} <= set(state)
        assert set(state["rng"][0]) >= {"torch", "python", "numpy"}
    assert load_config(reference / "config.yaml") == cfg
    assert load_config(reference / "best" / "config.yaml") == cfg
    assert not (reference / "best" / "trainer_state.pt").exists()
    assert not [p for p in reference.rglob(".*")]  # no temp files or directories left behind
    lines = train_lines(reference)
    assert [r["step"] for r in lines] == list(range(1, 8))
    assert all({"loss", "loss_giou", "loss_l1", "loss_obj", "grad_norm", "lr"} <= set(r) for r in lines)
    assert [r["step"] for r in train_lines(reference, "val")] == [3, 6, 7]
    result = json.loads((reference / "result.json").read_text())
    assert result["status"] == "completed" and result["step"] == 7 and result["best_step"] in (3, 6, 7)


def test_resume_after_sigint_equals_the_uninterrupted_run(world, reference, tmp_path):
    cfg = tiny(world, *RESUME)
    run_dir = tmp_path / "run"

    def ctrl_c(step: int, values: dict) -> None:
        if step == 3:  # a validation was due at step 3: the resumed run must still do it
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the loop's handler takes it

    first = train(cfg, run_dir, console=quiet(), hooks=TrainHooks(after_step=ctrl_c))
    assert first.status == "interrupted" and first.step == 3
    assert first.last_checkpoint == run_dir / "checkpoints" / "step-00000003"
    assert ckpt_io.load_trainer_state(first.last_checkpoint)["step"] == 3
    assert [r["step"] for r in train_lines(run_dir)] == [1, 2, 3]
    assert train_lines(run_dir, "val") == []

    second = train(cfg, run_dir, resume=True, console=quiet())
    assert second.status == "completed" and second.step == 7
    assert train_lines(run_dir) == train_lines(reference)  # every loss term, bit for bit
    assert train_lines(run_dir, "val") == train_lines(reference, "val")
    for name in ("checkpoints/step-00000007/model.safetensors", "best/model.safetensors"):
        assert same_weights(run_dir / name, reference / name)


def test_keyboard_interrupt_inside_a_step_saves_the_previous_one_and_resumes_exactly(
    world, reference, tmp_path, monkeypatch
):
    cfg = tiny(world, *RESUME)
    run_dir = tmp_path / "run"
    real = builders.build_criterion
    calls = {"n": 0}

    def interrupting(config, model=None):
        criterion = real(config, model)

        def forward(outputs, targets):
            calls["n"] += 1
            if calls["n"] == 6:  # step 6, after its forward pass (BatchNorm statistics moved)
                raise KeyboardInterrupt
            return type(criterion).forward(criterion, outputs, targets)

        criterion.forward = forward
        return criterion

    monkeypatch.setattr(builders, "build_criterion", interrupting)
    first = train(cfg, run_dir, console=quiet())
    assert first.status == "interrupted" and first.step == 5
    assert [p.name for p in ckpt_io.list_checkpoints(run_dir)] == ["step-00000004", "step-00000005"]

    monkeypatch.setattr(builders, "build_criterion", real)
    second = train(cfg, run_dir, resume=True, console=quiet())
    assert second.step == 7
    assert train_lines(run_dir) == train_lines(reference)
    final = "checkpoints/step-00000007/model.safetensors"
    assert same_weights(run_dir / final, reference / final)


def test_resume_refuses_another_config(world, reference):
    other = tiny(world, *RESUME, "optim.lr=0.5")
    with pytest.raises(LanggroundError, match=r"started with another config \(optim.lr: 0.001 -> 0.5\)"):
        train(other, reference, resume=True, console=quiet())
    with pytest.raises(LanggroundError, match="run directory is not empty"):
        train(tiny(world, *RESUME), reference, console=quiet())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    cfg = tiny(world, "run.max_steps=6", "run.save_steps=2")
    run_dir = tmp_path / "run"
    real = builders.build_criterion
    calls = {"n": 0}

    def poisoned(config, model=None):
        criterion = real(config, model)

        def forward(outputs, targets):
            calls["n"] += 1
            losses = type(criterion).forward(criterion, outputs, targets)
            if calls["n"] == 4:
                losses["loss"] = losses["loss"] * float("nan")
            return losses

        criterion.forward = forward
        return criterion

    kept = {}

    def remember(step: int, values: dict) -> None:
        if step == 3:
            kept.update(digest(run_dir / "checkpoints" / "step-00000002"))

    monkeypatch.setattr(builders, "build_criterion", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, run_dir, console=quiet(), hooks=TrainHooks(after_step=remember))
    message = str(info.value)
    assert message.startswith("step 4: non-finite loss (") and "loss=nan" in message and "\n" not in message
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'step-00000002'}" in message
    assert [p.name for p in ckpt_io.list_checkpoints(run_dir)] == ["step-00000002"]
    assert digest(run_dir / "checkpoints" / "step-00000002") == kept  # untouched since it was written
    assert not [p for p in run_dir.rglob(".*")]
    error = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert error["kind"] == "error" and error["step"] == 4 and error["message"] == message
    model = ckpt_io.load_checkpoint(run_dir).model
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def test_non_finite_weights_are_never_checkpointed(world, tmp_path):
    trainer = Trainer(tiny(world, "run.max_steps=3", "run.save_steps=1"), tmp_path / "run", console=quiet())

    def poison(step: int, values: dict) -> None:
        if step == 2:  # a finite loss, but the update left a NaN behind
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")

    trainer.hooks = TrainHooks(after_step=poison)
    trainer.setup()
    try:
        with pytest.raises(TrainingDiverged, match="step 3: non-finite weights"):
            trainer.fit()
    finally:
        trainer.close()
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")] == ["step-00000001"]


SGD = [
    "optim.name=sgd",
    "optim.momentum=0.0",
    "optim.lr=0.1",
    "schedule.name=constant",
    "schedule.warmup_epochs=0",
    "run.clip_grad_norm=null",
    "run.ema=false",
    "run.max_steps=1",
    "data.val_split=null",
    "model.kwargs.dropout=0.0",
    "model.kwargs.kernel_dropout=0.0",
]


def _grads(model: nn.Module, criterion: nn.Module, batches: list, scale: float) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).train()
    for b in batches:
        (criterion(model(**b.model_inputs()), b.targets)["loss"] * scale).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_averages_the_micro_batches(world, tmp_path):
    trainer = Trainer(
        tiny(world, *SGD, "run.batch_size=2", "run.grad_accum=2"), tmp_path / "run", console=quiet()
    )
    trainer.setup()
    assert trainer.steps_per_epoch == 12 // 2 // 2
    start = copy.deepcopy(trainer.model)
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.loader)
    micro = [next(batches), next(batches)]  # what the first optimiser step sees
    assert {r.sample_id for r in micro[0].records}.isdisjoint(r.sample_id for r in micro[1].records)
    with torch.no_grad():
        losses = [
            float(trainer.criterion(start.train()(**b.model_inputs()), b.targets)["loss"]) for b in micro
        ]
    both = _grads(start, trainer.criterion, micro, 0.5)
    last_only = _grads(start, trainer.criterion, micro[1:], 1.0)
    try:
        trainer.fit()
    finally:
        trainer.close()
    params = dict(start.named_parameters())
    moved = 0.0
    for name, p in trainer.model.named_parameters():
        expected = params[name] - 0.1 * both[name] if name in both else params[name]
        torch.testing.assert_close(p.detach(), expected.detach(), rtol=0, atol=1e-6)
        if name in both:
            moved = max(moved, float((both[name] - last_only[name]).abs().max()))
    assert moved > 1e-4  # the first micro-batch's gradient counts
    (logged,) = train_lines(tmp_path / "run")
    assert logged["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_gradient_clipping_bounds_the_update(world, tmp_path):
    trainer = Trainer(
        tiny(world, *SGD, "optim.lr=1.0", "run.clip_grad_norm=0.001"), tmp_path / "run", console=quiet()
    )
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    try:
        trainer.fit()
    finally:
        trainer.close()
    step = torch.cat([(p.detach() - before[n]).flatten() for n, p in trainer.model.named_parameters()])
    (logged,) = train_lines(tmp_path / "run")
    assert logged["grad_norm"] > 0.01  # the norm before clipping is logged
    assert float(step.norm()) == pytest.approx(0.001, rel=1e-3)  # lr 1 x the clipped norm


def test_ema_weights_are_what_is_saved_and_evaluated(world, tmp_path):
    cfg = tiny(world, "run.max_steps=3", "run.ema=true", "run.ema_decay=0.6", "run.ema_warmup=true")
    trainer = Trainer(cfg, tmp_path / "run", console=quiet())
    raw: list[dict[str, torch.Tensor]] = []
    trainer.hooks = TrainHooks(after_step=lambda s, v: raw.append(copy.deepcopy(trainer.model.state_dict())))
    trainer.setup()
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    expected = dict(raw[0])  # the first update copies the weights, then d_n = min(decay, (1 + n) / (10 + n))
    for n, weights in enumerate(raw[1:], start=1):
        d = min(0.6, (1 + n) / (10 + n))
        expected = {
            k: d * v + (1 - d) * weights[k] if v.is_floating_point() else weights[k]
            for k, v in expected.items()
        }
    saved = load_file(str(result.last_checkpoint / "model.safetensors"))
    assert set(saved) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-6)
    assert any(not torch.equal(saved[k], raw[-1][k]) for k in saved)  # not the raw weights
    state = ckpt_io.load_trainer_state(result.last_checkpoint)
    assert all(torch.equal(state["model"][k], raw[-1][k]) for k in raw[-1])  # raw ones resume training

    (val,) = train_lines(tmp_path / "run", "val")
    kwargs = dict(device=torch.device("cpu"))
    on_ema = evaluate_model(trainer.ema.module, trainer.val_records, cfg, trainer.vocab, None, **kwargs)
    on_raw = evaluate_model(trainer.model, trainer.val_records, cfg, trainer.vocab, None, **kwargs)
    assert val["rec/miou"] == on_ema.metrics["rec/miou"] != on_raw.metrics["rec/miou"]


def test_best_checkpoint_tracks_the_best_validation(world, tmp_path, monkeypatch):
    import langground.engine.callbacks as callbacks_module

    scores = [0.2, 0.5, 0.3, 0.4]
    seen: list[tuple[str, dict]] = []

    def scripted(model, records, config, vocab, answers, **kwargs):
        seen.append((records.split, copy.deepcopy(model.state_dict())))
        value = scores[len(seen) - 1] if len(seen) <= len(scores) else 0.0
        return EvalResult({"rec/prec@0.5": value, "rec/count": 6.0}, "rec", split=records.split)

    monkeypatch.setattr(callbacks_module, "evaluate_model", scripted)
    cfg = tiny(world, "run.max_steps=4", "run.eval_steps=1", "run.ema=false", "data.test_splits=[testA]")
    weights: list[dict] = []
    hooks = TrainHooks(after_step=lambda s, v: weights.append(copy.deepcopy(trainer.model.state_dict())))
    trainer = Trainer(cfg, tmp_path / "run", console=quiet(), hooks=hooks)
    trainer.setup()
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert (result.best_step, result.best_value) == (2, 0.5)
    best = tmp_path / "run" / "best"
    meta = ckpt_io.read_metadata(best)
    assert (meta["step"], meta["metric"], meta["value"]) == ("2", "rec/prec@0.5", "0.5")
    saved = load_file(str(best / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in weights[1].items())  # the weights of step 2
    assert [split for split, _ in seen] == ["val"] * 4 + ["testA"]
    assert all(torch.equal(seen[-1][1][k], v) for k, v in weights[1].items())  # test splits: best weights
    assert [r["rec/prec@0.5"] for r in train_lines(tmp_path / "run", "val")] == scores
    assert json.loads((tmp_path / "run" / "result.json").read_text())["best_step"] == 2


def test_time_limit_stops_with_a_checkpoint(world, tmp_path):
    result = train(tiny(world, "run.max_steps=5", "run.max_minutes=1e-9"), tmp_path / "run", console=quiet())
    assert result.status == "time_limit" and result.step == 1
    assert ckpt_io.latest_checkpoint(tmp_path / "run").name == "step-00000001"
    # the budget is spent, not the run broken: it is validated (best/ kept) like a finished run
    assert result.best_step == 1 and result.val and (tmp_path / "run" / ckpt_io.BEST_DIR).is_dir()


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert builders.resolve_precision("none", cpu).dtype is None
    with pytest.raises(LanggroundError, match="run.amp='fp16' needs a CUDA device"):
        builders.resolve_precision("fp16", cpu)
    auto = builders.resolve_precision("auto", cpu)
    assert auto.dtype == (torch.bfloat16 if cpu_bf16_native() else None) and not auto.scaler


@pytest.mark.skipif(not cpu_bf16_runs(), reason="this CPU cannot run bf16 at all")
def test_bf16_autocast_on_cpu(world, tmp_path):
    trainer = Trainer(tiny(world, "run.max_steps=2", "run.amp=bf16"), tmp_path / "run", console=quiet())
    trainer.setup()
    dtypes = []
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert trainer.precision.name == "bf16" and dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    lines = train_lines(tmp_path / "run")
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    with safe_open(str(result.last_checkpoint / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) <= {torch.float32, torch.int64}


def test_progress_lines_and_tensorboard(world, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    console = quiet()  # not a terminal: a plain progress line every log_every steps
    cfg = tiny(world, "run.max_steps=2", "run.progress=true", "run.tensorboard=true", "run.log_images=2")
    train(cfg, tmp_path / "run", console=console)
    text = console.file.getvalue()
    for step in (1, 2):
        assert f"step {step}/2 ep 1 giou " in text
    assert " loss " in text and "samples/s ETA" in text and "val rec/prec@0.5 = " in text
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss", "train/loss_giou", "train/lr", "val/rec/prec@0.5"} <= scalars
    assert {"val/examples/0", "val/examples/1"} <= images
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
