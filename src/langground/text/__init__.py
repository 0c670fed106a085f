"""Tokenizer and vocabulary."""

from langground.text.tokenizer import tokenize
from langground.text.vocab import PAD, UNK, Vocabulary

__all__ = ["PAD", "UNK", "Vocabulary", "tokenize"]
