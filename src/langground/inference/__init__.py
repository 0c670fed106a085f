"""Inference: the Grounder API, image loading, pictures of predictions and explanations."""

from langground.inference.grounder import Grounder, GroundingOutput

__all__ = ["Grounder", "GroundingOutput"]
