"""PVT v1 image classifier: the class token after the final LayerNorm, then a Dense head."""

import keras

from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.models.pvt.preprocessor import PVTImageClassifierPreprocessor
from keras_pvt.tasks.classifier import PyramidImageClassifier


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTClassifier(PyramidImageClassifier):
    """PVT v1 image classifier (`keras_hub.models.ImageClassifier`): the backbone's class
    token (`pooling="token"`, as PVT v1 was trained) or the average of the last stage's map
    (`pooling="avg"`), then a Dense head. See `PyramidImageClassifier`.
    """

    backbone_cls = PVTBackbone
    preprocessor_cls = PVTImageClassifierPreprocessor
