"""The image-classification task as conversion sees it (shared by every family)."""

from __future__ import annotations

from keras_pvt.convert.registry import Task


def class_names(config: dict | None, num_classes: int) -> list[str] | None:
    """Class labels from a transformers config's `id2label`, if complete."""
    id2label = (config or {}).get("id2label")
    if not isinstance(id2label, dict) or len(id2label) != num_classes:
        return None
    names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
    return None if any(name is None for name in names) else [str(name) for name in names]


def classifier_task(model_cls: type, preprocessor_cls: type, head_rows: dict) -> Task:
    """A family's classifier: `predictions` (and any head norm) in `head_rows` per layout."""

    def build(backbone, preprocessor, state_dict, table, config):
        num_classes = int(table.tensor(state_dict, "predictions/kernel").shape[0])
        return model_cls(
            backbone=backbone, num_classes=num_classes, preprocessor=preprocessor,
            class_names=class_names(config, num_classes),
        )

    return Task("classifier", model_cls, preprocessor_cls, head_rows,
                marker="predictions/kernel", build=build)
