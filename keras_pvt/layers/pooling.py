"""Adaptive average pooling with PyTorch's exact bins on every backend."""

import keras
from keras import ops

from keras_pvt.layers.core import Layer


def adaptive_pool_matrix(length, output_size: int, dtype="float32"):
    """The `(output_size, length)` matrix that averages torch's adaptive-pooling bins.

    Bin `i` covers `[floor(i * L / n), ceil((i + 1) * L / n))`, computed in integers so it
    is exact for dynamic `length` (keras' own `AdaptiveAveragePooling2D` uses float index
    arithmetic and produces wrong bins / NaN on JAX).
    """
    bins = ops.arange(output_size, dtype="int32")
    start = (bins * length) // output_size
    end = ((bins + 1) * length + output_size - 1) // output_size
    positions = ops.arange(length, dtype="int32")
    inside = ops.logical_and(
        ops.expand_dims(positions, 0) >= ops.expand_dims(start, 1),
        ops.expand_dims(positions, 0) < ops.expand_dims(end, 1),
    )
    inside = ops.cast(inside, dtype)
    return inside / ops.sum(inside, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_pvt")
class AdaptiveAveragePooling2D(Layer):
    """Average-pools an NHWC map to a fixed `output_size` grid, like `nn.AdaptiveAvgPool2d`.

    Implemented as two small averaging matmuls (rows, then columns), which works for
    any (also dynamic) input size, exports to SavedModel / ONNX / TFLite and is jit-friendly.

    Args:
        output_size: int or `(height, width)` of the pooled grid.
    """

    def __init__(self, output_size: int | tuple[int, int] = 7, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        self._store_arguments(locals())

    def call(self, inputs):
        shape = ops.shape(inputs)
        # Averaging weights are computed in float32 even under mixed precision.
        rows = adaptive_pool_matrix(shape[1], self.output_size[0], "float32")
        cols = adaptive_pool_matrix(shape[2], self.output_size[1], "float32")
        x = ops.cast(inputs, "float32")
        x = ops.einsum("ih,bhwc->biwc", rows, x)
        x = ops.einsum("jw,biwc->bijc", cols, x)
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])
