"""CvT image classifier: LayerNorm on the last stage's cls token, then a Dense head."""

from collections.abc import Sequence

import keras
from keras import ops
from keras_hub.models import Task

from keras_pvt.models.base import BaseImageClassifier
from keras_pvt.models.cvt.backbone import CvTBackbone
from keras_pvt.models.cvt.preprocessor import CvTImageClassifierPreprocessor

POOLINGS = ("token", "avg")


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTClassifier(BaseImageClassifier):
    """CvT image classifier (`keras_hub.models.ImageClassifier`).

    As transformers' `CvtForImageClassification`: the head normalises the last stage's cls
    token (`pooling="token"`) -- or, for a backbone without one, every token of the last map
    and then averages them (`pooling="avg"`) -- and applies a Dense layer.

    Calling the model on a normalised NHWC batch returns logits; `predict` on raw images
    (uint8 or float in [0, 255]) runs the preprocessor first. The head's LayerNorm belongs to
    the task (as in transformers), so `from_preset(..., num_classes=N)` starts a new
    LayerNorm as well as a new Dense layer.

    Args:
        backbone: a `CvTBackbone`.
        num_classes: number of output classes.
        preprocessor: a `CvTImageClassifierPreprocessor` or `None`.
        class_names: optional label of each class, used by `decode_predictions`.
        pooling: `"token"`, `"avg"`, or `None` for `"token"` when the backbone's last stage
            has a cls token and `"avg"` otherwise.
        activation: activation of the Dense head (`None`: logits).
        dropout: dropout before the Dense head.
        head_dtype: dtype policy of the head; the backbone's by default.

    Example:
    ```python
    model = keras_pvt.CvTClassifier.from_preset("cvt_13")
    probabilities = keras.ops.softmax(model.predict(images))
    print(model.decode_predictions(probabilities, top=5))
    ```
    """

    backbone_cls = CvTBackbone
    preprocessor_cls = CvTImageClassifierPreprocessor

    def __init__(
        self,
        backbone: CvTBackbone,
        num_classes: int,
        preprocessor=None,
        class_names: Sequence[str] | None = None,
        pooling: str | None = None,
        activation=None,
        dropout: float = 0.0,
        head_dtype=None,
        **kwargs,
    ):
        has_cls_token = getattr(backbone, "cls_token_output", None) is not None
        if pooling is None:
            pooling = "token" if has_cls_token else "avg"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; received {pooling!r}.")
        if pooling == "token" and not has_cls_token:
            raise ValueError(
                "pooling='token' needs a backbone whose last stage has a cls token "
                "(`cls_token[-1]=True`); use pooling='avg'."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={num_classes}."
            )
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.layernorm = keras.layers.LayerNormalization(
            epsilon=backbone.layer_norm_epsilon, dtype=head_dtype, name="layernorm"
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )

        # === Functional Model ===
        # The graph continues the backbone's own graph from its input, so that the cls token
        # (not a model output of the backbone) can be read; the backbone's layers and weights
        # are shared, as when keras-hub's classifiers call the backbone.
        inputs = backbone.input
        if pooling == "token":
            x = self.layernorm(backbone.cls_token_output)
        else:  # normalise every token of the last map, then average them
            x = ops.mean(self.layernorm(backbone.output), axis=(1, 2))
        x = self.output_dropout(x)
        outputs = self.output_dense(x)
        # keras-hub's ImageClassifier.__init__ would pool the NHWC map: skip to Task.
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None

