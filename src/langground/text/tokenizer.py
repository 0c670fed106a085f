"""Word tokenizer shared by every dataset and model (lower-case words, digits and apostrophes)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Split an expression into lower-case word tokens; punctuation is dropped.

    >>> tokenize("The small, RED cube left-of the ball.")
    ['the', 'small', 'red', 'cube', 'left', 'of', 'the', 'ball']
    """
    return _WORD.findall(text.lower())
