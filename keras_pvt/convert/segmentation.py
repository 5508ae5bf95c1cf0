"""The semantic-segmentation task (SegFormer's decoder) as conversion sees it."""

from __future__ import annotations

from keras_pvt.convert.classification import class_names
from keras_pvt.convert.registry import Task


def segmenter_preprocessor_kwargs(config: dict) -> dict:
    """`SegFormerSegmenterPreprocessor` arguments from a `SegformerImageProcessor` config."""
    reduce = config.get("do_reduce_labels", config.get("reduce_labels", False))
    return {"reduce_labels": bool(reduce)}


def segmenter_task(model_cls: type, preprocessor_cls: type, head_rows: dict) -> Task:
    """A family's SegFormer segmenter: `linear_c{i}`, `linear_fuse`, `batch_norm` and
    `classifier` in `head_rows` per layout (none for families without checkpoints)."""

    def build(backbone, preprocessor, state_dict, table, config):
        classifier = table.tensor(state_dict, "classifier/kernel")
        fuse = table.tensor(state_dict, "linear_fuse/kernel")
        num_classes = int(classifier.shape[0])
        return model_cls(
            backbone=backbone,
            num_classes=num_classes,
            preprocessor=preprocessor,
            decoder_hidden_size=int(fuse.shape[0]),
            dropout=float((config or {}).get("classifier_dropout_prob", 0.1)),
            class_names=class_names(config, num_classes),
            ignore_index=int((config or {}).get("semantic_loss_ignore_index", 255)),
        )

    return Task("segmenter", model_cls, preprocessor_cls, head_rows,
                marker="linear_fuse/kernel", build=build,
                preprocessor_kwargs=segmenter_preprocessor_kwargs)
