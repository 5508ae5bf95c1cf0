"""Preprocessing that reproduces transformers' `PvtImageProcessor`."""

import keras

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.tasks.classifier import PyramidImageClassifierPreprocessor
from keras_pvt.tasks.preprocessing import ImageNetImageConverter


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2ImageConverter(ImageNetImageConverter):
    """Resizes to 224x224 (bilinear, no crop), rescales by 1/255 and normalises with the
    ImageNet mean/std, as transformers' processor for the PVT v2 checkpoints does."""

    backbone_cls = PVTv2Backbone


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2ImageClassifierPreprocessor(PyramidImageClassifierPreprocessor):
    """Image preprocessing for `PVTv2Classifier` (see `PVTv2ImageConverter`)."""

    backbone_cls = PVTv2Backbone
    image_converter_cls = PVTv2ImageConverter
