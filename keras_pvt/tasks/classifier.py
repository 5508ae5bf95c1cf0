"""Image classification on any keras_pvt backbone: pooled features, optional LayerNorm,
dropout and a Dense head."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras_hub.models import ImageClassifier, ImageClassifierPreprocessor, Task

from keras_pvt.data import PythonDataMixin
from keras_pvt.layers import LayerNormalization
from keras_pvt.models.base import PresetMixin

POOLINGS = ("avg", "max", "token")


class PyramidImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """keras-hub's `ImageClassifierPreprocessor`, whose image converter defaults to the
    family's (`image_converter_cls()`)."""

    def __init__(self, image_converter=None, **kwargs):
        if image_converter is None:
            image_converter = self.image_converter_cls()
        super().__init__(image_converter=image_converter, **kwargs)


class PyramidImageClassifier(PythonDataMixin, PresetMixin, ImageClassifier):
    """A keras-hub `ImageClassifier` for any keras_pvt backbone, with class names.

    The head classifies the backbone's class token (`pooling="token"`, PVT v1 and CvT) or
    the average of the last stage's map (`pooling="avg"`, PVT v2). With `head_norm`, a
    LayerNorm is applied first (to the token, or to every position of the map before
    averaging), as CvT's head does. Calling the model on a normalised NHWC batch returns
    logits; `predict` on raw images (uint8 or float in [0, 255]) runs the preprocessor.
    `fit`/`evaluate`/`predict` also take a `keras.utils.PyDataset` or a torch `DataLoader`.

    keras-hub's `ImageClassifier.__init__` only pools the backbone's output map, so the
    graph is built here (with the class token, or a LayerNorm, when asked) and handed to
    `keras_hub.models.Task`, as keras-hub's ViT classifier does.

    Args:
        backbone: a keras_pvt backbone.
        num_classes: number of output classes.
        preprocessor: an image preprocessor, or `None`.
        class_names: optional label of each class, used by `decode_predictions`.
        pooling: `"token"`, `"avg"`, `"max"`, or `None` for `"token"` when the backbone has a class
            token (`backbone.cls_token_output`) and `"avg"` otherwise.
        head_norm: LayerNorm before the head; `None` for the family's default.
        activation: activation of the Dense head (`None`: logits).
        dropout: dropout before the Dense head.
        head_dtype: dtype policy of the head; the backbone's by default.
    """

    default_head_norm = False
    # How the head's graph reaches the backbone: calling it as one layer (keras-hub's
    # `ImageClassifier` graph) or continuing its graph. keras' weight files follow the graph,
    # so each class keeps the layout its saved presets and `.keras` files have; a token head
    # always continues the graph (the class token is a tensor inside it).
    calls_backbone = False

    def __init__(
        self,
        backbone,
        num_classes: int,
        preprocessor=None,
        class_names: Sequence[str] | None = None,
        pooling: str | None = None,
        head_norm: bool | None = None,
        activation=None,
        dropout: float = 0.0,
        head_dtype=None,
        **kwargs,
    ):
        has_cls_token = getattr(backbone, "cls_token_output", None) is not None
        pooling = pooling or ("token" if has_cls_token else "avg")
        if pooling not in POOLINGS:
            raise ValueError(
                f"Unknown `pooling` {pooling!r}: {type(self).__name__} pools with 'token' (the "
                "class token), 'avg' or 'max' (over the last stage's map)."
            )
        if pooling == "token" and not has_cls_token:
            raise ValueError(
                f"pooling='token' needs a backbone with a class token; {type(backbone).__name__}"
                " has none in this configuration: use pooling='avg'."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={num_classes}."
            )
        head_norm = self.default_head_norm if head_norm is None else bool(head_norm)
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.layernorm = None
        if head_norm:
            self.layernorm = LayerNormalization(
                epsilon=backbone.layer_norm_epsilon, dtype=head_dtype, name="layernorm"
            )
        self.pooler = None
        if pooling == "avg":
            self.pooler = keras.layers.GlobalAveragePooling2D(dtype=head_dtype, name="pooler")
        elif pooling == "max":
            self.pooler = keras.layers.GlobalMaxPooling2D(dtype=head_dtype, name="pooler")
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )

        # === Functional Model ===
        inputs = backbone.input
        if pooling == "token":
            x = backbone.cls_token_output
        else:
            x = backbone(inputs) if self.calls_backbone else backbone.output
        if self.layernorm is not None:
            x = self.layernorm(x)
        if self.pooler is not None:
            x = self.pooler(x)
        outputs = self.output_dense(self.output_dropout(x))
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.head_norm = head_norm
        self.activation = activation
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None

    def get_config(self):
        config = super().get_config()
        config.update({"class_names": self.class_names, "head_norm": self.head_norm})
        return config

    def decode_predictions(self, predictions, top: int = 5, from_logits: bool | None = None):
        """Top-k `(index, label, probability)` per image.

        Args:
            predictions: `(batch, num_classes)` logits or probabilities.
            top: how many classes to return per image.
            from_logits: whether `predictions` are logits; by default, they are unless the
                model's head has a softmax activation.
        """
        scores = np.asarray(predictions, dtype="float64")
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected predictions of shape (batch, {self.num_classes}); "
                f"received {scores.shape}."
            )
        if from_logits is None:
            from_logits = self.activation not in ("softmax",)
        if from_logits:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        names = self.class_names or [f"class_{i}" for i in range(self.num_classes)]
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top]
            results.append([(int(i), names[i], float(row[i])) for i in order])
        return results
