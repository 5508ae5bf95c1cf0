"""The PVT encoder block (v1 and v2) and the stack of blocks that makes a stage."""

import keras

from keras_pvt.kernels import residual
from keras_pvt.layers.attention import SpatialReductionAttention
from keras_pvt.layers.core import Layer, LayerNormalization
from keras_pvt.layers.drop_path import DropPath, drop_path_rates
from keras_pvt.layers.ffn import MLP, MixFFN


@keras.saving.register_keras_serializable(package="keras_pvt")
class EncoderBlock(Layer):
    """One PVT encoder block: pre-norm spatial-reduction attention and a feed-forward
    network, each a residual branch with stochastic depth.

        x = x + DropPath(SRA(LN(x)))
        x = x + DropPath(FFN(LN(x)))

    PVT v2 uses Mix-FFN (`mix_ffn=True`) and optionally linear SRA; PVT v1 a plain MLP.
    Input: an NHWC map or, without spatial reduction, a `(batch, tokens, channels)`
    sequence (PVT v1's last stage, which carries the class token). Sublayer names follow
    transformers' `PvtV2BlockLayer` / `PvtLayer`, so the weight maps are tables.

    Args:
        hidden_size: channels.
        num_heads: attention heads.
        mlp_ratio: expansion of the feed-forward network.
        sr_ratio: spatial-reduction ratio of the attention's keys and values.
        linear_attention: linear SRA (7x7 pooling; also adds Mix-FFN's ReLU).
        mix_ffn: Mix-FFN (PVT v2) instead of the plain MLP (PVT v1).
        qkv_bias: bias in the query/key/value projections.
        drop_path: stochastic depth of both branches.
        epsilon: epsilon of the two LayerNorms.
        reduction_epsilon: epsilon of the spatial-reduction LayerNorm.
        attention_dropout: dropout on the attention weights.
        hidden_dropout: dropout after the projections and in the FFN.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        linear_attention: bool = False,
        mix_ffn: bool = True,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        epsilon: float = 1e-6,
        reduction_epsilon: float = 1e-6,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._store_arguments(locals())
        dtype = self.dtype_policy
        self.layer_norm_1 = LayerNormalization(epsilon=epsilon, dtype=dtype, name="layer_norm_1")
        self.attention = SpatialReductionAttention(
            hidden_size, num_heads, sr_ratio=sr_ratio, linear=linear_attention,
            qkv_bias=qkv_bias, epsilon=reduction_epsilon, attention_dropout=attention_dropout,
            proj_dropout=hidden_dropout, dtype=dtype, name="attention",
        )
        self.drop_path_layer = DropPath(drop_path, dtype=dtype)
        self.layer_norm_2 = LayerNormalization(epsilon=epsilon, dtype=dtype, name="layer_norm_2")
        intermediate = int(hidden_size * mlp_ratio)
        if mix_ffn:
            self.mlp = MixFFN(hidden_size, intermediate, linear=linear_attention,
                              dropout=hidden_dropout, dtype=dtype, name="mlp")
        else:
            self.mlp = MLP(hidden_size, intermediate, dropout=hidden_dropout, dtype=dtype,
                           name="mlp")

    def build(self, input_shape):
        for layer in (self.layer_norm_1, self.attention, self.layer_norm_2, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        return self._checkpointed(self._forward, x, training=training)

    def _forward(self, x, training=None):
        attention = self.attention(self.layer_norm_1(x), training=training)
        x = residual(x, self.drop_path_layer(attention, training=training))
        ffn = self.mlp(self.layer_norm_2(x), training=training)
        return residual(x, self.drop_path_layer(ffn, training=training))

    def attention_probabilities(self, x):
        """The block's attention weights for input `x`, `(batch, heads, queries, keys)`."""
        return self.attention.attention_probabilities(self.layer_norm_1(x))

    def compute_output_shape(self, input_shape):
        return input_shape


# The families' names for the block. keras' weight files locate a functional model's layers
# by their class name, so these names keep presets and `.keras` files loadable.
@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Block(EncoderBlock):
    """PVT v2's `EncoderBlock` (Mix-FFN)."""


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTBlock(EncoderBlock):
    """PVT v1's `EncoderBlock` (plain MLP)."""

    def __init__(self, *args, mix_ffn: bool = False, **kwargs):
        super().__init__(*args, mix_ffn=mix_ffn, **kwargs)


def encoder_stage(x, stage: int, config, block_cls=EncoderBlock, dtype=None):
    """Stage `stage`'s encoder blocks, named `stage{stage}_block{i}`, from a PVT backbone's
    config (its `__init__` arguments, per-stage ones as lists); stochastic depth rises
    linearly over all blocks of the backbone."""
    rates = drop_path_rates(config.depths, config.drop_path_rate)[stage]
    for block in range(config.depths[stage]):
        x = block_cls(
            config.hidden_sizes[stage], config.num_heads[stage], config.mlp_ratios[stage],
            config.sr_ratios[stage], linear_attention=getattr(config, "linear_attention", False),
            qkv_bias=config.qkv_bias, drop_path=rates[block], epsilon=config.layer_norm_epsilon,
            reduction_epsilon=config.reduction_norm_epsilon,
            attention_dropout=config.attention_dropout, hidden_dropout=config.hidden_dropout,
            dtype=dtype, name=f"stage{stage}_block{block}",
        )(x)
    return x
