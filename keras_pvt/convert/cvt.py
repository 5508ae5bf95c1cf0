"""CvT: the key table for transformers (`CvtModel` / `CvtForImageClassification`), config
translation, presets and the family's registration.

Keras names (left) follow transformers' modules, so each row reads as a module name.
"""

from __future__ import annotations

from keras_pvt.catalog import FAMILY_PRESETS
from keras_pvt.convert.classification import classifier_task
from keras_pvt.convert.depth import depth_estimator_task
from keras_pvt.convert.registry import Family, register, stage_sizes
from keras_pvt.convert.segmentation import segmenter_task
from keras_pvt.models.cvt import (
    CvTBackbone,
    CvTClassifier,
    CvTGLPNDepthEstimator,
    CvTImageClassifierPreprocessor,
    CvTSegFormerSegmenter,
)
from keras_pvt.tasks import GLPNDepthEstimatorPreprocessor, SegFormerSegmenterPreprocessor

BACKBONE_PREFIXES = ("cvt.",)  # transformers' classification model wraps CvtModel

_STAGE = "encoder.stages.{s}"
_LAYER = "encoder.stages.{s}.layers.{b}"
_PROJECTION = "attention.attention.convolution_projection_{p}.convolution_projection"

BACKBONE_ROWS = {
    "transformers": {
        "stage{s}_embedding.proj": f"{_STAGE}.embedding.convolution_embeddings.projection",
        "stage{s}_embedding.layer_norm":
            f"{_STAGE}.embedding.convolution_embeddings.normalization",
        "stage{s}_cls_token.cls_token": f"{_STAGE}.cls_token",
        "stage{s}_layer{b}.layernorm_before": f"{_LAYER}.layernorm_before",
        **{
            f"stage{{s}}_layer{{b}}.attention.convolution_projection_{p}.{part}":
                f"{_LAYER}.{_PROJECTION.format(p=p)}.{part}"
            for p in ("query", "key", "value")
            for part in ("convolution", "normalization")
        },
        **{
            f"stage{{s}}_layer{{b}}.attention.projection_{p}":
                f"{_LAYER}.attention.attention.projection_{p}"
            for p in ("query", "key", "value")
        },
        "stage{s}_layer{b}.attention.output_dense": f"{_LAYER}.attention.output.dense",
        "stage{s}_layer{b}.layernorm_after": f"{_LAYER}.layernorm_after",
        "stage{s}_layer{b}.mlp.dense1": f"{_LAYER}.intermediate.dense",
        "stage{s}_layer{b}.mlp.dense2": f"{_LAYER}.output.dense",
    },
}
CLASSIFIER_HEADS = {"transformers": {"layernorm": "layernorm", "predictions": "classifier"}}

# CvT-13/21/W24 settings that are not visible in the weight shapes: (first stage, others).
_DEFAULTS = {
    "patch_strides": (4, 2),
    "patch_paddings": (2, 1),
    "stride_q": (1, 1),
    "padding_kv": (1, 1),
    "stride_kv": (2, 2),
}
HEAD_DIM = 64  # every published CvT uses 64 channels per head


def detect_layout(state_dict: dict) -> str | None:
    """Which CvT checkpoint layout the keys are in, or None if not CvT."""
    if any(k.startswith("encoder.stages.0.embedding.convolution_embeddings.") for k in state_dict):
        return "transformers"
    return None


def backbone_kwargs_from_transformers(config: dict) -> dict:
    """`CvTBackbone` arguments equal to a transformers `CvtConfig`.

    `layer_norm_eps` is not read: transformers' CvT builds its LayerNorms with torch's
    default 1e-5 whatever the config says (1e-12 by default).
    """
    defaults = {
        "embed_dim": [64, 192, 384], "depth": [1, 2, 10], "num_heads": [1, 3, 6],
        "mlp_ratio": [4.0, 4.0, 4.0], "patch_sizes": [7, 3, 3], "patch_stride": [4, 2, 2],
        "patch_padding": [2, 1, 1], "qkv_projection_method": ["dw_bn"] * 3,
        "kernel_qkv": [3, 3, 3], "padding_q": [1, 1, 1], "stride_q": [1, 1, 1],
        "padding_kv": [1, 1, 1], "stride_kv": [2, 2, 2], "qkv_bias": [True] * 3,
        "cls_token": [False, False, True], "drop_path_rate": [0.0, 0.0, 0.1],
        "attention_drop_rate": [0.0] * 3, "drop_rate": [0.0] * 3,
    }

    def get(name):
        value = config.get(name, defaults[name])
        return list(value) if isinstance(value, (list, tuple)) else value

    return {
        "hidden_sizes": get("embed_dim"),
        "depths": get("depth"),
        "num_heads": get("num_heads"),
        "mlp_ratios": get("mlp_ratio"),
        "patch_sizes": get("patch_sizes"),
        "patch_strides": get("patch_stride"),
        "patch_paddings": get("patch_padding"),
        "qkv_projection_methods": get("qkv_projection_method"),
        "kernel_qkv": get("kernel_qkv"),
        "padding_q": get("padding_q"),
        "stride_q": get("stride_q"),
        "padding_kv": get("padding_kv"),
        "stride_kv": get("stride_kv"),
        "qkv_bias": get("qkv_bias"),
        "cls_token": get("cls_token"),
        "drop_path_rate": get("drop_path_rate"),
        "attention_dropout": get("attention_drop_rate"),
        "hidden_dropout": get("drop_rate"),
        "initializer_range": config.get("initializer_range", 0.02),
        "image_shape": (None, None, config.get("num_channels", 3)),
    }


def backbone_kwargs_from_weights(state_dict: dict, layout: str) -> dict:
    """`CvTBackbone` arguments read off a transformers state dict without its config.json.

    Strides and paddings are not visible in the shapes and take the CvT defaults (embedding
    strides 4, 2, 2; keys/values strided by 2); heads are `channels / 64`, as in every
    published CvT. Average-pooling and linear projections (no weights) are not told apart:
    stages without projection weights are read as `"avg"`.
    """
    table = FAMILY.table(layout)
    sizes = _sizes_from_weights(table, state_dict)
    num_stages = len(sizes["hidden_sizes"])
    kwargs = {name: sizes[name] for name in ("hidden_sizes", "depths", "mlp_ratios",
                                             "patch_sizes")}
    kwargs["qkv_projection_methods"] = ["avg" if k is None else "dw_bn"
                                        for k in sizes["kernel_qkv"]]
    kwargs["kernel_qkv"] = [3 if k is None else k for k in sizes["kernel_qkv"]]
    kwargs["qkv_bias"], kwargs["cls_token"], kwargs["num_heads"] = [], [], []
    for s, hidden in enumerate(kwargs["hidden_sizes"]):
        bias = table.tensor(state_dict, f"stage{s}_layer0/attention/projection_query/bias")
        kwargs["qkv_bias"].append(bias is not None)
        kwargs["cls_token"].append(
            table.tensor(state_dict, f"stage{s}_cls_token/cls_token") is not None)
        if hidden % HEAD_DIM:
            raise ValueError(
                f"A CvT checkpoint without config.json is read with {HEAD_DIM} channels per "
                f"head, but stage {s} has {hidden} channels. Add the checkpoint's config.json "
                "or build CvTBackbone with the right `num_heads` and load the weights into it."
            )
        kwargs["num_heads"].append(hidden // HEAD_DIM)
    for name, (first, others) in _DEFAULTS.items():
        kwargs[name] = [first] + [others] * (num_stages - 1)
    kwargs["padding_q"] = [(k - 1) // 2 for k in kwargs["kernel_qkv"]]
    return kwargs


def _sizes_from_weights(table, state_dict: dict) -> dict:
    """The sizes of a CvT backbone that its weights' shapes show (`kernel_qkv` is None for
    stages without convolutional projections)."""
    sizes = stage_sizes(table, state_dict, "stage{s}_embedding", "stage{s}_layer{b}",
                        "layernorm_before", "CvT")
    sizes["kernel_qkv"] = []
    for s in range(len(sizes["hidden_sizes"])):
        conv = table.tensor(
            state_dict, f"stage{s}_layer0/attention/convolution_projection_key/convolution/kernel")
        sizes["kernel_qkv"].append(int(conv.shape[-1]) if conv is not None else None)
    return sizes


def sizes_against_weights(kwargs: dict, state_dict: dict, layout: str) -> dict:
    """`{argument: (from config.json, from the weights)}` for the sizes both show."""
    found = _sizes_from_weights(FAMILY.table(layout), state_dict)
    declared = dict(kwargs)
    # Stages without convolutional projections have no kernel to compare.
    kernels = declared.get("kernel_qkv")
    if isinstance(kernels, list) and len(kernels) == len(found["kernel_qkv"]):
        declared["kernel_qkv"] = [None if f is None else k
                                  for k, f in zip(kernels, found["kernel_qkv"])]
    return {name: (declared.get(name), value) for name, value in found.items()}


def image_converter_kwargs(preprocessor_config: dict) -> dict:
    """`CvTImageConverter` arguments from a `ConvNextImageProcessor` preprocessor_config.json
    (`size` as an int, `{"shortest_edge": n}` or `{"height": h, "width": w}`, and
    `crop_pct`)."""
    kwargs = {}
    size = preprocessor_config.get("size")
    if isinstance(size, dict) and "shortest_edge" in size:
        kwargs["image_size"] = (size["shortest_edge"], size["shortest_edge"])
    if "crop_pct" in preprocessor_config:
        kwargs["crop_pct"] = preprocessor_config["crop_pct"]
    return kwargs


PRESETS = FAMILY_PRESETS["cvt"]

FAMILY = register(Family(
    name="cvt",
    backbone_cls=CvTBackbone,
    preprocessor_cls=CvTImageClassifierPreprocessor,
    model_types=("cvt",),
    timm_prefixes=(),  # timm has no CvT
    backbone_rows=BACKBONE_ROWS,
    backbone_prefixes=BACKBONE_PREFIXES,
    detect_layout=detect_layout,
    kwargs_from_transformers=backbone_kwargs_from_transformers,
    kwargs_from_weights=backbone_kwargs_from_weights,
    sizes_against_weights=sizes_against_weights,
    tasks=[
        classifier_task(CvTClassifier, CvTImageClassifierPreprocessor, CLASSIFIER_HEADS),
        segmenter_task(CvTSegFormerSegmenter, SegFormerSegmenterPreprocessor, {}),
        depth_estimator_task(CvTGLPNDepthEstimator, GLPNDepthEstimatorPreprocessor, {}),
    ],
    presets=PRESETS,
    image_converter_kwargs=image_converter_kwargs,
))
