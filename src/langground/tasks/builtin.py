"""Importing this module registers the built-in tasks."""

from langground.tasks import grounding, multitask, phrase, retrieval, vqa  # noqa: F401
