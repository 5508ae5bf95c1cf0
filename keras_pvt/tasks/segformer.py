"""Semantic segmentation on any keras_pvt backbone: SegFormer's all-MLP decoder.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers" (2021). The decoder projects every pyramid level to `decoder_hidden_size`
channels, resizes them to the finest (stride-4) level, concatenates them coarsest first,
fuses them with a 1x1 convolution + BatchNorm + ReLU and classifies every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from keras_hub.models import ImageSegmenter, ImageSegmenterPreprocessor, Task

from keras_pvt.data import PythonDataMixin
from keras_pvt.layers.resize import ResizeLike
from keras_pvt.models.base import FamilyTaskMixin, PresetMixin
from keras_pvt.tasks.per_image import predict_per_image
from keras_pvt.tasks.preprocessing import ImageNetImageConverter
from keras_pvt.tasks.segmentation import (
    IGNORE_INDEX,
    SegmentationLoss,
    SegmentationMeanIoU,
    logits_at,
)


@keras.saving.register_keras_serializable(package="keras_pvt")
class SegFormerImageConverter(ImageNetImageConverter):
    """Resizes to 512x512 (bilinear), rescales by 1/255 and normalises with the ImageNet
    mean/std, as transformers' `SegformerImageProcessor` does for the ADE20K checkpoints."""

    def __init__(self, image_size=(512, 512), **kwargs):
        super().__init__(image_size=image_size, **kwargs)


@keras.saving.register_keras_serializable(package="keras_pvt")
class SegFormerSegmenterPreprocessor(ImageSegmenterPreprocessor):
    """keras-hub's `ImageSegmenterPreprocessor`: images through the image converter and, in
    training, masks resized to the same size (nearest neighbour).

    Masks may be `(batch, height, width)` or `(batch, height, width, 1)`.

    Args:
        image_converter: the image converter; `SegFormerImageConverter()` by default.
        resize_output_mask: resize masks with the images (on by default, so that images
            and masks of any size can be passed to `fit`).
        reduce_labels: map label 0 to 255 (ignored) and every other label `k` to `k - 1`,
            as `SegformerImageProcessor(do_reduce_labels=True)` does for ADE20K's
            annotations (0 is "other"; the model's classes are 1..150).
    """

    image_converter_cls = SegFormerImageConverter

    def __init__(self, image_converter=None, resize_output_mask: bool = True,
                 reduce_labels: bool = False, **kwargs):
        if image_converter is None:
            image_converter = self.image_converter_cls()
        super().__init__(image_converter=image_converter,
                         resize_output_mask=resize_output_mask, **kwargs)
        self.reduce_labels = reduce_labels

    def call(self, x, y=None, sample_weight=None):
        if y is not None and hasattr(y, "shape") and hasattr(x, "shape"):
            if len(y.shape) == len(x.shape) - 1:
                y = y[..., None]  # keras' Resizing needs a channel axis
            if self.reduce_labels:
                y = reduce_labels(y)
        return super().call(x, y, sample_weight)

    def get_config(self):
        return {**super().get_config(), "reduce_labels": self.reduce_labels}


def reduce_labels(masks):
    """ADE20K's label reduction: 0 ("other") -> 255 (ignored), 255 stays, k -> k - 1.

    Works on NumPy arrays and on the TensorFlow tensors of keras-hub's `tf.data`
    preprocessing (the path `fit` takes on every backend).
    """
    if type(masks).__module__.startswith("tensorflow"):
        import tensorflow as tf

        masks = tf.cast(masks, "int32")
        return tf.where((masks == 0) | (masks == IGNORE_INDEX), IGNORE_INDEX, masks - 1)
    masks = np.asarray(masks).astype("int32")
    return np.where((masks == 0) | (masks == IGNORE_INDEX), IGNORE_INDEX, masks - 1)


class SegFormerSegmenter(PythonDataMixin, FamilyTaskMixin, PresetMixin, ImageSegmenter):
    """SegFormer semantic segmentation (`keras_hub.models.ImageSegmenter`) on any keras_pvt
    backbone: PVT v2 (SegFormer's own Mix Transformer), PVT v1 or CvT.

    `model(images)` maps a normalised NHWC batch of any size (at least the backbone's
    `minimum_image_size()`) to logits `(batch, H / 4, W / 4, num_classes)` at the backbone's
    finest pyramid level (rounded as its first patch embedding does: up for PVT v2 and
    SegFormer, as transformers' `logits`). `segment(images)` gives class ids at each raw image's
    own size. `fit` takes images and integer masks of the images' size; the default loss
    (`SegmentationLoss`) upsamples the logits to the masks and ignores label
    `ignore_index`, and the default metric is the mean IoU.

    Each instance is of its backbone family's subclass (`PVTv2SegFormerSegmenter`...), so a
    saved preset reloads through keras-hub like any other task.

    Args:
        backbone: a keras_pvt backbone (anything with NHWC `pyramid_outputs`).
        num_classes: number of classes.
        preprocessor: a `SegFormerSegmenterPreprocessor`, or `None`.
        decoder_hidden_size: channels of the decoder (256 for SegFormer b0/b1, 768 above).
        dropout: dropout before the classifier.
        class_names: optional name of each class (legends, the CLI).
        ignore_index: mask label of unlabelled pixels, ignored by the loss and the metric.
        head_dtype: dtype policy of the decoder; the backbone's by default.

    Example:
    ```python
    model = keras_pvt.SegFormerSegmenter.from_preset("segformer_b0_ade")
    masks = model.segment([image_a, image_b])  # class ids at each image's own size
    ```
    """

    preprocessor_cls = SegFormerSegmenterPreprocessor

    def __init__(
        self,
        backbone,
        num_classes: int,
        preprocessor=None,
        decoder_hidden_size: int = 256,
        dropout: float = 0.1,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        head_dtype=None,
        **kwargs,
    ):
        levels = getattr(backbone, "pyramid_outputs", None)
        if not levels:
            raise ValueError(
                f"SegFormerSegmenter needs a backbone with `pyramid_outputs` (a keras_pvt "
                f"backbone); {type(backbone).__name__} has none."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={num_classes}."
            )
        head_dtype = head_dtype or backbone.dtype_policy
        features = [levels[name] for name in sorted(levels, key=lambda k: int(k[1:]))]

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.linear_c = [
            keras.layers.Dense(decoder_hidden_size, dtype=head_dtype, name=f"linear_c{i}")
            for i in range(len(features))
        ]
        self.resize = ResizeLike(dtype=head_dtype, name="resize")
        self.concatenate = keras.layers.Concatenate(dtype=head_dtype, name="concatenate")
        self.linear_fuse = keras.layers.Conv2D(
            decoder_hidden_size, 1, use_bias=False, dtype=head_dtype, name="linear_fuse"
        )
        self.batch_norm = keras.layers.BatchNormalization(
            epsilon=1e-5, momentum=0.9, dtype=head_dtype, name="batch_norm"
        )
        self.activation = keras.layers.ReLU(dtype=head_dtype, name="activation")
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, dtype=head_dtype, name="classifier"
        )

        # === Functional Model ===
        finest = features[0]
        projected = [
            projection(level) if i == 0 else self.resize(projection(level), finest)
            for i, (projection, level) in enumerate(zip(self.linear_c, features))
        ]
        x = self.concatenate(projected[::-1])  # coarsest first, as SegFormer
        x = self.activation(self.batch_norm(self.linear_fuse(x)))
        outputs = self.classifier(self.output_dropout(x))
        # (the config first: keras-hub's Task.__init__ compiles, which reads it)
        self.num_classes = num_classes
        self.decoder_hidden_size = decoder_hidden_size
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        Task.__init__(self, inputs=backbone.input, outputs=outputs, **kwargs)


    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "decoder_hidden_size": self.decoder_hidden_size,
            "dropout": self.dropout,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
        })
        return config

    # --- Training -----------------------------------------------------------------------

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`keras.Model.compile` with SegFormer's defaults: AdamW (6e-5, weight decay 0.01),
        `SegmentationLoss` and `SegmentationMeanIoU` (both ignore `ignore_index`)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(6e-5, weight_decay=0.01)
        if loss == "auto":
            loss = SegmentationLoss(ignore_index=self.ignore_index)
        if metrics == "auto":
            metrics = [SegmentationMeanIoU(self.num_classes, ignore_index=self.ignore_index)]
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if x is not None and y is not None:
            _check_mask_shape(x, y, type(self).__name__)
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit` on images and integer masks of the same size (NumPy arrays,
        `tf.data`, a `PyDataset` or a torch `DataLoader`); NumPy masks are checked first."""
        self._check_masks(x, y)
        if isinstance(validation_data, tuple) and len(validation_data) >= 2:
            self._check_masks(*validation_data[:2])
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_masks(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def _check_masks(self, images, masks) -> None:
        """Clear errors for NumPy masks that cannot be this model's targets."""
        if not isinstance(masks, np.ndarray):
            return
        name = type(self).__name__
        if masks.dtype.kind not in "iub":
            raise TypeError(
                f"{name} masks must hold integer class ids (e.g. uint8 or int32); received "
                f"dtype {masks.dtype}. Convert them with masks.astype('int32') if they are "
                "class ids."
            )
        if isinstance(images, np.ndarray):
            _check_mask_shape(images, masks, name)
        reduce = getattr(self.preprocessor, "reduce_labels", False)
        labels = np.unique(masks)
        if reduce:  # 0 becomes ignore_index and k becomes k - 1
            bad = labels[(labels < 0) | (labels > self.num_classes)]
            allowed = f"0..{self.num_classes} (reduce_labels: 0 is ignored)"
        else:
            bad = labels[((labels < 0) | (labels >= self.num_classes))
                         & (labels != self.ignore_index)]
            allowed = f"0..{self.num_classes - 1}, or {self.ignore_index} for unlabelled pixels"
        if bad.size:
            raise ValueError(
                f"{name} has num_classes={self.num_classes} but the masks hold labels "
                f"{bad[:10].tolist()}; labels must be {allowed}. Build the model with more "
                "classes, or relabel the masks."
            )

    # --- Inference ----------------------------------------------------------------------

    def segment(self, images, batch_size: int = 8) -> np.ndarray | list[np.ndarray]:
        """Per-pixel class ids at each image's own size.

        The images are preprocessed (resized and normalised), the logits are upsampled
        bilinearly (`align_corners=False`) to each image's original size and the most
        likely class is taken, as transformers' `post_process_semantic_segmentation` does.

        Args:
            images: one image `(height, width, 3)`, a batch `(batch, height, width, 3)`, or a
                list of images of any sizes (uint8, or floats in [0, 255], as `predict`).
            batch_size: images per forward pass.

        Returns:
            int32 masks: `(height, width)` for one image, `(batch, height, width)` for a
            batch, a list of `(height_i, width_i)` for a list.
        """
        return predict_per_image(self, images, "segment", batch_size, _classes_at)


def _classes_at(logits, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The argmax of each row's logits upsampled bilinearly to its size (rows of one size
    together)."""
    masks = [None] * len(sizes)
    by_size = {}
    for row, size in enumerate(sizes):
        by_size.setdefault(size, []).append(row)
    for size, rows in by_size.items():
        upsampled = logits_at(ops.take(logits, rows, axis=0), size)
        classes = ops.convert_to_numpy(ops.argmax(upsampled, axis=-1))
        for position, row in enumerate(rows):
            masks[row] = classes[position].astype("int32")
    return masks


def _check_mask_shape(images, masks, name: str) -> None:
    """Masks must be `(batch, H, W)` or `(batch, H, W, 1)` at the images' `H, W`."""
    image_shape, mask_shape = tuple(images.shape), tuple(masks.shape)
    ok = len(mask_shape) == 3 or (len(mask_shape) == 4 and mask_shape[-1] in (1, None))
    if ok and len(image_shape) == 4:
        for got, want in zip(mask_shape[:3], image_shape[:3]):
            if got is not None and want is not None and got != want:
                ok = False
    if not ok:
        raise ValueError(
            f"{name} masks must be integer class ids of shape (batch, height, width) or "
            f"(batch, height, width, 1) at the images' size; received masks of shape "
            f"{mask_shape} for images of shape {image_shape}. Resize masks with nearest-"
            "neighbour interpolation to the images' size."
        )
