"""Stochastic depth: drop a whole residual branch per sample."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_pvt")
class DropPath(keras.layers.Layer):
    """Drops the residual branch of each sample with probability `rate` while training.

    The kept samples are scaled by `1 / (1 - rate)`, as in timm's `DropPath`, so the
    expectation is unchanged; at inference the layer is the identity.

    Args:
        rate: probability of dropping a sample's branch, in `[0, 1)`.
        seed: optional seed for the random mask.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1); received rate={rate}.")
        self.rate = rate
        self.seed = seed
        # Like keras' Dropout: no RNG state (and no extra variable) when nothing is dropped.
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=inputs.dtype)
        return inputs * ops.floor(keep + noise) / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
