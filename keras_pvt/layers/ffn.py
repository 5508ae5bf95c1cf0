"""Feed-forward networks: the PVT v2 Mix-FFN and the plain transformer MLP."""

import keras
from keras import ops

from keras_pvt import kernels
from keras_pvt.layers.core import Dense, DepthwiseConv2D, Dropout, Layer


def gelu(x):
    """Exact (erf) GELU, as in the PyTorch references; keras defaults to the tanh form."""
    return ops.gelu(x, approximate=False)


@keras.saving.register_keras_serializable(package="keras_pvt")
class MLP(Layer):
    """The plain transformer MLP `dense1 -> GELU -> dense2` (PVT v1, CvT).

    Args:
        hidden_size: channels in and out.
        intermediate_size: channels of the expanded hidden layer.
        dropout: dropout after the activation and after `dense2`.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self._store_arguments(locals())
        self.dense1 = Dense(intermediate_size, dtype=self.dtype_policy, name="dense1")
        self.dense2 = Dense(hidden_size, dtype=self.dtype_policy, name="dense2")
        self.dropout_layer = Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense1.build(input_shape)
        self.dense2.build((*input_shape[:-1], self.intermediate_size))
        self.built = True

    def call(self, x, training=None):
        x = self.dropout_layer(gelu(self.dense1(x)), training=training)
        return self.dropout_layer(self.dense2(x), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)


@keras.saving.register_keras_serializable(package="keras_pvt")
class MixFFN(MLP):
    """PVT v2's Mix-FFN: `dense1 -> [ReLU] -> 3x3 depthwise conv -> GELU -> dense2`.

    The depthwise convolution gives the tokens position information, which is why PVT v2
    needs no position embeddings. Operates on NHWC maps. The batch is computed in pieces
    of a few MB of expanded activation (`keras_pvt.kernels.mix_ffn`).

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
        super().__init__(hidden_size, intermediate_size, dropout=dropout, **kwargs)
        self._store_arguments(locals())
        # Stride 1 with an odd kernel: keras' 'same' padding is symmetric here, like torch's.
        self.dwconv = DepthwiseConv2D(3, padding="same", dtype=self.dtype_policy, name="dwconv")

    def build(self, input_shape):
        super().build(input_shape)
        self.dwconv.build((*input_shape[:-1], self.intermediate_size))

    def call(self, x, training=None):
        return kernels.mix_ffn(self, x, training=training)

    def mix(self, x, training=None):
        """The Mix-FFN itself, on any piece of the batch."""
        x = self.dense1(x)
        if self.linear:
            x = ops.relu(x)
        x = self.dropout_layer(gelu(self.dwconv(x)), training=training)
        return self.dropout_layer(self.dense2(x), training=training)
