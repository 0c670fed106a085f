"""Reusable blocks: the LaConv block and its parts, FiLM / QGHC alternatives, pooling, conv helpers."""

from langground.layers.conv import ConvBNAct, fuse_bn_, make_act
from langground.layers.dynamic import DynamicConv, shared_dynamic_dwconv
from langground.layers.film import FiLMBlock
from langground.layers.generator import LanguageKernelGenerator, ParameterGenerator
from langground.layers.laconv import LaConv, LaConvBlock
from langground.layers.mlp import ConvMLP
from langground.layers.packing import pixel_pack, pixel_unpack
from langground.layers.pooling import AttentionPool, masked_mean
from langground.layers.position import PositionEmbeddingSine2d
from langground.layers.qghc import QGHCBlock

BLOCKS = {"laconv": LaConvBlock, "film": FiLMBlock, "qghc": QGHCBlock}

__all__ = [
    "BLOCKS",
    "AttentionPool",
    "ConvBNAct",
    "ConvMLP",
    "DynamicConv",
    "FiLMBlock",
    "LaConv",
    "LaConvBlock",
    "LanguageKernelGenerator",
    "ParameterGenerator",
    "PositionEmbeddingSine2d",
    "QGHCBlock",
    "fuse_bn_",
    "make_act",
    "masked_mean",
    "pixel_pack",
    "pixel_unpack",
    "shared_dynamic_dwconv",
]
