"""The depth-estimation task (GLPN's decoder and head) as conversion sees it."""

from __future__ import annotations

from keras_pvt.convert import glpn
from keras_pvt.convert.registry import Task


def depth_estimator_task(model_cls: type, preprocessor_cls: type, head_rows: dict) -> Task:
    """A family's GLPN depth estimator: the decoder stages and head in `head_rows` per
    layout (none for families without checkpoints)."""

    def build(backbone, preprocessor, state_dict, table, config):
        head = table.tensor(state_dict, "head_convolution1/kernel")
        return model_cls(
            backbone=backbone,
            preprocessor=preprocessor,
            decoder_hidden_size=int(head.shape[0]),
            **glpn.depth_estimator_kwargs(config or {}),
        )

    return Task("depth_estimator", model_cls, preprocessor_cls, head_rows,
                marker="head_convolution2/kernel", build=build,
                image_converter_kwargs=glpn.image_converter_kwargs)
