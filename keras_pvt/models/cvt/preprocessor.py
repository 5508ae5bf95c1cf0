"""Preprocessing that reproduces transformers' `ConvNextImageProcessor`, which the CvT
checkpoints use: resize the shorter side to `size / crop_pct` (bicubic) and centre-crop
`size` below 384 pixels; resize straight to `size` x `size` at 384 and above."""

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from keras_pvt.models.cvt.backbone import CvTBackbone
from keras_pvt.tasks.classifier import PyramidImageClassifierPreprocessor
from keras_pvt.tasks.preprocessing import imagenet_scale_offset

# transformers' ConvNext processor only crops below this size; larger sizes are warped.
CROP_BELOW = 384


def _in_tf_graph() -> bool:
    """Whether we are tracing a tf.function / tf.data graph (keras-hub then feeds TF tensors
    whatever the backend, so TF ops must be used)."""
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return not tf.executing_eagerly()


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTImageConverter(ImageConverter):
    """Resizes like transformers' `ConvNextImageProcessor`, rescales by 1/255 and normalises
    with the ImageNet mean/std.

    For a target below 384 pixels with `crop_pct` set, the shorter side is resized to
    `int(size / crop_pct)` (224 -> 256; the longer side keeps the aspect ratio, rounded
    down) and the centre `size` x `size` is cropped; otherwise the image is resized to
    `image_size` directly (no crop, aspect ratio not kept).

    Works on one image or a batch (uint8 or float in [0, 255]), eagerly on every backend and
    inside `tf.data` pipelines.

    Args:
        image_size: output `(height, width)`; square when `crop_pct` is used.
        scale: per-channel scale; ImageNet `1 / (255 * std)` by default.
        offset: per-channel offset; ImageNet `-mean / std` by default.
        crop_pct: fraction of the resized image kept by the centre crop, in (0, 1], or
            `None` to always resize directly.
        **kwargs: `ImageConverter` arguments (`interpolation` defaults to `"bicubic"`,
            `antialias` to `True`).
    """

    backbone_cls = CvTBackbone

    def __init__(
        self,
        image_size=(224, 224),
        scale=None,
        offset=None,
        crop_pct: float | None = 0.875,
        **kwargs,
    ):
        if scale is None and offset is None:
            scale, offset = imagenet_scale_offset()
        if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1] or None; received {crop_pct}.")
        kwargs.setdefault("crop_to_aspect_ratio", False)
        kwargs.setdefault("interpolation", "bicubic")
        kwargs.setdefault("antialias", True)
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)
        # Built here (it has no weights): the crop path never calls it, and keras' JAX
        # predict runs an uncompiled forward pass whenever a layer is unbuilt.
        self.resizing.build((None, None, None, 3))
        self.crop_pct = crop_pct
        if self._crops() and self.image_size[0] != self.image_size[1]:
            raise ValueError(
                "crop_pct crops a square, like transformers' ConvNext processor; received "
                f"image_size={self.image_size}. Use a square size or crop_pct=None."
            )

    def _crops(self) -> bool:
        return (
            self.crop_pct is not None
            and self.image_size is not None
            and self.image_size[0] < CROP_BELOW
        )

    def _call_python(self, inputs):
        if not self._crops():
            return super()._call_python(inputs)
        if isinstance(inputs, dict):
            raise ValueError(
                "CvTImageConverter with crop_pct does not transform bounding boxes; pass "
                "images only, or use crop_pct=None."
            )
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = np.asarray(inputs)
            except ValueError:  # images of different sizes: one at a time
                return [self._call_python(image) for image in inputs]
        if _in_tf_graph():
            return self._resize_crop_normalise_tf(inputs)
        return self._resize_crop_normalise(ops.convert_to_tensor(inputs))

    def _target(self, height, width):
        """HF's `get_resize_output_image_size(default_to_square=False)` for the short side."""
        short = int(self.image_size[0] / self.crop_pct)
        if width <= height:
            return (short * height) // width, short
        return short, (short * width) // height

    def _resize_crop_normalise(self, images):
        height, width = images.shape[-3], images.shape[-2]
        new_h, new_w = self._target(height, width)
        x = ops.cast(images, "float32")  # keras' resize keeps integer dtypes: resize floats
        x = ops.image.resize(
            x, (new_h, new_w), interpolation=self.interpolation, antialias=self.antialias
        )
        if "int" in keras.backend.standardize_dtype(images.dtype):
            # Integer images stay integers through the resize, as in keras' Resizing (the
            # direct-resize path) and PIL (transformers): round and clip.
            x = ops.clip(ops.round(x), 0, 255)
        size = self.image_size[0]
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top : top + size, left : left + size, :]
        scale = ops.convert_to_tensor(np.asarray(self.scale, "float32"))
        offset = ops.convert_to_tensor(np.asarray(self.offset, "float32"))
        return ops.cast(x * scale + offset, self.compute_dtype)

    def _resize_crop_normalise_tf(self, images):
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        shape = tf.shape(x)
        height, width = shape[-3], shape[-2]
        short = int(self.image_size[0] / self.crop_pct)
        new_h = tf.where(width <= height, (short * height) // width, short)
        new_w = tf.where(width <= height, short, (short * width) // height)
        x = tf.image.resize(
            x, tf.stack([new_h, new_w]), method=self.interpolation, antialias=self.antialias
        )
        if images.dtype.is_integer:
            x = tf.clip_by_value(tf.round(x), 0, 255)
        size = self.image_size[0]
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top : top + size, left : left + size, :]
        static = x.shape.as_list()
        static[-3:-1] = [size, size]
        x.set_shape(static)  # the crop size is static even though the resize is not
        x = x * np.asarray(self.scale, "float32") + np.asarray(self.offset, "float32")
        return tf.cast(x, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["crop_pct"] = self.crop_pct
        return config


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTImageClassifierPreprocessor(PyramidImageClassifierPreprocessor):
    """Image preprocessing for `CvTClassifier` (see `CvTImageConverter`)."""

    backbone_cls = CvTBackbone
    image_converter_cls = CvTImageConverter
