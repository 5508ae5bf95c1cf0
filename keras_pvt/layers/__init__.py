"""Shared building blocks of the keras_pvt model families."""

from keras_pvt.layers.attention import SpatialReductionAttention, multi_head_attention
from keras_pvt.layers.conv_attention import ConvAttention, ConvProjection
from keras_pvt.layers.core import (
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Layer,
    LayerNormalization,
)
from keras_pvt.layers.drop_path import DropPath
from keras_pvt.layers.encoder import EncoderBlock, PVTBlock, PVTv2Block, encoder_stage
from keras_pvt.layers.ffn import MLP, MixFFN, gelu
from keras_pvt.layers.patch_embedding import OverlapPatchEmbedding
from keras_pvt.layers.pooling import AdaptiveAveragePooling2D, adaptive_pool_matrix
from keras_pvt.layers.position_embedding import PositionEmbedding
from keras_pvt.layers.resize import ResizeLike, bilinear_resize

__all__ = [
    "AdaptiveAveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "ConvAttention",
    "ConvProjection",
    "Dense",
    "DepthwiseConv2D",
    "DropPath",
    "Dropout",
    "EncoderBlock",
    "Layer",
    "LayerNormalization",
    "MLP",
    "MixFFN",
    "OverlapPatchEmbedding",
    "PVTBlock",
    "PVTv2Block",
    "PositionEmbedding",
    "ResizeLike",
    "SpatialReductionAttention",
    "adaptive_pool_matrix",
    "bilinear_resize",
    "encoder_stage",
    "gelu",
    "multi_head_attention",
]
