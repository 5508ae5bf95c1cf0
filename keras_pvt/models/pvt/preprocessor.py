"""Preprocessing that reproduces transformers' processor of the PVT v1 checkpoints."""

import keras

from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.models.pvt_v2.preprocessor import (
    PVTv2ImageClassifierPreprocessor,
    PVTv2ImageConverter,
)


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTImageConverter(PVTv2ImageConverter):
    """Resizes to 224x224 (bilinear, no crop), rescales by 1/255 and normalises with the
    ImageNet mean/std, as the `PvtImageProcessor` saved with the PVT v1 checkpoints does --
    the same processing as PVT v2's, tied to `PVTBackbone` for keras-hub's preset lookup.

    A checkpoint's own `preprocessor_config.json` (size, resample, mean/std) overrides these
    defaults when it is converted.
    """

    backbone_cls = PVTBackbone


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTImageClassifierPreprocessor(PVTv2ImageClassifierPreprocessor):
    """Image preprocessing for `PVTClassifier` (see `PVTImageConverter`)."""

    backbone_cls = PVTBackbone
    image_converter_cls = PVTImageConverter
