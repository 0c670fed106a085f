"""langground: language-guided visual grounding with dynamic, language-conditioned networks."""

from langground.registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "__version__"]
