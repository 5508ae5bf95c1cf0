"""Feed-forward networks: the PVT v2 Mix-FFN and the plain transformer MLP."""

import keras
from keras import ops

from keras_pvt.layers.conv import Dense, DepthwiseConv2D


def gelu(x):
    """Exact (erf) GELU, as in the PyTorch references; keras defaults to the tanh form."""
    return ops.gelu(x, approximate=False)


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
        self.dwconv = DepthwiseConv2D(
            3, padding="same", dtype=self.dtype_policy, name="dwconv"
        )
        self.dense2 = Dense(hidden_size, dtype=self.dtype_policy, name="dense2")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense1.build(input_shape)
        hidden_shape = (*input_shape[:-1], self.intermediate_size)
        self.dwconv.build(hidden_shape)
        self.dense2.build(hidden_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.dense1(inputs)
        if self.linear:
            x = ops.relu(x)
        x = gelu(self.dwconv(x))
        x = self.dropout_layer(x, training=training)
        x = self.dense2(x)
        return self.dropout_layer(x, training=training)

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
        x = gelu(self.dense1(inputs))
        x = self.dropout_layer(x, training=training)
        x = self.dense2(x)
        return self.dropout_layer(x, training=training)

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
