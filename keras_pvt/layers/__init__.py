"""Shared building blocks of the keras_pvt model families."""

from keras_pvt.layers.attention import SpatialReductionAttention, multi_head_attention
from keras_pvt.layers.conv import Conv2D, Dense, DepthwiseConv2D
from keras_pvt.layers.conv_attention import ConvAttention, ConvProjection
from keras_pvt.layers.drop_path import DropPath
from keras_pvt.layers.ffn import MLP, MixFFN, gelu
from keras_pvt.layers.patch_embedding import OverlapPatchEmbedding
from keras_pvt.layers.pooling import AdaptiveAveragePooling2D, adaptive_pool_matrix
from keras_pvt.layers.position_embedding import PositionEmbedding, bilinear_resize
from keras_pvt.layers.sublayer import add_residual, call_sublayer

__all__ = [
    "AdaptiveAveragePooling2D",
    "Conv2D",
    "ConvAttention",
    "ConvProjection",
    "Dense",
    "DepthwiseConv2D",
    "DropPath",
    "MLP",
    "MixFFN",
    "OverlapPatchEmbedding",
    "PositionEmbedding",
    "SpatialReductionAttention",
    "adaptive_pool_matrix",
    "add_residual",
    "bilinear_resize",
    "call_sublayer",
    "gelu",
    "multi_head_attention",
]
