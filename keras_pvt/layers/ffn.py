"""Feed-forward networks: the PVT v2 Mix-FFN and the plain transformer MLP."""

import keras
from keras import ops

from keras_pvt.layers.conv import Dense, DepthwiseConv2D, plain
from keras_pvt.layers.sublayer import call_sublayer, tracing_torch

# Largest expanded hidden activation (bytes) that Mix-FFN materialises at once.
CHUNK_BYTES = 8 * 2**20


def gelu(x):
    """Exact (erf) GELU, as in the PyTorch references; keras defaults to the tanh form."""
    return ops.gelu(x, approximate=False)


def images_per_chunk(batch: int, bytes_per_image: int, divisor: bool = False) -> int:
    """How many images to process at once so that one piece's activation is <= ~8 MiB.

    A whole batch's expanded FFN activation is tens of MB: it streams through memory
    between every step (dense, depthwise conv, GELU, dense) and, on PyTorch, glibc serves
    each such block with fresh `mmap`s whose page faults cost more than the arithmetic on a
    small CPU. Pieces of a few MB stay in cache from one step to the next. Measured on a
    2-core CPU, PVT v2 b0's stage-1 Mix-FFN at batch 16 on PyTorch: 68 ms whole, 19 ms in
    pieces of 2 images; the whole b0 forward pass: +16% on JAX, +10% on TensorFlow. Exact:
    each image is computed independently. `divisor` makes the piece size divide `batch`
    (for equal pieces on JAX and TensorFlow).
    """
    per_chunk = max(1, min(batch, CHUNK_BYTES // max(1, bytes_per_image)))
    while divisor and batch % per_chunk:
        per_chunk -= 1
    return per_chunk


@keras.saving.register_keras_serializable(package="keras_pvt")
class MixFFN(keras.layers.Layer):
    """PVT v2's Mix-FFN: `dense1 -> [ReLU] -> 3x3 depthwise conv -> GELU -> dense2`.

    The depthwise convolution gives the tokens position information, which is why PVT v2
    needs no position embeddings. Operates on NHWC maps.

    Args:
        hidden_size: channels in and out.
        intermediate_size: channels of the expanded hidden layer.
        linear: adds the ReLU after `dense1`, as the linear-attention (`-li`) variants do.
        dropout: dropout after the activation and after `dense2` (0 in all presets).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        linear: bool = False,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.linear = linear
        self.dropout = dropout
        self.dense1 = Dense(intermediate_size, dtype=self.dtype_policy, name="dense1")
        # Stride 1 with an odd kernel: keras' 'same' padding is symmetric here, like torch's.
        self.dwconv = DepthwiseConv2D(3, padding="same", dtype=self.dtype_policy, name="dwconv")
        self.dense2 = Dense(hidden_size, dtype=self.dtype_policy, name="dense2")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense1.build(input_shape)
        hidden_shape = (*input_shape[:-1], self.intermediate_size)
        self.dwconv.build(hidden_shape)
        self.dense2.build(hidden_shape)
        self.built = True

    def call(self, inputs, training=None):
        if self._torch_fast_path(inputs, training):
            return self._torch_call(inputs)
        batch = inputs.shape[0]
        # JAX and TensorFlow: inference only (and only with a static batch size); in
        # training, XLA restacks the pieces' saved activations for the backward pass,
        # which measured slower. Sizes are counted in float32 bytes.
        if isinstance(batch, int) and len(inputs.shape) == 4 and not training:
            per_image = inputs.shape[1] * inputs.shape[2] * self.intermediate_size * 4
            per_chunk = images_per_chunk(batch, per_image, divisor=True)
            if per_chunk < batch:
                return self._chunked_call(inputs, per_chunk)
        return self._mix(inputs, training)

    def _chunked_call(self, inputs, per_chunk: int):
        """`_mix` over pieces of `per_chunk` images (see `images_per_chunk`)."""
        batch = inputs.shape[0]
        if keras.backend.backend() == "jax":
            import jax

            # A loop (not unrolled) lets XLA reuse one piece-sized buffer.
            pieces = ops.reshape(inputs, (batch // per_chunk, per_chunk, *inputs.shape[1:]))
            outputs = jax.lax.map(lambda piece: self._mix(piece, False), pieces)
            return ops.reshape(outputs, (batch, *inputs.shape[1:-1], self.hidden_size))
        # TensorFlow: independent pieces, which its inter-op threads run side by side.
        pieces = ops.split(inputs, batch // per_chunk, axis=0)
        return ops.concatenate([self._mix(piece, False) for piece in pieces], axis=0)

    def _mix(self, inputs, training):
        x = call_sublayer(self.dense1, inputs)
        if self.linear:
            x = ops.relu(x)
        x = gelu(call_sublayer(self.dwconv, x))
        x = call_sublayer(self.dropout_layer, x, training=training)
        x = call_sublayer(self.dense2, x)
        return call_sublayer(self.dropout_layer, x, training=training)

    def _torch_fast_path(self, inputs, training) -> bool:
        return (
            keras.backend.backend() == "torch"
            and len(inputs.shape) == 4
            and (self.dropout == 0.0 or not training)
            and all(plain(layer) for layer in (self.dense1, self.dwconv, self.dense2))
            and self.dwconv._fast_path()
        )

    def _torch_call(self, inputs):
        """The same computation in image chunks, with the biases fused into the kernels.

        Also used in training (autograd follows the pieces); eager PyTorch keeps no
        restacked copies, and fresh whole-batch activations would cost page faults.
        """
        import torch
        import torch.nn.functional as F

        dtype = inputs.dtype
        w1, b1 = ops.cast(self.dense1.kernel, dtype).T, ops.cast(self.dense1.bias, dtype)
        w2, b2 = ops.cast(self.dense2.kernel, dtype).T, ops.cast(self.dense2.bias, dtype)
        depthwise = ops.cast(self.dwconv.kernel, dtype).permute(2, 3, 0, 1)  # -> (C, 1, kh, kw)
        depthwise_bias = ops.cast(self.dwconv.bias, dtype)
        kh, kw = self.dwconv.kernel_size
        per_image = inputs.shape[1] * inputs.shape[2] * self.intermediate_size * inputs.itemsize
        per_chunk = inputs.shape[0]
        # Traced for export / torch.compile: one piece (sizes may be symbolic, and data-
        # dependent piece counts would add shape guards).
        if not tracing_torch() and all(isinstance(d, int) for d in inputs.shape[:3]):
            per_chunk = images_per_chunk(inputs.shape[0], per_image)
        outputs = []
        inference = not torch.is_grad_enabled()
        for chunk in inputs.split(per_chunk) if per_chunk < inputs.shape[0] else [inputs]:
            hidden = F.linear(chunk, w1, b1)
            if self.linear:
                hidden = F.relu_(hidden) if inference else F.relu(hidden)
            # An NHWC tensor viewed as NCHW is channels-last: no layout copies.
            x = F.conv2d(
                hidden.permute(0, 3, 1, 2),
                depthwise,
                depthwise_bias,
                padding=(kh // 2, kw // 2),
                groups=self.intermediate_size,
            ).permute(0, 2, 3, 1)
            outputs.append(F.linear(F.gelu(x), w2, b2))
        return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "linear": self.linear,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_pvt")
class MLP(keras.layers.Layer):
    """The plain transformer MLP `dense1 -> GELU -> dense2` (PVT v1, CvT).

    Args:
        hidden_size: channels in and out.
        intermediate_size: channels of the expanded hidden layer.
        dropout: dropout after the activation and after `dense2`.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.dense1 = Dense(intermediate_size, dtype=self.dtype_policy, name="dense1")
        self.dense2 = Dense(hidden_size, dtype=self.dtype_policy, name="dense2")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense1.build(input_shape)
        self.dense2.build((*input_shape[:-1], self.intermediate_size))
        self.built = True

    def call(self, inputs, training=None):
        x = gelu(call_sublayer(self.dense1, inputs))
        x = call_sublayer(self.dropout_layer, x, training=training)
        x = call_sublayer(self.dense2, x)
        return call_sublayer(self.dropout_layer, x, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "dropout": self.dropout,
            }
        )
        return config
