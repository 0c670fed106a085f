"""Checkpoint directories: written atomically, loaded with one-line errors.

A checkpoint is a directory (DESIGN.md)::

    model.safetensors   weights to evaluate / deploy (the EMA weights when the run keeps an EMA),
                        metadata: format, model name, task, langground version, step, which weights
    config.yaml         the fully resolved Config: rebuilds the model and its preprocessing
    vocab.json          the word vocabulary
    answers.json        VQA answer list (id order), only for models with an answer head
    trainer_state.pt    only for resuming: optimizer, scheduler, scaler, EMA, raw weights, RNG states,
                        step, epoch, position in the epoch

It is written into a hidden temp directory next to its final place and renamed, so a reader never sees
a half-written one; its files and directory then get the modes the umask allows (0644 / 0755 under
022), not the temp directory's 0700. A run directory keeps ``checkpoints/step-NNNNNNNN/`` (the last ``keep_last``) and
``best/`` (best main metric on the validation split).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

import langground
from langground._files import chmod_tree_default
from langground.config import Config, load_config, save_config
from langground.errors import CheckpointError, LanggroundError
from langground.text.vocab import Vocabulary

FORMAT = "langground-checkpoint/1"
WEIGHTS, CONFIG, VOCAB, ANSWERS, TRAINER_STATE = (
    "model.safetensors",
    "config.yaml",
    "vocab.json",
    "answers.json",
    "trainer_state.pt",
)
CHECKPOINTS_DIR, BEST_DIR = "checkpoints", "best"


# --------------------------------------------------------------------------------------------------
# writing


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` directory to ``final``, replacing an older one without a gap in content.

    A plain rename when ``final`` does not exist; otherwise the old directory is first renamed aside
    and deleted after the new one is in place.
    """
    if final.exists():
        trash = final.parent / f".old-{final.name}-{os.getpid()}"
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    config: Config,
    vocab: Vocabulary,
    answers: Sequence[str] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing one that is there).

    Args:
        model: the module whose ``state_dict`` goes to ``model.safetensors`` (shared tensors handled).
        metadata: extra string-able entries of the safetensors header (e.g. ``step``, ``weights``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        meta = {
            "format": FORMAT,
            "model_name": config.model.name,
            "task": config.model.task,
            "langground_version": langground.__version__,
            **{k: str(v) for k, v in (metadata or {}).items()},
        }
        save_model(model, str(tmp / WEIGHTS), metadata=meta)
        save_config(config, tmp / CONFIG)
        vocab.save(tmp / VOCAB)
        if answers is not None:
            _write_json(tmp / ANSWERS, {"answers": list(answers)})
        if trainer_state is not None:
            torch.save(dict(trainer_state), tmp / TRAINER_STATE)
        chmod_tree_default(tmp)  # mkdtemp's 0700 (and mkstemp's 0600): readable as the umask allows
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The periodic checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / WEIGHTS).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = [p for p in list_checkpoints(run_dir) if (p / TRAINER_STATE).is_file()]
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic checkpoints; returns the deleted ones."""
    found = list_checkpoints(run_dir)
    doomed = found[: max(len(found) - keep_last, 0)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------------------------------------
# reading


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns; unpacks as ``model, config, vocab, answers``."""

    model: nn.Module
    config: Config
    vocab: Vocabulary
    answers: list[str] | None
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)

    def __iter__(self):  # model, config, vocab, answers = load_checkpoint(...)
        return iter((self.model, self.config, self.vocab, self.answers))

    @property
    def answer_vocab(self) -> dict[str, int] | None:
        return None if self.answers is None else {a: i for i, a in enumerate(self.answers)}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory (its ``best/``, else its newest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    if p.is_file():
        if p.name == WEIGHTS:
            return p.parent
        raise CheckpointError(f"{p}: expected a checkpoint directory (with {WEIGHTS}) or a run directory")
    if (p / WEIGHTS).is_file():
        return p
    if (p / BEST_DIR / WEIGHTS).is_file():
        return p / BEST_DIR
    found = list_checkpoints(p)
    if found:
        return found[-1]
    raise CheckpointError(
        f"{p}: not a checkpoint ({WEIGHTS} missing) and not a run directory with {BEST_DIR}/ or "
        f"{CHECKPOINTS_DIR}/step-*/"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of a checkpoint's weights."""
    weights = Path(path) / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None


def read_answers(ckpt: Path) -> list[str] | None:
    path = ckpt / ANSWERS
    if not path.is_file():
        return None
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise TypeError("'answers' is not a list of strings")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not an answer list (expected JSON with 'answers'): {e}") from None
    return answers


def _summarise_keys(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_weights(model: nn.Module, weights: Path, strict: bool = True) -> None:
    """Load ``model.safetensors`` into ``model``; a mismatch is a one-line CheckpointError."""
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: cannot read weights ({e})") from None
    except RuntimeError as e:  # shape mismatches
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise CheckpointError(
            f"{weights}: weights do not fit the model built from config.yaml: {first}"
        ) from None
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {_summarise_keys(sorted(missing))}")
        if unexpected:
            parts.append(f"unexpected keys {_summarise_keys(sorted(unexpected))}")
        raise CheckpointError(
            f"{weights}: weights do not match the model built from config.yaml: {'; '.join(parts)}"
        )


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", config: Config | None = None
) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint (or of a run directory's best/newest one) with its weights.

    Args:
        path: checkpoint directory or run directory.
        device: where the model goes; it is returned in eval mode.
        config: use this config instead of the checkpoint's ``config.yaml`` (it must fit the weights).

    Raises:
        CheckpointError: one line naming the path and the problem (missing file, unreadable config,
            weights of another model, missing or unexpected keys, shape mismatch).
    """
    from langground.engine.builders import build_model  # builders import the model zoo: keep it lazy

    ckpt = resolve_checkpoint(path)
    meta = read_metadata(ckpt)
    if config is None:
        if not (ckpt / CONFIG).is_file():
            raise CheckpointError(f"{ckpt}: {CONFIG} missing: cannot rebuild the model")
        try:
            config = load_config(ckpt / CONFIG)
        except LanggroundError as e:
            raise CheckpointError(str(e)) from None
    name = meta.get("model_name")
    if name is not None and name != config.model.name:
        raise CheckpointError(
            f"{ckpt}: {WEIGHTS} holds weights of model {name!r} but the config asks for {config.model.name!r}"
        )
    task = meta.get("task")
    if task is not None and task != config.model.task:
        raise CheckpointError(
            f"{ckpt}: {WEIGHTS} was trained for task {task!r} but the config asks for {config.model.task!r}"
        )
    try:
        vocab = Vocabulary.load(ckpt / VOCAB)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    answers = read_answers(ckpt)
    try:
        model = build_model(config, vocab, answers, pretrained=False)
    except LanggroundError as e:
        raise CheckpointError(f"{ckpt}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / CONFIG}: cannot build model {config.model.name!r}: {e}") from None
    load_weights(model, ckpt / WEIGHTS)
    model.to(device).eval()
    return LoadedCheckpoint(model, config, vocab, answers, ckpt, meta)


def load_trainer_state(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: this checkpoint cannot resume training")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: unpickling errors vary (and span many lines)
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"{path}: cannot read trainer state ({type(e).__name__}: {first})") from None
