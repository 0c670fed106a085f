"""Words outside the model's vocabulary: listed per result, and one :class:`UnknownWordsWarning` per call."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from langground.inference.images import UnknownWordsWarning
from langground.text.vocab import Vocabulary


def unknown_words(words: Sequence[str], vocab: Vocabulary) -> list[str]:
    """The distinct ``words`` not in ``vocab``, in order of first appearance."""
    return list(dict.fromkeys(w for w in words if w not in vocab))


def warn_unknown(
    words_read: Sequence[Sequence[str]], vocab: Vocabulary, *, synthetic_only: bool, stacklevel: int
) -> None:
    """One warning for all of ``words_read`` (per pair, the words the model read): the words read as
    ``<unk>`` and their share of all words read; ``synthetic_only`` adds that the checkpoint only knows the
    synthetic world. ``stacklevel`` is ``warnings.warn``'s, counted from here (1: this function)."""
    words = [w for ws in words_read for w in ws]
    unknown = [w for w in words if w not in vocab]
    if not unknown:
        return
    distinct = unknown_words(unknown, vocab)
    shown = ", ".join(repr(w) for w in distinct[:8]) + (
        f" and {len(distinct) - 8} more" if len(distinct) > 8 else ""
    )
    message = (
        f"{len(unknown)} of {len(words)} words ({len(unknown) / len(words):.0%}) are not in the model's "
        f"{len(vocab)}-word vocabulary and were read as <unk>: {shown}; the scores do not account "
        "for them"
    )
    if synthetic_only:
        message += (
            "; this checkpoint was trained on the synthetic world only (config data.dataset='synth'): "
            "it knows that world's words and rendered scenes, not real photos"
        )
    warnings.warn(message, UnknownWordsWarning, stacklevel=stacklevel)
