"""Inference: the Grounder API, image loading, pictures of predictions and explanations."""

from langground.inference.grounder import Grounder, GroundingOutput
from langground.inference.images import LargeImageWarning, TruncationWarning, UnknownWordsWarning

__all__ = ["Grounder", "GroundingOutput", "LargeImageWarning", "TruncationWarning", "UnknownWordsWarning"]
