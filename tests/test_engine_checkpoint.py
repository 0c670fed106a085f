"""Checkpoint directories: atomic writes, keep-last-N, and one-line errors for checkpoints that do not fit."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from langground.config import load_preset
from langground.engine import checkpoint as ckpt_io
from langground.engine.builders import build_model
from langground.errors import CheckpointError, LanggroundError
from langground.text.vocab import Vocabulary
from tiny_config import TINY_MODEL

TINY = [*TINY_MODEL]


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def write(path: Path, step: int = 1, seed: int = 0, **kwargs) -> Path:
    cfg = load_preset("synth-laconvnet-t-rec", TINY)
    vocab = Vocabulary.build(["the red cube", "a small ball"])
    torch.manual_seed(seed)
    return ckpt_io.save_checkpoint(
        path, model=build_model(cfg, vocab), config=cfg, vocab=vocab, metadata={"step": step}, **kwargs
    )


def test_layout_and_round_trip(tmp_path):
    ckpt = write(tmp_path / "c", trainer_state={"step": 1})
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "config.yaml",
        "vocab.json",
        "trainer_state.pt",
    }
    loaded = ckpt_io.load_checkpoint(ckpt)
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())
    assert not loaded.model.training and loaded.metadata["step"] == "1"
    assert ckpt_io.load_trainer_state(ckpt) == {"step": 1}


def test_a_failed_write_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    ckpt = write(tmp_path / "c", step=1, trainer_state={"step": 1})
    before = digest(ckpt)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)  # the last file of the directory fails
    with pytest.raises(OSError, match="No space left"):
        write(tmp_path / "c", step=2, seed=1, trainer_state={"step": 2})
    with pytest.raises(OSError):
        write(tmp_path / "new", step=2, trainer_state={"step": 2})
    assert digest(ckpt) == before
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp directories left
    monkeypatch.undo()

    write(tmp_path / "c", step=2, seed=1, trainer_state={"step": 2})  # a replacement goes through whole
    assert digest(ckpt) != before and ckpt_io.read_metadata(ckpt)["step"] == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_keep_last_and_latest(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        write(run / "checkpoints" / ckpt_io.step_dir_name(step), step=step, trainer_state={"step": step})
    write(run / "checkpoints" / ckpt_io.step_dir_name(5), step=5)  # no trainer state: cannot resume
    (run / "checkpoints" / "step-00000009").mkdir()  # no weights: not a checkpoint
    removed = ckpt_io.prune_checkpoints(run, keep_last=3)
    assert [p.name for p in removed] == ["step-00000001", "step-00000002"]
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == [
        "step-00000003",
        "step-00000004",
        "step-00000005",
    ]
    assert ckpt_io.latest_checkpoint(run).name == "step-00000004"
    assert ckpt_io.resolve_checkpoint(run).name == "step-00000005"  # newest weights when there is no best/
    write(run / "best", step=3)
    assert ckpt_io.resolve_checkpoint(run) == run / "best"
    assert ckpt_io.resolve_checkpoint(run / "best" / "model.safetensors") == run / "best"


def _one_line(match: str, fn, *args) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_checkpoints_that_do_not_fit_are_one_line_errors(tmp_path):
    ckpt = write(tmp_path / "c")
    config = yaml.safe_load((ckpt / "config.yaml").read_text())

    other = tmp_path / "other"
    write(other)
    config["model"]["name"] = "laconvnet_s"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    _one_line(
        r"holds weights of model 'laconvnet_t' but the config asks for 'laconvnet_s'",
        ckpt_io.load_checkpoint,
        other,
    )

    wider = tmp_path / "wider"
    write(wider)
    config["model"]["name"] = "laconvnet_t"
    config["model"]["kwargs"]["neck_dim"] = 24
    (wider / "config.yaml").write_text(yaml.safe_dump(config))
    _one_line(
        r"wider/model.safetensors: weights do not fit the model built from config.yaml: .*size mismatch",
        ckpt_io.load_checkpoint,
        wider,
    )

    missing = tmp_path / "missing"
    write(missing)
    tensors = load_file(str(missing / "model.safetensors"))
    meta = ckpt_io.read_metadata(missing)
    dropped = sorted(k for k in tensors if k.endswith(".weight"))[:5]
    save_file(
        {k: v for k, v in tensors.items() if k not in dropped}, str(missing / "model.safetensors"), meta
    )
    message = _one_line(
        r"weights do not match the model built from config.yaml: missing keys",
        ckpt_io.load_checkpoint,
        missing,
    )
    assert dropped[0] in message and "(5 in all)" in message

    typo = tmp_path / "typo"
    write(typo)
    (typo / "config.yaml").write_text("model:\n  nmae: laconvnet_t\n")
    _one_line(r"typo/config.yaml: unknown config key 'model.nmae'", ckpt_io.load_checkpoint, typo)

    for name, pattern in [
        ("config.yaml", "config.yaml missing"),
        ("vocab.json", "vocabulary file not found"),
    ]:
        broken = tmp_path / f"no-{name}"
        write(broken)
        (broken / name).unlink()
        _one_line(pattern, ckpt_io.load_checkpoint, broken)

    garbage = tmp_path / "garbage"
    write(garbage, trainer_state={"step": 1})
    (garbage / "model.safetensors").write_bytes(b"not safetensors")
    (garbage / "trainer_state.pt").write_bytes(b"not a pickle")
    _one_line(r"garbage/model.safetensors: not a readable safetensors file", ckpt_io.load_checkpoint, garbage)
    _one_line(r"garbage/trainer_state.pt: cannot read trainer state", ckpt_io.load_trainer_state, garbage)
    _one_line(r"trainer_state.pt: missing: this checkpoint cannot resume", ckpt_io.load_trainer_state, other)

    (tmp_path / "empty").mkdir()
    _one_line(
        r"empty: not a checkpoint \(model.safetensors missing\)", ckpt_io.load_checkpoint, tmp_path / "empty"
    )
    _one_line(r"nowhere: no such checkpoint", ckpt_io.load_checkpoint, tmp_path / "nowhere")


def test_glove_path_in_config_initialises_and_is_not_needed_to_reload(tmp_path):
    vocab = Vocabulary.build(["the red cube", "a small ball"])
    glove = tmp_path / "glove.txt"
    glove.write_text("red " + " ".join(["0.5"] * 16) + "\ncube " + " ".join(["-0.25"] * 16) + "\n")
    cfg = load_preset("synth-laconvnet-t-rec", [*TINY, f"model.kwargs.glove_path={glove}"])
    model = build_model(cfg, vocab)  # the engine hands the vocabulary to the GloVe lookup
    table = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).weight
    assert torch.allclose(table[vocab.words.index("red")], torch.full((16,), 0.5))
    assert torch.allclose(table[vocab.words.index("cube")], torch.full((16,), -0.25))
    ckpt = ckpt_io.save_checkpoint(tmp_path / "c", model=model, config=cfg, vocab=vocab)
    glove.unlink()  # the checkpoint's weights are what count now
    loaded = ckpt_io.load_checkpoint(ckpt)
    emb = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Embedding)).weight
    assert torch.equal(emb, table)


class _Queue(torch.nn.Module):
    """A loss module's state, like a momentum queue."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("queue", torch.zeros(3))


def _train_state(info):
    from langground.engine.train_state import TrainState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainState(model, optimizer, scheduler, scaler, _Queue(), None, info, 3, "rec/prec@0.5")


def test_trainer_state_restores_each_rank_its_own_rng_and_criterion_state(tmp_path):
    from langground.engine.distributed import DistInfo
    from langground.engine.train_state import capture_rng

    single = _train_state(DistInfo())
    single.criterion.queue.copy_(torch.tensor([1.0, 2.0, 3.0]))
    single.progress.step, single.progress.best_value, single.progress.best_step = 5, 0.25, 3
    state = single.state_dict()
    ((name, saved),) = state["criterion"][0].items()
    assert name == "queue" and torch.equal(saved, torch.tensor([1.0, 2.0, 3.0])) and len(state["rng"]) == 1
    state["criterion"][0]["queue"].add_(1)  # a copy: the live buffer is not in the saved state
    assert torch.equal(single.criterion.queue, torch.tensor([1.0, 2.0, 3.0]))

    # as two ranks would have written it: rank 1 takes the second entry of each list
    torch.manual_seed(1)
    rng0 = capture_rng()
    torch.manual_seed(2)
    rng1 = capture_rng()
    expected = torch.rand(4)
    state.update(
        world_size=2, rng=[rng0, rng1], criterion=[{"queue": torch.zeros(3)}, {"queue": torch.ones(3)}]
    )
    (tmp_path / "c").mkdir()
    state["model"] = single.model.state_dict()
    torch.save(state, tmp_path / "c" / ckpt_io.TRAINER_STATE)
    rank1 = _train_state(DistInfo(rank=1, world_size=2))
    rank1.load(tmp_path / "c")
    assert torch.equal(rank1.criterion.queue, torch.ones(3))
    assert torch.equal(torch.rand(4), expected)  # rank 1's RNG
    p = rank1.progress
    assert (p.step, p.best_value, p.best_step, p.last_checkpoint) == (5, 0.25, 3, tmp_path / "c")

    # a checkpoint from before stateful criteria: the criterion keeps its own state
    del state["criterion"]
    torch.save(state, tmp_path / "c" / ckpt_io.TRAINER_STATE)
    old = _train_state(DistInfo(rank=1, world_size=2))
    old.criterion.queue.fill_(7.0)
    old.load(tmp_path / "c")
    assert torch.equal(old.criterion.queue, torch.full((3,), 7.0))

    # another criterion: one line that names the checkpoint and the keys
    state["criterion"] = [{"other": torch.zeros(1)}] * 2
    torch.save(state, tmp_path / "c" / ckpt_io.TRAINER_STATE)
    with pytest.raises(LanggroundError, match=r"c: cannot resume the loss state: .*queue") as info:
        _train_state(DistInfo(rank=1, world_size=2)).load(tmp_path / "c")
    assert "\n" not in str(info.value)


@pytest.fixture
def umask():
    """Run a test under a given umask (restored after)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_get_the_modes_the_umask_allows(tmp_path, umask, mask, file_mode, dir_mode):
    """Not mkstemp's 0600 / mkdtemp's 0700: a checkpoint, a config, a vocabulary and a predictions file are
    as readable as a plain open() would make them (0644 under the usual umask 022; 0600 under 077)."""
    from langground.config import save_config
    from langground.engine.evaluate import write_jsonl_atomic

    umask(mask)
    ckpt = write(tmp_path / "run" / "c", trainer_state={"step": 1})
    assert stat.S_IMODE(ckpt.stat().st_mode) == dir_mode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ckpt.iterdir()}
    assert modes == dict.fromkeys(
        ["model.safetensors", "config.yaml", "vocab.json", "trainer_state.pt"], file_mode
    )
    cfg = load_preset("synth-laconvnet-t-rec", TINY)
    save_config(cfg, tmp_path / "config.yaml")
    Vocabulary.build(["a red cube"]).save(tmp_path / "vocab.json")
    write_jsonl_atomic(tmp_path / "preds.jsonl", [{"a": 1}])
    for name in ("config.yaml", "vocab.json", "preds.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
