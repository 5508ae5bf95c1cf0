"""Spatial-reduction attention (PVT v1 / v2), in its convolutional and linear forms."""

import keras
from keras import ops

from keras_pvt.layers.core import Conv2D, Dense, Dropout, Layer, LayerNormalization
from keras_pvt.layers.ffn import gelu
from keras_pvt.layers.pooling import AdaptiveAveragePooling2D


def _split_heads(x, num_heads: int, batch, length):
    """`(batch, tokens, channels)` -> `(batch, tokens, heads, head_dim)`."""
    # Explicit sizes, not -1: JAX's shape-polymorphic export (SavedModel with dynamic image
    # sizes) cannot always infer a -1 from symbolic dimensions. One `batch` (the queries')
    # for queries, keys and values: tf2onnx mis-sized the keys' reshape when each took its
    # own.
    return ops.reshape(x, (batch, length, num_heads, x.shape[-1] // num_heads))


def _attention_logits(q, k, scale: float):
    return ops.einsum("bqhd,bkhd->bhqk", q, k) * ops.cast(scale, q.dtype)


def attention_probabilities(query, key, num_heads: int, scale: float | None = None):
    """The softmax attention weights `softmax(q k^T * scale)` of `(batch, tokens, channels)`
    queries and keys, as `(batch, heads, queries, keys)`; `scale` as `multi_head_attention`."""
    head_dim = query.shape[-1] // num_heads
    batch = ops.shape(query)[0]
    q = _split_heads(query, num_heads, batch, ops.shape(query)[1])
    k = _split_heads(key, num_heads, batch, ops.shape(key)[1])
    return ops.softmax(_attention_logits(q, k, head_dim**-0.5 if scale is None else scale), -1)


def multi_head_attention(
    query, key, value, num_heads: int, dropout=None, training=None, scale: float | None = None
):
    """Scaled dot-product attention on `(batch, tokens, channels)` tensors.

    Uses the fused `keras.ops.dot_product_attention` (which takes the `(B, T, heads, dim)`
    layout directly, so no transposes are needed) unless attention dropout is active.
    `scale` defaults to `head_dim ** -0.5` (CvT uses `embed_dim ** -0.5`).
    """
    batch, query_length = ops.shape(query)[0], ops.shape(query)[1]
    key_length = ops.shape(key)[1]
    head_dim = query.shape[-1] // num_heads
    if scale is None:
        scale = head_dim**-0.5
    q = _split_heads(query, num_heads, batch, query_length)
    k = _split_heads(key, num_heads, batch, key_length)
    v = _split_heads(value, num_heads, batch, key_length)
    if dropout is None or dropout.rate == 0.0 or not training:
        out = ops.dot_product_attention(q, k, v, scale=scale)
    else:
        weights = dropout(ops.softmax(_attention_logits(q, k, scale), axis=-1), training=training)
        out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
    return ops.reshape(out, (batch, query_length, num_heads * head_dim))


def _flatten_tokens(x):
    """`(B, H, W, C)` -> `(B, H * W, C)`; sequences pass through.

    The token count is spelled out rather than -1 so that JAX's shape-polymorphic export
    (dynamic image sizes) can follow it.
    """
    if len(x.shape) == 3:
        return x
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1] * shape[2], x.shape[-1]))


@keras.saving.register_keras_serializable(package="keras_pvt")
class SpatialReductionAttention(Layer):
    """Multi-head attention whose keys and values come from a spatially reduced map.

    - `sr_ratio > 1`: keys/values are computed from a `sr_ratio`-strided convolution of the
      map followed by LayerNorm (PVT v1 and v2 "SRA").
    - `linear=True`: keys/values come from an exact 7x7 adaptive average pooling, a 1x1
      convolution, LayerNorm and GELU (PVT v2 "linear SRA"), so the cost is linear in the
      number of pixels.
    - otherwise: plain multi-head self-attention.

    Input and output are NHWC maps; with no reduction, `(batch, tokens, channels)` sequences
    (such as PVT v1's last stage with its cls token) are accepted as well.

    Args:
        hidden_size: channels.
        num_heads: attention heads; `hidden_size` must be divisible by it.
        sr_ratio: spatial-reduction ratio (kernel and stride of the reduction conv).
        linear: use linear SRA.
        qkv_bias: bias in the query/key/value projections.
        epsilon: epsilon of the reduction LayerNorm.
        attention_dropout: dropout on the attention weights.
        proj_dropout: dropout after the output projection.
        pool_size: pooled grid size of linear SRA.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        sr_ratio: int = 1,
        linear: bool = False,
        qkv_bias: bool = True,
        epsilon: float = 1e-6,
        attention_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        pool_size: int = 7,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}."
            )
        self._store_arguments(locals())

        def dense(name, use_bias=True):
            return Dense(hidden_size, use_bias=use_bias, dtype=self.dtype_policy, name=name)

        self.query = dense("query", qkv_bias)
        self.key = dense("key", qkv_bias)
        self.value = dense("value", qkv_bias)
        self.proj = dense("proj")
        self.reduces = linear or sr_ratio > 1
        if linear:
            self.pool = AdaptiveAveragePooling2D(pool_size, dtype=self.dtype_policy)
            reduction_kernel = 1
        else:
            reduction_kernel = sr_ratio
        if self.reduces:
            self.spatial_reduction = Conv2D(
                hidden_size, reduction_kernel, strides=reduction_kernel,
                dtype=self.dtype_policy, name="spatial_reduction",
            )
            self.layer_norm = LayerNormalization(
                epsilon=epsilon, dtype=self.dtype_policy, name="layer_norm"
            )
        self.attention_dropout_layer = Dropout(attention_dropout, dtype=self.dtype_policy)
        self.proj_dropout_layer = Dropout(proj_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        channels_shape = (None, None, self.hidden_size)
        for layer in (self.query, self.key, self.value, self.proj):
            layer.build(channels_shape)
        if self.reduces:
            self.spatial_reduction.build((None, None, None, self.hidden_size))
            self.layer_norm.build(channels_shape)
        self.built = True

    def call(self, inputs, training=None):
        tokens = _flatten_tokens(inputs)
        reduced = self.reduce(inputs) if self.reduces else tokens
        x = multi_head_attention(
            self.query(tokens), self.key(reduced), self.value(reduced), self.num_heads,
            dropout=self.attention_dropout_layer, training=training,
        )
        x = self.proj_dropout_layer(self.proj(x), training=training)
        return ops.reshape(x, ops.shape(inputs))

    def attention_probabilities(self, inputs):
        """The attention weights `call` averages the values with, `(batch, heads, queries,
        keys)`: queries are the input's tokens (row-major), keys the reduced tokens."""
        tokens = _flatten_tokens(inputs)
        reduced = self.reduce(inputs) if self.reduces else tokens
        return attention_probabilities(self.query(tokens), self.key(reduced), self.num_heads)

    def reduce(self, feature_map):
        """The reduced key/value tokens: `LN(Conv_r(x))`, or `GELU(LN(Conv_1x1(Pool_7(x))))`
        for linear SRA."""
        if len(feature_map.shape) != 4:
            raise ValueError(
                "Spatial reduction needs an NHWC feature map; received a tensor of "
                f"shape {feature_map.shape}."
            )
        x = self.pool(feature_map) if self.linear else feature_map
        x = self.layer_norm(_flatten_tokens(self.spatial_reduction(x)))
        return gelu(x) if self.linear else x

    def compute_output_shape(self, input_shape):
        return input_shape
