"""CvT image classifier: LayerNorm on the last stage's cls token, then a Dense head."""

import keras

from keras_pvt.models.cvt.backbone import CvTBackbone
from keras_pvt.models.cvt.preprocessor import CvTImageClassifierPreprocessor
from keras_pvt.tasks.classifier import PyramidImageClassifier


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTClassifier(PyramidImageClassifier):
    """CvT image classifier (`keras_hub.models.ImageClassifier`), as transformers'
    `CvtForImageClassification`: a LayerNorm on the last stage's cls token
    (`pooling="token"`) -- or, for a backbone without one, on every token of the last map,
    then their average (`pooling="avg"`) -- and a Dense layer. The head's LayerNorm belongs
    to the task (as in transformers), so `from_preset(..., num_classes=N)` starts a new
    LayerNorm as well as a new Dense layer. See `PyramidImageClassifier`.
    """

    backbone_cls = CvTBackbone
    preprocessor_cls = CvTImageClassifierPreprocessor
    default_head_norm = True
