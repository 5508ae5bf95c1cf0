"""PVT v2 image classifier: mean over the last stage's tokens, then a Dense head."""

import keras

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.models.pvt_v2.preprocessor import PVTv2ImageClassifierPreprocessor
from keras_pvt.tasks.classifier import PyramidImageClassifier


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Classifier(PyramidImageClassifier):
    """PVT v2 image classifier (`keras_hub.models.ImageClassifier`): the average of the last
    stage's map (`pooling="avg"`), then a Dense head. See `PyramidImageClassifier`.
    """

    backbone_cls = PVTv2Backbone
    preprocessor_cls = PVTv2ImageClassifierPreprocessor
    calls_backbone = True
