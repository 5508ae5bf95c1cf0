"""Stochastic depth: drop a whole residual branch per sample."""

import keras
from keras import ops

from keras_pvt.layers.core import Layer


def drop_path_rates(depths, rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to `rate` over all blocks, split per stage."""
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(depths[:stage]) for stage in range(len(depths) + 1)]
    return [rates[start:end] for start, end in zip(starts[:-1], starts[1:])]


@keras.saving.register_keras_serializable(package="keras_pvt")
class DropPath(Layer):
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
        self._store_arguments(locals())
        # Like keras' Dropout: no RNG state (and no extra variable) when nothing is dropped.
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None
        self.supports_masking = True
        # No weights to build. Blocks declare their output shapes, so keras never calls this
        # layer symbolically; left unbuilt, it made JAX's `predict_on_batch` run a whole
        # eager forward pass (every op compiled on its own) before the compiled one.
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=inputs.dtype)
        return inputs * ops.floor(keep + noise) / keep

    def compute_output_shape(self, input_shape):
        return input_shape
