"""Learned position embeddings that follow the input's grid, optionally with a class token."""

import keras
from keras import ops

from keras_pvt.layers.core import Layer
from keras_pvt.layers.resize import bilinear_resize


@keras.saving.register_keras_serializable(package="keras_pvt")
class PositionEmbedding(Layer):
    """Learned position embeddings stored on a fixed grid, resized to each input's grid.

    The stored `grid_size` grid is resized bilinearly (`align_corners=False`, as the original
    PVT v1 does) to the input map's height and width, so one model accepts any image size;
    at the stored size the embeddings are added unchanged. Input: an NHWC map.

    With `cls_token=True` the layer also holds a learned class token and its own
    position-embedding slot (kept as is, never resized): it returns the token sequence
    `(batch, 1 + height * width, channels)`, class token first, like PVT v1's last stage.
    Weights follow the PyTorch layout: `embeddings` `(1, [1 +] grid_h * grid_w, channels)`
    (row-major grid) and `cls_token` `(1, 1, channels)`.

    Args:
        grid_size: int or `(height, width)` of the stored grid.
        cls_token: prepend a learned class token with its own position embedding.
        initializer_range: standard deviation of the truncated-normal initialisation.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        cls_token: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(grid_size, int):
            grid_size = (grid_size, grid_size)
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be two positive ints; received {grid_size}.")
        grid_size = tuple(int(s) for s in grid_size)
        self._store_arguments(locals())

    def build(self, input_shape):
        channels = input_shape[-1]
        grid_height, grid_width = self.grid_size
        initializer = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        self.embeddings = self.add_weight(
            shape=(1, int(self.cls_token) + grid_height * grid_width, channels),
            initializer=initializer,
            name="embeddings",
        )
        if self.cls_token:
            self.class_token = self.add_weight(
                shape=(1, 1, channels), initializer=initializer, name="cls_token"
            )
        self.built = True

    def call(self, inputs):
        if len(inputs.shape) != 4:
            raise ValueError(
                f"PositionEmbedding expects an NHWC feature map; received shape {inputs.shape}."
            )
        channels = inputs.shape[-1]
        shape = ops.shape(inputs)
        grid = self.embeddings[0, int(self.cls_token) :]
        grid = ops.reshape(grid, (*self.grid_size, channels))
        grid = bilinear_resize(ops.cast(grid, "float32"), (shape[1], shape[2]))
        x = inputs + ops.cast(grid, inputs.dtype)[None]
        if not self.cls_token:
            return x
        # Explicit token count (not -1): shape-polymorphic export must be able to follow it.
        tokens = ops.reshape(x, (shape[0], shape[1] * shape[2], channels))
        cls = ops.cast(self.class_token + self.embeddings[:, :1], inputs.dtype)
        cls = ops.broadcast_to(cls, (shape[0], 1, channels))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        if not self.cls_token:
            return input_shape
        batch, height, width, channels = input_shape
        tokens = None if height is None or width is None else 1 + height * width
        return (batch, tokens, channels)
