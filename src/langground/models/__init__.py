"""Model zoo: importing this package registers every model."""

from langground.models import (
    dmn,  # noqa: F401  (registers dmn / dmn_t)
    laconvnet,  # noqa: F401  (registers laconvnet_t / _s / _b)
    lads,  # noqa: F401  (registers lads_t / lads_r50)
    reftr,  # noqa: F401  (registers reftr_t / reftr_r50 / reftr_r101)
    slan,  # noqa: F401  (registers slan_t / slan_r50 / slan_vit_b)
    transvg,  # noqa: F401  (registers transvg_t / transvg_r50)
)
from langground.models.base import GroundingModel

__all__ = ["GroundingModel"]
