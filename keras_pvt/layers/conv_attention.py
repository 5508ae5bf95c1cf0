"""CvT's attention: multi-head attention whose queries, keys and values come from a
convolutional projection of the token map (Wu et al., "CvT: Introducing Convolutions to
Vision Transformers", 2021)."""

import keras
from keras import ops

from keras_pvt.layers.attention import attention_probabilities, multi_head_attention
from keras_pvt.layers.core import BatchNormalization, Dense, DepthwiseConv2D, Dropout, Layer

PROJECTION_METHODS = ("dw_bn", "avg", "linear")


def flatten_map(x):
    """`(B, H, W, C)` -> `(B, H * W, C)`.

    The token count is spelled out rather than -1: JAX's symbolic shapes (functional
    models with `None` sizes, shape-polymorphic export) cannot always infer a -1.
    """
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1] * shape[2], x.shape[-1]))


def _ceil_mode_size(size, kernel: int, stride: int, padding: int):
    """Output length of torch's `AvgPool2d(..., ceil_mode=True)` (works for int or tensor)."""
    out = (size + 2 * padding - kernel + stride - 1) // stride + 1
    # torch drops a last window that would start inside the right padding.
    if isinstance(size, int):
        return out - int((out - 1) * stride >= size + padding)
    return out - ops.cast((out - 1) * stride >= size + padding, out.dtype)


def average_pool_ceil(inputs, kernel: int, stride: int, padding: int):
    """`torch.nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)` on an NHWC map.

    As in torch (`count_include_pad=True`), the zero padding counts in a window's divisor
    but the extra ceil-mode overhang past it does not, so the divisor is computed by pooling
    a map of ones over the padded extent.
    """
    shape = ops.shape(inputs)
    height, width = shape[1], shape[2]
    extra = stride - 1  # enough overhang for the ceil-mode windows
    padded = ops.pad(inputs, [[0, 0], [padding, padding + extra], [padding, padding + extra],
                              [0, 0]])
    sums = ops.average_pool(padded, kernel, stride, padding="valid")
    ones = ops.ones((1, height + 2 * padding, width + 2 * padding, 1), dtype=inputs.dtype)
    ones = ops.pad(ones, [[0, 0], [0, extra], [0, extra], [0, 0]])
    counts = ops.average_pool(ones, kernel, stride, padding="valid")
    out_h = _ceil_mode_size(height, kernel, stride, padding)
    out_w = _ceil_mode_size(width, kernel, stride, padding)
    return (sums / counts)[:, :out_h, :out_w, :]


@keras.saving.register_keras_serializable(package="keras_pvt")
class ConvProjection(Layer):
    """CvT's convolutional projection of an NHWC map (before the linear q/k/v projection).

    - `"dw_bn"`: depthwise convolution (no bias) with symmetric zero padding, then
      BatchNorm (in inference mode when the layer is frozen, as keras does).
    - `"avg"`: average pooling (`ceil_mode=True`, padding counted), as the original CvT.
    - `"linear"`: no projection (the identity).

    Args:
        hidden_size: channels.
        method: one of `"dw_bn"`, `"avg"`, `"linear"`.
        kernel_size: convolution / pooling window.
        stride: convolution / pooling stride.
        padding: zero padding on every side.
        epsilon: BatchNorm epsilon (torch's default 1e-5).
        momentum: BatchNorm moving-average momentum (keras convention: 0.9 == torch's 0.1).
    """

    def __init__(
        self,
        hidden_size: int,
        method: str = "dw_bn",
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in PROJECTION_METHODS:
            raise ValueError(
                f"Unknown projection method {method!r}; expected one of {PROJECTION_METHODS}."
            )
        self._store_arguments(locals())
        # keras' 'same' padding equals torch's symmetric padding only at stride 1.
        self._same = stride == 1 and 2 * padding == kernel_size - 1 and kernel_size % 2 == 1
        if method == "dw_bn":
            self.convolution = DepthwiseConv2D(
                kernel_size, strides=stride, padding="same" if self._same else "valid",
                use_bias=False, dtype=self.dtype_policy, name="convolution",
            )
            self.normalization = BatchNormalization(
                epsilon=epsilon, momentum=momentum, dtype=self.dtype_policy, name="normalization"
            )

    def build(self, input_shape):
        if self.method == "dw_bn":
            self.convolution.build((None, None, None, self.hidden_size))
            self.normalization.build((None, None, None, self.hidden_size))
        self.built = True

    def call(self, inputs, training=None):
        if self.method == "linear":
            return inputs
        if self.method == "avg":
            return average_pool_ceil(inputs, self.kernel_size, self.stride, self.padding)
        x = inputs
        if self.padding and not self._same:
            p = self.padding
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return self.normalization(self.convolution(x), training=training)

    def compute_output_shape(self, input_shape):
        if self.method == "linear":
            return input_shape

        def out(size):
            if size is None:
                return None
            if self.method == "avg":
                return _ceil_mode_size(size, self.kernel_size, self.stride, self.padding)
            return (size + 2 * self.padding - self.kernel_size) // self.stride + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])


@keras.saving.register_keras_serializable(package="keras_pvt")
class ConvAttention(Layer):
    """CvT's multi-head attention with convolutional projections.

    Queries, keys and values are convolutional projections (`ConvProjection`) of the NHWC
    map, usually with strided keys/values (`stride_kv`), followed by linear projections.
    Tokens passed as `cls_token` are not convolved: they are prepended to the projected
    queries, keys and values, as in the reference implementations. As in CvT, the attention
    scale is `hidden_size ** -0.5` (not the usual `head_dim ** -0.5`).

    With `method="avg"`, keys/values are average-pooled and queries are not projected
    (the original repository's rule); `"linear"` projects none of them.

    Call arguments:
        inputs: the (normalised) `(batch, height, width, channels)` map.
        cls_token: optional `(batch, tokens, channels)` tokens prepended to the sequence.

    Returns:
        `(batch, tokens + height * width, channels)`: the attention output, cls tokens first.

    Args:
        hidden_size: channels.
        num_heads: attention heads; `hidden_size` must be divisible by it.
        method: q/k/v projection method, `"dw_bn"`, `"avg"` or `"linear"`.
        kernel_size: kernel of the q/k/v projections.
        padding_q: padding of the query projection.
        stride_q: stride of the query projection (1: the output keeps the input's tokens).
        padding_kv: padding of the key/value projections.
        stride_kv: stride of the key/value projections (CvT: 2).
        qkv_bias: bias in the linear q/k/v projections.
        attention_dropout: dropout on the attention weights.
        proj_dropout: dropout after the output projection.
        batch_norm_epsilon: epsilon of the projections' BatchNorm.
        batch_norm_momentum: momentum of the projections' BatchNorm (keras convention).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        method: str = "dw_bn",
        kernel_size: int = 3,
        padding_q: int = 1,
        stride_q: int = 1,
        padding_kv: int = 1,
        stride_kv: int = 2,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        batch_norm_epsilon: float = 1e-5,
        batch_norm_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}."
            )
        if method not in PROJECTION_METHODS:
            raise ValueError(
                f"Unknown qkv projection method {method!r}; expected one of "
                f"{PROJECTION_METHODS}."
            )
        query_method = "linear" if method == "avg" else method
        if query_method == "dw_bn" and (stride_q != 1 or 2 * padding_q != kernel_size - 1):
            raise ValueError(
                "The query projection must keep the map size (the residual adds it back): "
                f"stride_q must be 1 and padding_q (kernel_size - 1) / 2; received "
                f"kernel_size={kernel_size}, stride_q={stride_q}, padding_q={padding_q}."
            )
        self._store_arguments(locals())
        dtype = self.dtype_policy

        def projection(name, method, stride, padding):
            return ConvProjection(
                hidden_size, method, kernel_size, stride, padding, epsilon=batch_norm_epsilon,
                momentum=batch_norm_momentum, dtype=dtype, name=name,
            )

        self.convolution_projection_query = projection(
            "convolution_projection_query", query_method, stride_q, padding_q
        )
        self.convolution_projection_key = projection(
            "convolution_projection_key", method, stride_kv, padding_kv
        )
        self.convolution_projection_value = projection(
            "convolution_projection_value", method, stride_kv, padding_kv
        )

        def dense(name, use_bias=True):
            return Dense(hidden_size, use_bias=use_bias, dtype=dtype, name=name)

        self.projection_query = dense("projection_query", qkv_bias)
        self.projection_key = dense("projection_key", qkv_bias)
        self.projection_value = dense("projection_value", qkv_bias)
        self.output_dense = dense("output_dense")
        self.attention_dropout_layer = Dropout(attention_dropout, dtype=dtype)
        self.proj_dropout_layer = Dropout(proj_dropout, dtype=dtype)

    def build(self, inputs_shape, cls_token_shape=None):
        map_shape = (None, None, None, self.hidden_size)
        for layer in (self.convolution_projection_query, self.convolution_projection_key,
                      self.convolution_projection_value):
            layer.build(map_shape)
        for layer in (self.projection_query, self.projection_key, self.projection_value,
                      self.output_dense):
            layer.build((None, None, self.hidden_size))
        self.built = True

    def call(self, inputs, cls_token=None, training=None):
        x = multi_head_attention(
            self.projection_query(self._project("query", inputs, cls_token, training)),
            self.projection_key(self._project("key", inputs, cls_token, training)),
            self.projection_value(self._project("value", inputs, cls_token, training)),
            self.num_heads,
            dropout=self.attention_dropout_layer,
            training=training,
            scale=self.hidden_size**-0.5,
        )
        return self.proj_dropout_layer(self.output_dense(x), training=training)

    def attention_probabilities(self, inputs, cls_token=None):
        """The attention weights `call` averages the values with, `(batch, heads, queries,
        keys)`: the cls token first, then the projected maps' tokens (row-major)."""
        return attention_probabilities(
            self.projection_query(self._project("query", inputs, cls_token)),
            self.projection_key(self._project("key", inputs, cls_token)),
            self.num_heads,
            scale=self.hidden_size**-0.5,
        )

    def _project(self, role: str, inputs, cls_token, training=None):
        """The convolutional projection for `role` as tokens, the cls token prepended."""
        layer = getattr(self, f"convolution_projection_{role}")
        tokens = flatten_map(layer(inputs, training=training))
        if cls_token is None:
            return tokens
        return ops.concatenate([ops.cast(cls_token, tokens.dtype), tokens], axis=1)

    def compute_output_shape(self, inputs_shape, cls_token_shape=None):
        height, width = inputs_shape[1], inputs_shape[2]
        tokens = None if height is None or width is None else height * width
        if cls_token_shape is not None and tokens is not None:
            tokens = None if cls_token_shape[1] is None else tokens + cls_token_shape[1]
        return (inputs_shape[0], tokens, self.hidden_size)
