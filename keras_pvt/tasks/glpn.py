"""Monocular depth on any keras_pvt backbone: GLPN's decoder and head.

Kim et al., "Global-Local Path Networks for Monocular Depth Estimation with Vertical
CutDepth" (2022). The decoder walks the pyramid from the coarsest level: each level is
projected to `decoder_hidden_size` channels (1x1 convolution, where the widths differ),
fused with the upsampled coarser result by *selective feature fusion* (a two-channel
sigmoid attention that weighs the local and the global features per pixel), and
upsampled; the head (3x3 conv, ReLU, 3x3 conv, sigmoid) gives depth in `[0, max_depth]` at
the input size.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.models import DepthEstimator, DepthEstimatorPreprocessor, Task

from keras_pvt.data import PythonDataMixin
from keras_pvt.layers.core import Layer
from keras_pvt.layers.resize import ResizeLike, Upsample, bicubic_resize
from keras_pvt.models.base import FamilyTaskMixin, PresetMixin
from keras_pvt.tasks.depth import AbsRelError, DeltaAccuracy, SiLogLoss
from keras_pvt.tasks.per_image import predict_per_image

# === Preprocessing ===


@keras.saving.register_keras_serializable(package="keras_pvt")
class GLPNImageConverter(ImageConverter):
    """As transformers' `GLPNImageProcessor`: resizes each image so that its height and
    width are rounded down to a multiple of `size_divisor` (bilinear, antialiased; no resize
    when they already are), and rescales by 1/255 (no mean/std normalisation).

    Args:
        size_divisor: the multiple; `None` keeps every image's size.
        scale: the rescaling factor (`rescale_factor`).
    """

    def __init__(self, size_divisor: int | None = 32, scale=1 / 255, offset=None,
                 image_size=None, **kwargs):
        if image_size is not None:
            raise ValueError(
                "GLPNImageConverter resizes each image to a multiple of `size_divisor`; it "
                f"takes no image_size (received {image_size})."
            )
        kwargs.setdefault("interpolation", "bilinear")
        kwargs.setdefault("antialias", True)
        kwargs.setdefault("crop_to_aspect_ratio", False)
        super().__init__(image_size=None, scale=scale, offset=offset, **kwargs)
        self.size_divisor = size_divisor
        # Built here (it has no weights): keras' JAX predict runs an uncompiled forward pass
        # whenever a layer of the model is unbuilt.
        self.resizing.build((None, None, None, 3))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of `height x width` is resized to."""
        divisor = self.size_divisor
        if not divisor:
            return height, width
        if height < divisor or width < divisor:
            raise ValueError(
                f"GLPNImageConverter rounds image sizes down to a multiple of {divisor}; a "
                f"{height}x{width} image is smaller than {divisor} pixels. Upscale or pad it "
                f"to at least {divisor}x{divisor}."
            )
        return height // divisor * divisor, width // divisor * divisor

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):  # images of different sizes
            return type(inputs)(self.call(ops.convert_to_tensor(np.asarray(x)))
                                if isinstance(x, np.ndarray) else self.call(x) for x in inputs)
        height, width = inputs.shape[-3], inputs.shape[-2]
        size = None
        if height is not None and width is not None:
            size = self.output_size(height, width)
            size = None if size == (height, width) else size
        self.image_size = size  # keras-hub's resizing layer, for this call
        try:
            return super().call(inputs)
        finally:
            self.image_size = None

    def get_config(self):
        config = super().get_config()
        config.pop("image_size", None)
        return {**config, "size_divisor": self.size_divisor}


@keras.saving.register_keras_serializable(package="keras_pvt")
class GLPNDepthEstimatorPreprocessor(DepthEstimatorPreprocessor):
    """keras-hub's `DepthEstimatorPreprocessor` with a `GLPNImageConverter`: images are
    resized and rescaled; depth targets pass unchanged (the loss compares the prediction
    with them at their own size)."""

    image_converter_cls = GLPNImageConverter

    def __init__(self, image_converter=None, **kwargs):
        if image_converter is None:
            image_converter = self.image_converter_cls()
        super().__init__(image_converter=image_converter, **kwargs)


# === Layers ===


@keras.saving.register_keras_serializable(package="keras_pvt")
class SelectiveFeatureFusion(Layer):
    """GLPN's selective feature fusion (section 3.4): from the concatenated local and global
    features, two 3x3 conv + BatchNorm + ReLU and a 3x3 conv to two channels give a sigmoid
    attention per pixel; the output is `local * a[0] + global * a[1]`."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self._store_arguments(locals())
        policy = self.dtype_policy

        def conv(filters, name):
            return keras.layers.Conv2D(filters, 3, padding="same", dtype=policy, name=name)

        def norm(name):
            return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=policy,
                                                   name=name)

        self.convolution1 = conv(channels, "convolution1")
        self.batch_norm1 = norm("batch_norm1")
        self.convolution2 = conv(channels // 2, "convolution2")
        self.batch_norm2 = norm("batch_norm2")
        self.convolution3 = conv(2, "convolution3")

    def build(self, local_features_shape, global_features_shape=None):
        shape = tuple(local_features_shape[:-1])
        self.convolution1.build(shape + (2 * self.channels,))
        self.batch_norm1.build(shape + (self.channels,))
        self.convolution2.build(shape + (self.channels,))
        self.batch_norm2.build(shape + (self.channels // 2,))
        self.convolution3.build(shape + (self.channels // 2,))

    def call(self, local_features, global_features, training=None):
        x = ops.concatenate([local_features, global_features], axis=-1)
        x = ops.relu(self.batch_norm1(self.convolution1(x), training=training))
        x = ops.relu(self.batch_norm2(self.convolution2(x), training=training))
        attention = ops.sigmoid(self.convolution3(x))
        return local_features * attention[..., 0:1] + global_features * attention[..., 1:2]

    def compute_output_shape(self, local_features_shape, global_features_shape=None):
        return tuple(local_features_shape)


# === Task ===


class GLPNDepthEstimator(PythonDataMixin, FamilyTaskMixin, PresetMixin, DepthEstimator):
    """GLPN monocular depth estimation (`keras_hub.models.DepthEstimator`) on any keras_pvt
    backbone: PVT v2 (GLPN's own Mix Transformer), PVT v1 or CvT.

    `model(images)` maps a batch of images (rescaled to [0, 1], any size of at least the
    backbone's `minimum_image_size()`) to metric depth `(batch, H, W, 1)` in `[0, max_depth]`
    at the input size, equal to transformers' `predicted_depth`. `predict_depth(images)`
    takes raw images and gives depth at each image's own size. `fit` takes images and depth
    maps `(batch, H, W)` or `(batch, H, W, 1)`; pixels with depth 0 are treated as unmeasured.
    The default loss is GLPN's scale-invariant log loss (`SiLogLoss`), the metrics abs-rel
    and δ < 1.25.

    keras-hub's `DepthEstimator` expects the whole network in its backbone and returns a
    dict `{"depths": ...}`; here the decoder reads the backbone's `pyramid_outputs`, so the
    task builds its own graph and returns the depth tensor itself.

    Args:
        backbone: a keras_pvt backbone (anything with NHWC `pyramid_outputs`).
        preprocessor: a `GLPNDepthEstimatorPreprocessor`, or `None`.
        decoder_hidden_size: channels of the decoder (64 in GLPN).
        max_depth: the largest depth the head can output (GLPN: 10 m for NYU, 80 m KITTI).
        min_depth: predictions are clamped to at least this in the loss and the metrics.

    Example:
    ```python
    model = keras_pvt.GLPNDepthEstimator.from_preset("glpn_nyu")
    depth = model.predict_depth(image)  # metres, (height, width) at the image's size
    ```
    """

    preprocessor_cls = GLPNDepthEstimatorPreprocessor

    def __init__(
        self,
        backbone,
        preprocessor=None,
        decoder_hidden_size: int = 64,
        max_depth: float = 10.0,
        min_depth: float = 1e-3,
        **kwargs,
    ):
        levels = getattr(backbone, "pyramid_outputs", None)
        if not levels:
            raise ValueError(
                f"GLPNDepthEstimator needs a backbone with `pyramid_outputs` (a keras_pvt "
                f"backbone); {type(backbone).__name__} has none."
            )
        if not max_depth > min_depth > 0:
            raise ValueError(
                f"GLPNDepthEstimator needs 0 < min_depth < max_depth; received "
                f"min_depth={min_depth}, max_depth={max_depth}."
            )
        policy = backbone.dtype_policy
        features = [levels[name] for name in sorted(levels, key=lambda k: int(k[1:]))]
        coarsest_first = features[::-1]

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder_convolutions = [
            keras.layers.Conv2D(decoder_hidden_size, 1, dtype=policy,
                                name=f"decoder_stage{i}_convolution")
            if level.shape[-1] != decoder_hidden_size else None
            for i, level in enumerate(coarsest_first)
        ]
        self.fusions = [None] + [
            SelectiveFeatureFusion(decoder_hidden_size, dtype=policy,
                                   name=f"decoder_stage{i}_fusion")
            for i in range(1, len(features))
        ]
        self.resize = ResizeLike(dtype=policy, name="resize")
        self.upsample = Upsample(2, dtype=policy, name="upsample")
        self.head_convolution1 = keras.layers.Conv2D(
            decoder_hidden_size, 3, padding="same", activation="relu", dtype=policy,
            name="head_convolution1")
        self.head_convolution2 = keras.layers.Conv2D(
            1, 3, padding="same", activation="sigmoid", dtype=policy, name="head_convolution2")
        self.depth_scale = keras.layers.Rescaling(max_depth, dtype=policy, name="depth_scale")

        # === Functional Model ===
        inputs = backbone.input
        x = None
        for level, convolution, fusion in zip(
                coarsest_first, self.decoder_convolutions, self.fusions):
            local = convolution(level) if convolution is not None else level
            # the coarser result, upsampled to this level (torch's x2 where sizes double)
            x = local if x is None else fusion(local, self.resize(x, local))
        x = self.resize(self.upsample(x), inputs)  # stride 4 -> 2 -> the input size
        depth = self.depth_scale(self.head_convolution2(self.head_convolution1(x)))

        # === Config === (first: keras-hub's Task.__init__ compiles, which reads it)
        self.decoder_hidden_size = decoder_hidden_size
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.depth_estimation_type = "metric"  # keras-hub's name for depth in [0, max]
        Task.__init__(self, inputs=inputs, outputs=depth, **kwargs)

    def get_config(self):
        config = Task.get_config(self)
        config.update({
            "decoder_hidden_size": self.decoder_hidden_size,
            "max_depth": self.max_depth,
            "min_depth": self.min_depth,
        })
        return config

    # --- Training -----------------------------------------------------------------------

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`keras.Model.compile` with GLPN's defaults: AdamW (1e-4, weight decay 0.01),
        `SiLogLoss`, and the abs-rel and δ < 1.25 metrics (unmeasured pixels left out)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
        if loss == "auto":
            loss = SiLogLoss(min_depth=self.min_depth)
        if metrics == "auto":
            metrics = [AbsRelError(min_depth=self.min_depth),
                       DeltaAccuracy(1.25, min_depth=self.min_depth)]
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if x is not None and y is not None:
            # (x is preprocessed, resized to a multiple of 32: only ranks and batch compared)
            _check_depth_shape(x, y, type(self).__name__, spatial=False)
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit` on images and depth maps (NumPy arrays, `tf.data`, a
        `PyDataset` or a torch `DataLoader`); NumPy depth maps are checked first."""
        self._check_depths(x, y)
        if isinstance(validation_data, tuple) and len(validation_data) >= 2:
            self._check_depths(*validation_data[:2])
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_depths(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def _check_depths(self, images, depths) -> None:
        """Clear errors for NumPy depth maps that cannot be this model's targets."""
        if not isinstance(depths, np.ndarray):
            return
        name = type(self).__name__
        if depths.dtype.kind not in "iuf":
            raise TypeError(f"{name} depth maps must be numbers (metres); received dtype "
                            f"{depths.dtype}.")
        if isinstance(images, np.ndarray):
            _check_depth_shape(images, depths, name)
        if not np.isfinite(depths).all():
            raise ValueError(
                f"{name} depth maps hold {int(np.sum(~np.isfinite(depths)))} NaN or infinite "
                "values. Mark unmeasured pixels with 0 (they are left out of the loss), e.g. "
                "np.nan_to_num(depths, nan=0.0, posinf=0.0)."
            )
        if (depths < 0).any():
            raise ValueError(
                f"{name} depth maps hold negative values (minimum {float(depths.min()):g}); "
                "depth is a distance in metres. Mark unmeasured pixels with 0 instead."
            )

    # --- Inference ----------------------------------------------------------------------

    def predict_depth(self, images, batch_size: int = 8) -> np.ndarray | list[np.ndarray]:
        """Depth in metres at each raw image's own size.

        The images are preprocessed (rounded down to a multiple of 32 and rescaled), and
        the predicted depth is resized back to each image's size with bicubic
        interpolation, as transformers' `post_process_depth_estimation` does.

        Args:
            images: one image `(height, width, 3)`, a batch `(batch, height, width, 3)`, or a
                list of images of any sizes (uint8, or floats in [0, 255]).
            batch_size: images per forward pass.

        Returns:
            float32 depth: `(height, width)` for one image, `(batch, height, width)` for a
            batch, a list of `(height_i, width_i)` for a list.
        """
        converter = getattr(self.preprocessor, "image_converter", None)

        def check(image):  # a clear error for images too small to round down
            if isinstance(converter, GLPNImageConverter):
                converter.output_size(*image.shape[:2])

        return predict_per_image(self, images, "predict_depth", batch_size, _depth_at, check)


def _depth_at(depths, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each row's depth resized (bicubic) to its size, as `(height, width)` float32."""
    results = []
    for row, size in enumerate(sizes):
        depth = ops.convert_to_tensor(depths[row:row + 1])
        if tuple(depth.shape[1:3]) != size:
            depth = bicubic_resize(depth, size, axis=1)
        results.append(np.asarray(ops.convert_to_numpy(depth))[0, ..., 0].astype("float32"))
    return results


def _check_depth_shape(images, depths, name: str, spatial: bool = True) -> None:
    """Depth maps must be `(batch, H, W)` or `(batch, H, W, 1)`, one per image (at the
    images' size, if `spatial`)."""
    image_shape, depth_shape = tuple(images.shape), tuple(depths.shape)
    ok = len(depth_shape) == 3 or (len(depth_shape) == 4 and depth_shape[-1] in (1, None))
    if ok and len(image_shape) == 4:
        for got, want in zip(depth_shape[:3 if spatial else 1], image_shape[:3]):
            if got is not None and want is not None and got != want:
                ok = False
    if not ok:
        raise ValueError(
            f"{name} depth maps must have shape (batch, height, width) or (batch, height, "
            f"width, 1) at the images' size; received depth maps of shape {depth_shape} for "
            f"images of shape {image_shape}."
        )
