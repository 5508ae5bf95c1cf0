"""Training and evaluating semantic segmentation: the loss and the mean-IoU metric.

Both take the model's logits at a fraction of the image size (SegFormer: 1/4) and integer
masks at the image size. The logits are upsampled bilinearly to the mask, not the mask
downsampled, as SegFormer is trained (transformers and the original mmsegmentation code):
a downsampled mask would lose thin structures and shift boundaries by up to 2 pixels, and
upsampling costs one resize of the logits.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_pvt.layers.resize import bilinear_resize

IGNORE_INDEX = 255  # ADE20K's `reduce_labels` convention: 0 ("other") becomes 255


def mask_labels(y_true):
    """Integer `(batch, height, width)` labels from masks with or without a channel axis."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


def logits_at(logits, size):
    """The logits resized bilinearly (torch `align_corners=False`) to `(height, width)`."""
    return bilinear_resize(ops.convert_to_tensor(logits), size, axis=1)


@keras.saving.register_keras_serializable(package="keras_pvt")
class SegmentationLoss(keras.losses.Loss):
    """Pixel-wise sparse cross-entropy of logits against an integer mask, ignoring
    `ignore_index`.

    The logits `(batch, h, w, classes)` are upsampled to the mask's `(batch, H, W[, 1])`
    size first. The result is the mean over the batch's labelled pixels, as PyTorch's
    `CrossEntropyLoss(ignore_index=255)` in transformers' SegFormer.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, name: str = "segmentation_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = ignore_index

    def call(self, y_true, y_pred):
        labels = mask_labels(y_true)
        shape = ops.shape(labels)
        logits = ops.cast(logits_at(y_pred, (shape[1], shape[2])), "float32")
        valid = ops.not_equal(labels, self.ignore_index)
        safe = ops.where(valid, labels, 0)
        loss = ops.sparse_categorical_crossentropy(safe, logits, from_logits=True)
        valid = ops.cast(valid, "float32")
        # Keras averages what `call` returns over every pixel; rescale so that the result is
        # the mean over the labelled ones.
        total = ops.cast(ops.prod(ops.shape(valid)), "float32")
        return loss * valid * (total / ops.maximum(ops.sum(valid), 1.0))

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package="keras_pvt")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """Mean intersection-over-union of the argmax of upsampled logits against integer
    masks; pixels labelled `ignore_index` are not counted.

    Args:
        num_classes: number of classes of the model.
        ignore_index: label of unlabelled pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 name: str = "mean_iou", dtype=None):
        super().__init__(num_classes=num_classes, ignore_class=ignore_index,
                         sparse_y_true=True, sparse_y_pred=True, name=name, dtype=dtype)
        self.ignore_index = ignore_index

    def update_state(self, y_true, y_pred, sample_weight=None):
        # The confusion matrix as one segment sum over `true * n + predicted` (keras'
        # `MeanIoU` scatters, which the PyTorch backend runs as a Python loop per pixel).
        labels = mask_labels(y_true)
        shape = ops.shape(labels)
        predicted = ops.argmax(logits_at(y_pred, (shape[1], shape[2])), axis=-1)
        n = self.num_classes
        valid = ops.logical_and(
            ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, n)),
            ops.not_equal(labels, self.ignore_index),
        )
        weights = ops.cast(valid, "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(sample_weight.shape) == 1:  # one weight per image
                sample_weight = ops.reshape(sample_weight, (-1, 1, 1))
            weights = weights * sample_weight
        cells = ops.where(valid, labels * n + ops.cast(predicted, "int32"), 0)
        counts = ops.segment_sum(ops.reshape(weights, (-1,)), ops.reshape(cells, (-1,)),
                                 num_segments=n * n)
        counts = ops.cast(ops.reshape(counts, (n, n)), self.total_cm.dtype)
        return self.total_cm.assign(self.total_cm + counts)

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "name": self.name, "dtype": self.dtype}
