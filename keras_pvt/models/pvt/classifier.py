"""PVT v1 image classifier: the class token after the final LayerNorm, then a Dense head."""

from collections.abc import Sequence

import keras
from keras_hub.models import Task

from keras_pvt.models.base import BaseImageClassifier
from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.models.pvt.preprocessor import PVTImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTClassifier(BaseImageClassifier):
    """PVT v1 image classifier (`keras_hub.models.ImageClassifier`).

    Classifies the backbone's class token (`pooling="token"`, as PVT v1 was trained), or
    the average of the last stage's map (`pooling="avg"`). Calling the model on a normalised
    NHWC batch returns logits; `predict` on raw images (uint8 or float in [0, 255]) runs the
    preprocessor first.

    keras-hub's `ImageClassifier` pools the backbone's output map; like keras-hub's ViT
    classifier, this one builds its own graph (on the backbone's `cls_token_output`) and
    initialises `keras_hub.models.Task` directly.

    Args:
        backbone: a `PVTBackbone`.
        num_classes: number of output classes.
        preprocessor: a `PVTImageClassifierPreprocessor` or `None`.
        class_names: optional label of each class, used by `decode_predictions`.
        pooling: `"token"` (class token) or `"avg"` (mean of the last stage's map).
        activation: activation of the head (`None`: logits).
        dropout: dropout before the head.
        head_dtype: dtype policy of the head; defaults to the backbone's.

    Example:
    ```python
    model = keras_pvt.PVTClassifier.from_preset("pvt_tiny")
    print(model.decode_predictions(model.predict(images), top=5))
    ```
    """

    backbone_cls = PVTBackbone
    preprocessor_cls = PVTImageClassifierPreprocessor

    def __init__(
        self,
        backbone: PVTBackbone,
        num_classes: int,
        preprocessor=None,
        class_names: Sequence[str] | None = None,
        pooling: str = "token",
        activation=None,
        dropout: float = 0.0,
        head_dtype=None,
        **kwargs,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={num_classes}."
            )
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        if pooling == "token":
            self.pooler = None
        elif pooling == "avg":
            self.pooler = keras.layers.GlobalAveragePooling2D(dtype=head_dtype, name="pooler")
        else:
            raise ValueError(
                f"Unknown `pooling` {pooling!r}: PVTClassifier pools with 'token' (the class "
                "token) or 'avg' (the last stage's map)."
            )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )

        # === Functional Model ===
        # The head reads the backbone graph's class token, which `backbone(inputs)` (a
        # single NHWC output) does not return.
        inputs = backbone.input
        if pooling == "token":
            x = backbone.cls_token_output
        else:
            x = self.pooler(backbone.output)
        outputs = self.output_dense(self.output_dropout(x))
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None
