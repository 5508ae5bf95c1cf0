"""Training and evaluating monocular depth: the scale-invariant log loss and the standard
error measures (abs-rel, δ < 1.25).

Predictions `(batch, h, w, 1)` are compared with depth maps `(batch, H, W[, 1])` at the
targets' own size: the prediction is resized bilinearly to the target when they differ (as
with segmentation masks, the ground truth is never resampled, so its invalid pixels stay
invalid). Pixels whose target is 0 (no measurement, as in KITTI's sparse LiDAR maps) or
not positive are left out of every figure.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_pvt.layers.resize import bilinear_resize


def depth_maps(y_true):
    """Depth targets as `(batch, height, width)` float32, with or without a channel axis."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "float32")


def predictions_at(y_pred, target):
    """`(batch, height, width)` predictions at the size of `target` (bilinear)."""
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    if len(y_pred.shape) == 4:
        y_pred = ops.squeeze(y_pred, axis=-1)
    if y_pred.shape[1:] == target.shape[1:] and None not in target.shape[1:]:
        return y_pred
    shape = ops.shape(target)
    return ops.squeeze(bilinear_resize(y_pred[..., None], (shape[1], shape[2]), axis=1), -1)


def _valid_pairs(y_true, y_pred, min_depth: float):
    target = depth_maps(y_true)
    predicted = ops.maximum(predictions_at(y_pred, target), min_depth)
    valid = ops.greater(target, 0.0)
    safe_target = ops.where(valid, target, 1.0)  # (no log of 0 even where masked out)
    return safe_target, predicted, ops.cast(valid, "float32")


@keras.saving.register_keras_serializable(package="keras_pvt")
class SiLogLoss(keras.losses.Loss):
    """Scale-invariant log loss (Eigen et al., 2014) as GLPN trains with:
    `sqrt(mean(d²) - λ · mean(d)²)`, `d = log(target) - log(prediction)` over the batch's
    valid pixels (target > 0), as transformers' `SiLogLoss` (λ = 0.5).

    Args:
        lambd: λ; 0 gives the RMSE of log depths, 1 a fully scale-invariant loss.
        min_depth: predictions are clamped to at least this before the logarithm.
    """

    def __init__(self, lambd: float = 0.5, min_depth: float = 1e-3, name: str = "silog_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.lambd = lambd
        self.min_depth = min_depth

    def call(self, y_true, y_pred):
        target, predicted, valid = _valid_pairs(y_true, y_pred, self.min_depth)
        d = (ops.log(target) - ops.log(predicted)) * valid
        count = ops.maximum(ops.sum(valid), 1.0)
        mean_square = ops.sum(d * d) / count
        mean = ops.sum(d) / count
        # (a scalar: keras' mean over it is itself; the statistics are over the whole batch)
        return ops.sqrt(ops.maximum(mean_square - self.lambd * mean * mean, 1e-12))

    def get_config(self):
        return {**super().get_config(), "lambd": self.lambd, "min_depth": self.min_depth}


class _PixelMean(keras.metrics.Metric):
    """A mean over every valid pixel seen (not a mean of per-batch means)."""

    def __init__(self, name: str, min_depth: float = 1e-3, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.min_depth = min_depth
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def pixel_values(self, target, predicted):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        target, predicted, valid = _valid_pairs(y_true, y_pred, self.min_depth)
        if sample_weight is not None:
            weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            valid = valid * ops.reshape(weight, (-1,) + (1,) * (len(valid.shape) - 1))
        self.total.assign_add(ops.sum(self.pixel_values(target, predicted) * valid))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "min_depth": self.min_depth, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="keras_pvt")
class AbsRelError(_PixelMean):
    """Mean absolute relative error `|prediction - target| / target` over valid pixels."""

    def __init__(self, name: str = "abs_rel", **kwargs):
        super().__init__(name=name, **kwargs)

    def pixel_values(self, target, predicted):
        return ops.abs(predicted - target) / target


@keras.saving.register_keras_serializable(package="keras_pvt")
class DeltaAccuracy(_PixelMean):
    """Share of valid pixels with `max(prediction / target, target / prediction) < threshold`
    (δ < 1.25 by default; 1.25² and 1.25³ are the other usual ones)."""

    def __init__(self, threshold: float = 1.25, name: str | None = None, **kwargs):
        super().__init__(name=name or f"delta_{threshold:g}", **kwargs)
        self.threshold = threshold

    def pixel_values(self, target, predicted):
        ratio = ops.maximum(predicted / target, target / predicted)
        return ops.cast(ops.less(ratio, self.threshold), "float32")

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
