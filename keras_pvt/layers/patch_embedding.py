"""Patch (token) embeddings: a strided convolution followed by LayerNorm."""

import keras

from keras_pvt.layers.core import Conv2D, Layer, LayerNormalization


@keras.saving.register_keras_serializable(package="keras_pvt")
class OverlapPatchEmbedding(Layer):
    """Strided convolution with PyTorch-style symmetric zero padding, then LayerNorm.

    PVT v2 uses overlapping patches (`padding = patch_size // 2`, the default); PVT v1's
    non-overlapping patches are `padding=0, stride=patch_size`; CvT's convolutional token
    embedding is the same layer with its own padding. Input and output are NHWC.

    keras' `'same'` padding is asymmetric for stride > 1, so the padding is explicit.

    Args:
        hidden_size: output channels.
        patch_size: convolution kernel size.
        stride: convolution stride.
        padding: zero padding on every side; defaults to `patch_size // 2`.
        epsilon: LayerNorm epsilon.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: int = 7,
        stride: int = 4,
        padding: int | None = None,
        epsilon: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        padding = patch_size // 2 if padding is None else padding
        self._store_arguments(locals())
        self.proj = Conv2D(
            hidden_size,
            patch_size,
            strides=stride,
            padding="valid",
            explicit_padding=self.padding,
            dtype=self.dtype_policy,
            name="proj",
        )
        self.layer_norm = LayerNormalization(
            epsilon=epsilon, dtype=self.dtype_policy, name="layer_norm"
        )

    def build(self, input_shape):
        self.proj.build((None, None, None, input_shape[-1]))
        self.layer_norm.build((None, None, None, self.hidden_size))
        self.built = True

    def call(self, inputs):
        return self.layer_norm(self.proj(inputs))

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            return (size + 2 * self.padding - self.patch_size) // self.stride + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.hidden_size)
