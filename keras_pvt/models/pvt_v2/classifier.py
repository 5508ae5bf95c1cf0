"""PVT v2 image classifier: mean over the last stage's tokens, then a Dense head."""

import keras

from keras_pvt.models.base import BaseImageClassifier
from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.models.pvt_v2.preprocessor import PVTv2ImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Classifier(BaseImageClassifier):
    """PVT v2 image classifier (`keras_hub.models.ImageClassifier`).

    Calling the model on a normalised NHWC batch returns logits; `predict` on raw images
    (uint8 or float in [0, 255]) runs the preprocessor first.

    Args:
        backbone: a `PVTv2Backbone`.
        num_classes: number of output classes.
        preprocessor: a `PVTv2ImageClassifierPreprocessor` or `None`.
        class_names: optional label of each class, used by `decode_predictions`.
        **kwargs: `pooling`, `activation`, `dropout`, `head_dtype` of `ImageClassifier`.

    Example:
    ```python
    model = keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    probabilities = keras.ops.softmax(model.predict(images))
    print(model.decode_predictions(probabilities, top=5))
    ```
    """

    backbone_cls = PVTv2Backbone
    preprocessor_cls = PVTv2ImageClassifierPreprocessor
