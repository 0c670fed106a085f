"""langground: language-guided visual grounding with dynamic, language-conditioned networks."""

from typing import Any

from langground.registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["Grounder", "create_model", "list_models", "register_model", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import langground` stays cheap; the inference stack loads on first use of Grounder.
    if name == "Grounder":
        from langground.inference.grounder import Grounder

        return Grounder
    raise AttributeError(f"module 'langground' has no attribute {name!r}")
