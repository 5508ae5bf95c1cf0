"""Preprocessing that reproduces transformers' processor of the PVT v1 checkpoints."""

import keras
from keras_hub.layers import ImageConverter
from keras_hub.models import ImageClassifierPreprocessor

from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.models.pvt_v2.preprocessor import imagenet_scale_offset


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTImageConverter(ImageConverter):
    """Resizes to 224x224 (bilinear, no crop), rescales by 1/255 and normalises with the
    ImageNet mean/std, as the `PvtImageProcessor` saved with the PVT v1 checkpoints does.

    A checkpoint's own `preprocessor_config.json` (size, resample, mean/std) overrides these
    defaults when it is converted.
    """

    backbone_cls = PVTBackbone

    def __init__(self, image_size=(224, 224), scale=None, offset=None, **kwargs):
        if scale is None and offset is None:
            scale, offset = imagenet_scale_offset()
        kwargs.setdefault("crop_to_aspect_ratio", False)
        kwargs.setdefault("interpolation", "bilinear")
        kwargs.setdefault("antialias", True)
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Image preprocessing for `PVTClassifier` (see `PVTImageConverter`)."""

    backbone_cls = PVTBackbone
    image_converter_cls = PVTImageConverter

    def __init__(self, image_converter=None, **kwargs):
        if image_converter is None:
            image_converter = PVTImageConverter()
        super().__init__(image_converter=image_converter, **kwargs)
