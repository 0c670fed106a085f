"""Word vocabulary: built from training expressions, saved as JSON with every checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from langground._files import chmod_default
from langground.text.tokenizer import tokenize
from langground.types import TextBatch

PAD, UNK = "<pad>", "<unk>"


class Vocabulary:
    """Maps words to ids; id 0 is padding and id 1 is the unknown word."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}; got {words[:2]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    pad_id = 0
    unk_id = 1

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for t in texts for w in tokenize(t))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls([PAD, UNK, *ranked])

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in tokenize(text)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids if i != self.pad_id]

    def batch(self, texts: Sequence[str], max_length: int) -> TextBatch:
        """Tokenise and pad ``texts`` to a :class:`TextBatch` (truncated to ``max_length`` words).

        Raises:
            ValueError: for an empty batch or an expression with no words.
        """
        if len(texts) == 0:
            raise ValueError("empty text batch: expected at least one expression")
        token_lists = []
        for i, text in enumerate(texts):
            tokens = tokenize(text)[:max_length]
            if not tokens:
                raise ValueError(f"expression {i} ({text!r}) has no words: expected a non-empty expression")
            token_lists.append(tokens)
        length = max(len(t) for t in token_lists)
        ids = torch.zeros((len(texts), length), dtype=torch.long)
        for row, tokens in enumerate(token_lists):
            ids[row, : len(tokens)] = torch.tensor([self.index.get(w, self.unk_id) for w in tokens])
        return TextBatch(ids, ids != self.pad_id, list(texts), token_lists)

    def to_json(self) -> str:
        return json.dumps({"words": self.words}, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vocab-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        chmod_default(tmp, directory=False)  # mkstemp's 0600 -> what open() gives (0644 under umask 022)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            words = data["words"]
        except FileNotFoundError:
            raise ValueError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not a langground vocabulary (expected JSON with 'words'): {e}"
            ) from None
        return cls(words)
