"""Errors caused by what the user handed over (files, fields, values), not by bugs.

Every message is one line naming the path/field/value and what was expected. The CLI prints such an
error as ``error: <message>`` and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LanggroundError(ValueError):
    """Bad input: a file, field or value that is not what langground expects."""


class DataError(LanggroundError):
    """A dataset file or directory that is missing, malformed or of the wrong layout."""


class CheckpointError(LanggroundError):
    """A checkpoint or config that is missing, malformed or does not match the model."""
