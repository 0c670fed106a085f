"""Fine-tuning: ``model.init_from`` starts a run from another run's weights (pre-train, then fine-tune:
the Referring Transformer's region-description pre-training; the released code's ``--pretrained_model``).

Every parameter whose name and shape match is copied; parameters the checkpoint lacks (a head the
pre-training task has not, e.g. RES after phrase -> box pre-training) keep their initialisation. Word
embeddings of scratch text encoders are moved row by row to the new run's vocabulary (a word keeps its
vector; a word the pre-training never saw keeps its initialisation). Only the weights come over: the
optimiser, schedule and step count start afresh (``--resume`` continues a run instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from langground.errors import CheckpointError
from langground.text.vocab import Vocabulary


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` copied: tensor names loaded, kept at init, rows remapped."""

    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    words_remapped: int = 0


def _remap_words(
    model: nn.Module, state: dict[str, torch.Tensor], old: Vocabulary, new: Vocabulary
) -> tuple[dict[str, torch.Tensor], int]:
    """Embedding tables of the new vocabulary's size get the old table's rows by word."""
    target = model.state_dict()
    moved = 0
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if not isinstance(module, nn.Embedding) or module.num_embeddings != len(new) or key not in state:
            continue
        table = state[key]
        if table.shape[0] != len(old) or table.shape[1:] != target[key].shape[1:]:
            continue
        rows = target[key].detach().clone()
        for i, word in enumerate(new.words):
            j = old.index.get(word)
            if j is not None:
                rows[i] = table[j]
                moved += 1
        state = {**state, key: rows}
    return state, moved


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike, vocab: Vocabulary) -> InitReport:
    """Copy the weights of the checkpoint (or run directory) ``path`` into ``model`` where they fit.

    Raises:
        CheckpointError: one line for a missing / unreadable checkpoint, a parameter of the same name
            but another shape, or a checkpoint that shares no parameter with the model.
    """
    from langground.engine.checkpoint import VOCAB, WEIGHTS, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(path)
        state = load_file(str(ckpt / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"model.init_from={str(path)!r}: cannot read weights ({e})") from None
    except CheckpointError as e:
        raise CheckpointError(f"model.init_from: {e}") from None
    moved = 0
    if (ckpt / VOCAB).is_file():
        state, moved = _remap_words(model, state, Vocabulary.load(ckpt / VOCAB), vocab)
    target = model.state_dict()
    for key, value in state.items():
        if key in target and value.shape != target[key].shape:
            raise CheckpointError(
                f"model.init_from: {ckpt / WEIGHTS}: {key} has shape {tuple(value.shape)} there but "
                f"{tuple(target[key].shape)} in this model (another variant or model.kwargs?)"
            )
    loaded = {k: v for k, v in state.items() if k in target}
    if not loaded:
        raise CheckpointError(f"model.init_from: {ckpt / WEIGHTS} shares no parameter with this model")
    model.load_state_dict(loaded, strict=False)
    kept = sorted(k for k in target if k not in loaded)
    return InitReport(sorted(loaded), kept, moved)
