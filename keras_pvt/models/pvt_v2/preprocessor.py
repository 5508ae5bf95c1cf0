"""Preprocessing that reproduces transformers' `PvtImageProcessor`."""

import keras
from keras_hub.layers import ImageConverter

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.tasks.classifier import PyramidImageClassifierPreprocessor
from keras_pvt.tasks.preprocessing import imagenet_scale_offset


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2ImageConverter(ImageConverter):
    """Resizes to 224x224 (bilinear, no crop), rescales by 1/255 and normalises with the
    ImageNet mean/std, as transformers' processor for the PVT v2 checkpoints does."""

    backbone_cls = PVTv2Backbone

    def __init__(self, image_size=(224, 224), scale=None, offset=None, **kwargs):
        if scale is None and offset is None:
            scale, offset = imagenet_scale_offset()
        kwargs.setdefault("crop_to_aspect_ratio", False)
        kwargs.setdefault("interpolation", "bilinear")
        kwargs.setdefault("antialias", True)
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2ImageClassifierPreprocessor(PyramidImageClassifierPreprocessor):
    """Image preprocessing for `PVTv2Classifier` (see `PVTv2ImageConverter`)."""

    backbone_cls = PVTv2Backbone
    image_converter_cls = PVTv2ImageConverter
