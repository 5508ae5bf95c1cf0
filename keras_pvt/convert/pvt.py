"""PVT v1: key tables for transformers and the original repository (whai362/PVT), config
translation, presets and the family's registration.

Keras names (left) follow transformers' modules; each source is one table. timm has no
PVT v1.
"""

from __future__ import annotations

import math

from keras_pvt.catalog import FAMILY_PRESETS
from keras_pvt.checkpoints.keymap import prefixed
from keras_pvt.convert.classification import classifier_task
from keras_pvt.convert.depth import depth_estimator_task
from keras_pvt.convert.pvt_v2 import (
    TIMM_BLOCK,
    sra_kwargs_from_transformers,
    sra_kwargs_from_weights,
    sra_sizes_from_weights,
)
from keras_pvt.convert.registry import Family, register
from keras_pvt.convert.segmentation import segmenter_task
from keras_pvt.models.pvt import (
    PVTBackbone,
    PVTClassifier,
    PVTGLPNDepthEstimator,
    PVTImageClassifierPreprocessor,
    PVTSegFormerSegmenter,
)
from keras_pvt.models.pvt.backbone import position_grid_sizes
from keras_pvt.tasks import GLPNDepthEstimatorPreprocessor, SegFormerSegmenterPreprocessor

BACKBONE_PREFIXES = ("pvt.",)  # transformers' classification model wraps PvtModel

_TRANSFORMERS_BLOCK = {
    "layer_norm_1": "layer_norm_1",
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention.proj": "attention.output.dense",
    "attention.spatial_reduction": "attention.self.sequence_reduction",
    "attention.layer_norm": "attention.self.layer_norm",
    "layer_norm_2": "layer_norm_2",
    "mlp.dense1": "mlp.dense1",
    "mlp.dense2": "mlp.dense2",
}
# The original repository's block: as PVT v2's timm block (same authors), without Mix-FFN.
_ORIGINAL_BLOCK = {k: v for k, v in TIMM_BLOCK.items() if k != "mlp.dwconv"}


_HF_EMBEDDINGS = "encoder.patch_embeddings.{s}"  # patch + position embeddings + class token
BACKBONE_ROWS = {
    "transformers": {
        "stage{s}_patch_embedding.proj": f"{_HF_EMBEDDINGS}.projection",
        "stage{s}_patch_embedding.layer_norm": f"{_HF_EMBEDDINGS}.layer_norm",
        "stage{s}_position_embedding.embeddings": f"{_HF_EMBEDDINGS}.position_embeddings",
        "stage{s}_position_embedding.cls_token": f"{_HF_EMBEDDINGS}.cls_token",
        **prefixed("stage{s}_block{b}", "encoder.block.{s}.{b}", _TRANSFORMERS_BLOCK),
        "layer_norm": "encoder.layer_norm",
    },
    "original": {
        "stage{s}_patch_embedding.proj": "patch_embed{s1}.proj",
        "stage{s}_patch_embedding.layer_norm": "patch_embed{s1}.norm",
        "stage{s}_position_embedding.embeddings": "pos_embed{s1}",
        "stage{s}_position_embedding.cls_token": "cls_token",
        **prefixed("stage{s}_block{b}", "block{s1}.{b}", _ORIGINAL_BLOCK),
        "layer_norm": "norm",
    },
}
CLASSIFIER_HEADS = {
    "transformers": {"predictions": "classifier"},
    "original": {"predictions": "head"},
}

# The original model uses 1e-5 (nn.LayerNorm's default) in the patch-embedding and
# spatial-reduction norms and 1e-6 elsewhere; transformers converted it with 1e-6 everywhere.
_ORIGINAL_EPSILONS = {"patch_norm_epsilon": 1e-5, "reduction_norm_epsilon": 1e-5}


def detect_layout(state_dict: dict) -> str | None:
    """Which PVT v1 checkpoint layout the keys are in, or None if not PVT v1."""
    keys = state_dict.keys()
    if "encoder.patch_embeddings.0.projection.weight" in keys and any(
        k.startswith("encoder.patch_embeddings.0.position_embeddings") for k in keys
    ):
        return "transformers"
    # PVT v2's original checkpoints share `patch_embed1.proj` and `block1.0.attn.kv` but
    # have no position embeddings or class token (and a depthwise conv in the MLP).
    if "patch_embed1.proj.weight" in keys and "pos_embed1" in keys and "cls_token" in keys:
        return "original"
    return None


def backbone_kwargs_from_transformers(config: dict) -> dict:
    """`PVTBackbone` arguments equal to a transformers `PvtConfig`.

    transformers' patch embedding is `Conv2d(kernel_size=strides[i], stride=patch_sizes[i])`
    (the names are swapped relative to the convolution's); the mapping below reproduces that
    convolution. Every published config has `patch_sizes == strides`.
    """
    num_stages = config.get("num_encoder_blocks", 4)
    depths = list(config.get("depths", [2, 2, 2, 2]))
    if len(depths) != num_stages:
        raise ValueError(
            f"num_encoder_blocks={num_stages} does not match depths={depths} in the config."
        )
    image_size = config.get("image_size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return {
        **sra_kwargs_from_transformers(config, "PVT"),
        "hidden_sizes": config.get("hidden_sizes", [64, 128, 320, 512]),
        "depths": depths,
        "sr_ratios": config.get("sequence_reduction_ratios", [8, 4, 2, 1]),
        "patch_sizes": config.get("strides", [4, 2, 2, 2]),
        "strides": config.get("patch_sizes", [4, 2, 2, 2]),
        "position_embedding_shape": tuple(image_size),
    }


def backbone_kwargs_from_weights(state_dict: dict, layout: str) -> dict:
    """`PVTBackbone` arguments read off a state dict's shapes (no config.json).

    Heads are not visible in the shapes: every published PVT v1 uses (1, 2, 5, 8).
    Strides are taken equal to the patch-embedding kernels (non-overlapping patches), and the
    pretraining size is read from the first stage's (square) position-embedding grid.
    """
    table = FAMILY.table(layout)
    kwargs = sra_kwargs_from_weights(table, state_dict, layout, "PVT v1", "PVTBackbone")

    def weight(path: str):
        return table.tensor(state_dict, path)

    tokens = int(weight("stage0_position_embedding/embeddings").shape[1])
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(
            f"The first stage's position embeddings hold {tokens} positions, not a square grid; "
            "build PVTBackbone with the right `position_embedding_shape` and load the weights "
            "into it."
        )
    return {
        **kwargs,
        "strides": kwargs["patch_sizes"],
        "position_embedding_shape": (grid * kwargs["patch_sizes"][0],) * 2,
        "qkv_bias": weight("stage0_block0/attention/query/bias") is not None,
        **(_ORIGINAL_EPSILONS if layout == "original" else {}),
    }


def sizes_against_weights(kwargs: dict, state_dict: dict, layout: str) -> dict:
    """`{argument: (from config.json, from the weights)}` for the sizes both show; the
    position embeddings by their first stage's number of positions."""
    table = FAMILY.table(layout)
    found = sra_sizes_from_weights(table, state_dict, "PVT v1")
    pairs = {name: (kwargs.get(name), value) for name, value in found.items()}
    grid = position_grid_sizes(kwargs["position_embedding_shape"], kwargs["strides"])[0]
    tokens = table.tensor(state_dict, "stage0_position_embedding/embeddings").shape[1]
    pairs["stage-0 positions (position_embedding_shape / strides[0])"] = (
        math.prod(grid), int(tokens))
    return pairs


PRESETS = FAMILY_PRESETS["pvt"]

FAMILY = register(Family(
    name="pvt",
    backbone_cls=PVTBackbone,
    preprocessor_cls=PVTImageClassifierPreprocessor,
    model_types=("pvt",),
    timm_prefixes=(),
    backbone_rows=BACKBONE_ROWS,
    backbone_prefixes=BACKBONE_PREFIXES,
    detect_layout=detect_layout,
    kwargs_from_transformers=backbone_kwargs_from_transformers,
    kwargs_from_weights=backbone_kwargs_from_weights,
    sizes_against_weights=sizes_against_weights,
    tasks=[
        classifier_task(PVTClassifier, PVTImageClassifierPreprocessor, CLASSIFIER_HEADS),
        segmenter_task(PVTSegFormerSegmenter, SegFormerSegmenterPreprocessor, {}),
        depth_estimator_task(PVTGLPNDepthEstimator, GLPNDepthEstimatorPreprocessor, {}),
    ],
    presets=PRESETS,
))
