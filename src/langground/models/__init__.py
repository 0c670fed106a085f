"""Model zoo: importing this package registers every model."""

from langground.models import (
    laconvnet,  # noqa: F401  (registers laconvnet_t / _s / _b)
    lads,  # noqa: F401  (registers lads_t / lads_r50)
)
from langground.models.base import GroundingModel

__all__ = ["GroundingModel"]
