"""Resizing equal to PyTorch's `F.interpolate(..., align_corners=False)` (no antialiasing),
bilinear and bicubic, on every backend and for dynamic sizes."""

import keras
from keras import ops

from keras_pvt import kernels
from keras_pvt.layers.core import Layer


def bilinear_resize_indices(output_size, input_size):
    """Source rows and weights of PyTorch's bilinear resize (`align_corners=False`).

    Returns `(lower, upper, weight)`, each of length `output_size`: output position `i`
    is `(1 - weight[i]) * x[lower[i]] + weight[i] * x[upper[i]]`, with torch's source
    coordinate `max((i + 0.5) * input_size / output_size - 0.5, 0)`. Either size may be
    dynamic (a tensor or a symbolic dimension).
    """
    scale = ops.cast(input_size, "float32") / ops.cast(output_size, "float32")
    positions = ops.cast(ops.arange(output_size), "float32")
    source = ops.maximum((positions + 0.5) * scale - 0.5, 0.0)
    lower = ops.minimum(ops.cast(ops.floor(source), "int32"), input_size - 1)
    upper = ops.minimum(lower + 1, input_size - 1)
    weight = source - ops.cast(lower, "float32")
    return lower, upper, weight


def bilinear_resize(x, size, axis: int = 0):
    """Resizes axes `axis` and `axis + 1` of `x` to `size` like
    `F.interpolate(..., mode="bilinear", align_corners=False)`.

    `axis=0` for one `(height, width, channels)` grid, `axis=1` for an NHWC batch. Written as
    gathers and a weighted sum rather than a matmul, so a same-size resize is the identity bit
    for bit (also under TF32 / reduced-precision matmuls), and so it accepts dynamic sizes on
    every backend, in jit and in shape-polymorphic export.
    """
    shape = ops.shape(x)
    for offset in (0, 1):
        dim = axis + offset
        lower, upper, weight = bilinear_resize_indices(size[offset], shape[dim])
        weight = ops.reshape(ops.cast(weight, x.dtype), (-1,) + (1,) * (len(x.shape) - dim - 1))
        x = kernels.gather(x, lower, dim) * (1.0 - weight) + kernels.gather(x, upper, dim) * weight
    return x


def bicubic_resize(x, size, axis: int = 0):
    """Resizes axes `axis` and `axis + 1` of `x` to `size` like
    `F.interpolate(..., mode="bicubic", align_corners=False)`: Keys' cubic convolution with
    `a = -0.75`, source coordinates not clamped, the 4 taps clamped to the edges."""
    shape = ops.shape(x)
    for offset in (0, 1):
        dim = axis + offset
        scale = ops.cast(shape[dim], "float32") / ops.cast(size[offset], "float32")
        source = (ops.cast(ops.arange(size[offset]), "float32") + 0.5) * scale - 0.5
        first = ops.floor(source)
        t = source - first
        first = ops.cast(first, "int32") - 1
        out = 0.0
        for tap, weight in enumerate(_cubic_weights(t)):
            index = ops.clip(first + tap, 0, shape[dim] - 1)
            weight = ops.reshape(ops.cast(weight, x.dtype),
                                 (-1,) + (1,) * (len(x.shape) - dim - 1))
            out = out + kernels.gather(x, index, dim) * weight
        x = out
    return x


def _cubic_weights(t, a: float = -0.75):
    """The weights of the taps at -1, 0, 1, 2 for a fractional position `t` in [0, 1)."""

    def near(d):  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


@keras.saving.register_keras_serializable(package="keras_pvt")
class ResizeLike(Layer):
    """Resizes an NHWC map bilinearly to the height and width of a reference map
    (`align_corners=False`, as SegFormer's decoder does): `ResizeLike()(x, reference)`."""

    def call(self, inputs, reference):
        shape = ops.shape(reference)
        if inputs.shape[1:3] == reference.shape[1:3] and None not in inputs.shape[1:3]:
            return inputs
        return bilinear_resize(inputs, (shape[1], shape[2]), axis=1)

    def compute_output_shape(self, inputs_shape, reference_shape):
        return (inputs_shape[0], reference_shape[1], reference_shape[2], inputs_shape[3])


@keras.saving.register_keras_serializable(package="keras_pvt")
class Upsample(Layer):
    """Bilinear upsampling of an NHWC map by an integer factor, as PyTorch's
    `nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False)`."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self._store_arguments(locals())

    def call(self, inputs):
        shape = ops.shape(inputs)
        return bilinear_resize(inputs, (shape[1] * self.factor, shape[2] * self.factor), axis=1)

    def compute_output_shape(self, input_shape):
        height, width = (None if d is None else d * self.factor for d in input_shape[1:3])
        return (input_shape[0], height, width, input_shape[3])
