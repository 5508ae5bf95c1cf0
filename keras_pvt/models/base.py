"""Behaviour shared by every family's backbone and classifier: presets and label decoding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras_hub.models import ImageClassifier


class classproperty:  # noqa: N801 - mirrors the builtin `property`
    """A read-only property on the class (keras-hub's own helper is private)."""

    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


class PresetMixin:
    """`from_preset` that also understands keras_pvt preset names, `hf://` repositories and
    transformers / timm / original checkpoints (directories or single files).

    Everything is converted once into keras-hub's preset format and then loaded by
    keras-hub, so `load_weights`, `num_classes`, `dtype`, `image_shape`... behave as in
    keras-hub.
    """

    @classproperty
    def presets(cls) -> dict:
        """The built-in presets this class can load, with description, size and source."""
        from keras_pvt import hub

        return hub.presets_for(cls)

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True, **kwargs):
        """Builds the model from a preset name, `hf://owner/repo`, or a local path.

        Args:
            preset: a keras_pvt preset name (see `presets`), `hf://owner/repo` (keras-hub,
                transformers or timm layout), a local directory (same layouts) or a single
                checkpoint file (`.safetensors`, `.bin`, `.pth`).
            load_weights: `False` builds the architecture with random weights.
            **kwargs: forwarded to keras-hub, e.g. `num_classes=N` for a new head,
                `dtype="mixed_bfloat16"`, `image_shape=(224, 224, 3)`.
        """
        from keras_pvt import hub

        with hub.resolve(preset, cls) as local_preset:
            return super().from_preset(local_preset, load_weights=load_weights, **kwargs)


class BaseImageClassifier(PresetMixin, ImageClassifier):
    """keras-hub `ImageClassifier` that also knows its class names.

    Args:
        backbone: the family's backbone.
        num_classes: number of output classes.
        preprocessor: image preprocessor, or `None`.
        class_names: optional list with the label of each class.
        **kwargs: other `keras_hub.models.ImageClassifier` arguments.
    """

    def __init__(
        self,
        backbone,
        num_classes: int,
        preprocessor=None,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(
            backbone=backbone, num_classes=num_classes, preprocessor=preprocessor, **kwargs
        )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes={num_classes}."
            )
        self.class_names = list(class_names) if class_names is not None else None

    def get_config(self):
        config = super().get_config()
        config["class_names"] = self.class_names
        return config

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True, **kwargs):
        # A new head (`num_classes=N`) has no names unless the caller gives them.
        if "num_classes" in kwargs:
            kwargs.setdefault("class_names", None)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

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
