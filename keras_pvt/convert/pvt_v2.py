"""PVT v2: key tables for transformers, timm and the original repository, config
translation, presets and the family's registration.

Keras names (left) follow transformers' modules; each source is one table.
"""

from __future__ import annotations

from keras_pvt.catalog import FAMILY_PRESETS
from keras_pvt.checkpoints.keymap import fused, prefixed
from keras_pvt.convert import glpn, segformer
from keras_pvt.convert.classification import classifier_task
from keras_pvt.convert.depth import depth_estimator_task
from keras_pvt.convert.registry import Family, register, stage_sizes
from keras_pvt.convert.segmentation import segmenter_task
from keras_pvt.models.pvt_v2 import (
    PVTv2Backbone,
    PVTv2Classifier,
    PVTv2GLPNDepthEstimator,
    PVTv2ImageClassifierPreprocessor,
    PVTv2SegFormerSegmenter,
)
from keras_pvt.tasks import GLPNDepthEstimatorPreprocessor, SegFormerSegmenterPreprocessor

# transformers' task models wrap PvtV2Model / SegformerModel / GLPNModel
BACKBONE_PREFIXES = ("pvt_v2.", segformer.BACKBONE_PREFIX, glpn.BACKBONE_PREFIX)

_TRANSFORMERS_BLOCK = {
    "layer_norm_1": "layer_norm_1",
    "attention.query": "attention.query",
    "attention.key": "attention.key",
    "attention.value": "attention.value",
    "attention.proj": "attention.proj",
    "attention.spatial_reduction": "attention.spatial_reduction",
    "attention.layer_norm": "attention.layer_norm",
    "layer_norm_2": "layer_norm_2",
    "mlp.dense1": "mlp.dense1",
    "mlp.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.dense2",
}
TIMM_BLOCK = {
    "layer_norm_1": "norm1",
    "attention.query": "attn.q",
    "attention.key": fused("attn.kv", 0, 2),
    "attention.value": fused("attn.kv", 1, 2),
    "attention.proj": "attn.proj",
    "attention.spatial_reduction": "attn.sr",
    "attention.layer_norm": "attn.norm",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv": "mlp.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_ORIGINAL_BLOCK = {**TIMM_BLOCK, "mlp.dwconv": "mlp.dwconv.dwconv"}


BACKBONE_ROWS = {
    "transformers": {
        "stage{s}_patch_embedding.proj": "encoder.layers.{s}.patch_embedding.proj",
        "stage{s}_patch_embedding.layer_norm": "encoder.layers.{s}.patch_embedding.layer_norm",
        **prefixed("stage{s}_block{b}", "encoder.layers.{s}.blocks.{b}", _TRANSFORMERS_BLOCK),
        "stage{s}_layer_norm": "encoder.layers.{s}.layer_norm",
    },
    "timm": {
        "stage0_patch_embedding.proj": "patch_embed.proj",
        "stage0_patch_embedding.layer_norm": "patch_embed.norm",
        "stage{s}_patch_embedding.proj": "stages.{s}.downsample.proj",
        "stage{s}_patch_embedding.layer_norm": "stages.{s}.downsample.norm",
        **prefixed("stage{s}_block{b}", "stages.{s}.blocks.{b}", TIMM_BLOCK),
        "stage{s}_layer_norm": "stages.{s}.norm",
    },
    "original": {
        "stage{s}_patch_embedding.proj": "patch_embed{s1}.proj",
        "stage{s}_patch_embedding.layer_norm": "patch_embed{s1}.norm",
        **prefixed("stage{s}_block{b}", "block{s1}.{b}", _ORIGINAL_BLOCK),
        "stage{s}_layer_norm": "norm{s1}",
    },
    "segformer": segformer.BACKBONE_ROWS,
}
CLASSIFIER_HEADS = {
    "transformers": {"predictions": "classifier"},
    "timm": {"predictions": "head"},
    "original": {"predictions": "head"},
    "segformer": segformer.CLASSIFIER_HEAD,
}

# The original and timm models use 1e-5 (nn.LayerNorm's default) in the patch embedding and
# spatial-reduction norms; transformers converted them with 1e-6 everywhere.
_REFERENCE_EPSILONS = {"patch_norm_epsilon": 1e-5, "reduction_norm_epsilon": 1e-5}


def detect_layout(state_dict: dict) -> str | None:
    """Which PVT v2 checkpoint layout the keys are in, or None if not PVT v2."""
    keys = state_dict.keys()
    if any(k.startswith("encoder.layers.0.patch_embedding.") for k in keys):
        return "transformers"
    if segformer.is_segformer(state_dict):
        return "segformer"
    if "patch_embed.proj.weight" in keys and any(".blocks.0.mlp.dwconv." in k for k in keys):
        return "timm"
    if "patch_embed1.proj.weight" in keys and any(".mlp.dwconv.dwconv." in k for k in keys):
        if any(k.startswith("pos_embed") or k == "cls_token" for k in keys):
            return None  # PVT v1
        return "original"
    return None


def sra_kwargs_from_transformers(config: dict, family: str) -> dict:
    """The backbone arguments that PVT v1 and v2 read alike from a transformers config."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act={act!r} is not supported; {family} uses exact GELU.")
    eps = config.get("layer_norm_eps", 1e-6)
    return {
        "num_heads": config.get("num_attention_heads", [1, 2, 5, 8]),
        "mlp_ratios": config.get("mlp_ratios", [8, 8, 4, 4]),
        "qkv_bias": config.get("qkv_bias", True),
        "drop_path_rate": config.get("drop_path_rate", 0.0),
        "attention_dropout": config.get("attention_probs_dropout_prob", 0.0),
        "hidden_dropout": config.get("hidden_dropout_prob", 0.0),
        "layer_norm_epsilon": eps,
        "patch_norm_epsilon": eps,
        "reduction_norm_epsilon": eps,
        "image_shape": (None, None, config.get("num_channels", 3)),
    }


def standard_heads(hidden_sizes: list, layout: str, family: str, backbone: str) -> list:
    """Heads (1, 2, 5, 8), which every published PVT uses (not visible in the weights)."""
    num_heads = [1, 2, 5, 8][: len(hidden_sizes)]
    if any(size % heads for size, heads in zip(hidden_sizes, num_heads)):
        raise ValueError(
            f"A {layout} checkpoint without config.json is read as a standard {family} with "
            f"heads {num_heads}, but its hidden sizes {hidden_sizes} do not divide by them. "
            f"Build {backbone} with the right `num_heads` and load the weights into it."
        )
    return num_heads


def backbone_kwargs_from_transformers(config: dict) -> dict:
    """`PVTv2Backbone` arguments equal to a transformers `PvtV2Config`, `SegformerConfig` or
    `GLPNConfig` (the same encoder; SegFormer's and GLPN's MLP ratio is 4 and their
    LayerNorms use eps 1e-5)."""
    is_segformer = config.get("model_type") in ("segformer", "glpn")
    kwargs = {
        **sra_kwargs_from_transformers(config, "SegFormer" if is_segformer else "PVT v2"),
        "hidden_sizes": config.get("hidden_sizes", [32, 64, 160, 256]),
        "depths": config.get("depths", [2, 2, 2, 2]),
        "sr_ratios": config.get("sr_ratios", [8, 4, 2, 1]),
        "patch_sizes": config.get("patch_sizes", [7, 3, 3, 3]),
        "strides": config.get("strides", [4, 2, 2, 2]),
        "linear_attention": config.get("linear_attention", False),
    }
    if is_segformer:
        kwargs.update(mlp_ratios=config.get("mlp_ratios", [4, 4, 4, 4]), **segformer.EPSILONS)
    return kwargs


def sra_sizes_from_weights(table, state_dict: dict, family: str) -> dict:
    """The sizes of a PVT v1 / v2 backbone that its weights' shapes show: stage widths,
    patch kernels, depths, MLP ratios, reduction kernels and input channels."""
    sizes = stage_sizes(table, state_dict, "stage{s}_patch_embedding", "stage{s}_block{b}",
                        "layer_norm_1", family)
    sizes["mlp_ratios"] = [int(r) if r == int(r) else r for r in sizes["mlp_ratios"]]
    sizes["sr_ratios"] = []
    for s in range(len(sizes["hidden_sizes"])):
        sr = table.tensor(state_dict, f"stage{s}_block0/attention/spatial_reduction/kernel")
        sizes["sr_ratios"].append(int(sr.shape[-1]) if sr is not None else 1)
    return sizes


def sra_kwargs_from_weights(table, state_dict: dict, layout: str, family: str,
                            backbone: str) -> dict:
    """The backbone arguments that PVT v1 and v2 read alike off a state dict's shapes: stage
    widths, patch kernels, depths, MLP ratios, reduction kernels; standard heads."""
    kwargs = sra_sizes_from_weights(table, state_dict, family)
    del kwargs["image_shape"]  # (3 channels, the default)
    kwargs["num_heads"] = standard_heads(kwargs["hidden_sizes"], layout, family, backbone)
    return kwargs


def sizes_against_weights(kwargs: dict, state_dict: dict, layout: str) -> dict:
    """`{argument: (from config.json, from the weights)}` for the sizes both show."""
    found = sra_sizes_from_weights(FAMILY.table(layout), state_dict, "PVT v2")
    if kwargs.get("linear_attention"):
        del found["sr_ratios"]  # a 1x1 reduction; the config keeps the pooling ratios
    return {name: (kwargs.get(name), value) for name, value in found.items()}


def backbone_kwargs_from_weights(state_dict: dict, layout: str) -> dict:
    """`PVTv2Backbone` arguments read off a timm / original state dict's shapes.

    Heads, strides and reduction ratios are not visible in the shapes; every published
    PVT v2 uses heads (1, 2, 5, 8) and strides (4, 2, 2, 2).
    """
    table = FAMILY.table(layout)
    kwargs = sra_kwargs_from_weights(table, state_dict, layout, "PVT v2", "PVTv2Backbone")
    num_stages = len(kwargs["depths"])
    # Linear SRA reduces with a 1x1 convolution; its config keeps the published ratios.
    reduction = table.tensor(state_dict, "stage0_block0/attention/spatial_reduction/kernel")
    linear = reduction is not None and reduction.shape[-1] == 1
    if linear:
        kwargs["sr_ratios"] = [8, 4, 2, 1][:num_stages]
    return {
        **kwargs,
        "strides": [4, 2, 2, 2][:num_stages],
        "linear_attention": linear,
        **(segformer.EPSILONS if layout == "segformer" else _REFERENCE_EPSILONS),
    }


PRESETS = FAMILY_PRESETS["pvt_v2"]

FAMILY = register(Family(
    name="pvt_v2",
    backbone_cls=PVTv2Backbone,
    preprocessor_cls=PVTv2ImageClassifierPreprocessor,
    model_types=("pvt_v2", "segformer", "glpn"),
    timm_prefixes=("pvt_v2_",),
    backbone_rows=BACKBONE_ROWS,
    backbone_prefixes=BACKBONE_PREFIXES,
    detect_layout=detect_layout,
    kwargs_from_transformers=backbone_kwargs_from_transformers,
    kwargs_from_weights=backbone_kwargs_from_weights,
    sizes_against_weights=sizes_against_weights,
    tasks=[
        classifier_task(PVTv2Classifier, PVTv2ImageClassifierPreprocessor, CLASSIFIER_HEADS),
        segmenter_task(PVTv2SegFormerSegmenter, SegFormerSegmenterPreprocessor,
                       {"segformer": segformer.SEGMENTER_HEAD}),
        depth_estimator_task(PVTv2GLPNDepthEstimator, GLPNDepthEstimatorPreprocessor,
                             {"segformer": glpn.DEPTH_HEAD}),
    ],
    presets=PRESETS,
))
