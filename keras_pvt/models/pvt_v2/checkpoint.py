"""PVT v2 checkpoints: key tables for transformers, timm and the original repository.

Keras names (left) follow transformers' modules; each source is one table.
"""

from __future__ import annotations

from keras_pvt.checkpoints.keymap import Fused, KeyTable, fused

BACKBONE_PREFIXES = ("pvt_v2.",)  # transformers' classification model wraps PvtV2Model

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
_TIMM_BLOCK = {
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
_ORIGINAL_BLOCK = {**_TIMM_BLOCK, "mlp.dwconv": "mlp.dwconv.dwconv"}


def _prefixed(keras_prefix: str, source_prefix: str, rows: dict) -> dict:
    out = {}
    for keras_name, source in rows.items():
        if isinstance(source, Fused):
            source = fused(f"{source_prefix}.{source.key}", source.index, source.parts)
        else:
            source = f"{source_prefix}.{source}"
        out[f"{keras_prefix}.{keras_name}"] = source
    return out


TRANSFORMERS = KeyTable(
    {
        "stage{s}_patch_embedding.proj": "encoder.layers.{s}.patch_embedding.proj",
        "stage{s}_patch_embedding.layer_norm": "encoder.layers.{s}.patch_embedding.layer_norm",
        **_prefixed("stage{s}_block{b}", "encoder.layers.{s}.blocks.{b}", _TRANSFORMERS_BLOCK),
        "stage{s}_layer_norm": "encoder.layers.{s}.layer_norm",
        "predictions": "classifier",
    }
)
TIMM = KeyTable(
    {
        "stage0_patch_embedding.proj": "patch_embed.proj",
        "stage0_patch_embedding.layer_norm": "patch_embed.norm",
        "stage{s}_patch_embedding.proj": "stages.{s}.downsample.proj",
        "stage{s}_patch_embedding.layer_norm": "stages.{s}.downsample.norm",
        **_prefixed("stage{s}_block{b}", "stages.{s}.blocks.{b}", _TIMM_BLOCK),
        "stage{s}_layer_norm": "stages.{s}.norm",
        "predictions": "head",
    }
)
ORIGINAL = KeyTable(
    {
        "stage{s}_patch_embedding.proj": "patch_embed{s1}.proj",
        "stage{s}_patch_embedding.layer_norm": "patch_embed{s1}.norm",
        **_prefixed("stage{s}_block{b}", "block{s1}.{b}", _ORIGINAL_BLOCK),
        "stage{s}_layer_norm": "norm{s1}",
        "predictions": "head",
    }
)
TABLES = {"transformers": TRANSFORMERS, "timm": TIMM, "original": ORIGINAL}
HEAD_KEYS = {"transformers": ("classifier.",), "timm": ("head.",), "original": ("head.",)}

# The original and timm models use 1e-5 (nn.LayerNorm's default) in the patch embedding and
# spatial-reduction norms; transformers converted them with 1e-6 everywhere.
_REFERENCE_EPSILONS = {"patch_norm_epsilon": 1e-5, "reduction_norm_epsilon": 1e-5}


def detect_layout(state_dict: dict) -> str | None:
    """Which PVT v2 checkpoint layout the keys are in, or None if not PVT v2."""
    keys = state_dict.keys()
    if any(k.startswith("encoder.layers.0.patch_embedding.") for k in keys):
        return "transformers"
    if "patch_embed.proj.weight" in keys and any(".blocks.0.mlp.dwconv." in k for k in keys):
        return "timm"
    if "patch_embed1.proj.weight" in keys and any(".mlp.dwconv.dwconv." in k for k in keys):
        if any(k.startswith("pos_embed") or k == "cls_token" for k in keys):
            return None  # PVT v1
        return "original"
    return None


def backbone_kwargs_from_transformers(config: dict) -> dict:
    """`PVTv2Backbone` arguments equal to a transformers `PvtV2Config`."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act={act!r} is not supported; PVT v2 uses exact GELU.")
    eps = config.get("layer_norm_eps", 1e-6)
    return {
        "hidden_sizes": config.get("hidden_sizes", [32, 64, 160, 256]),
        "depths": config.get("depths", [2, 2, 2, 2]),
        "num_heads": config.get("num_attention_heads", [1, 2, 5, 8]),
        "mlp_ratios": config.get("mlp_ratios", [8, 8, 4, 4]),
        "sr_ratios": config.get("sr_ratios", [8, 4, 2, 1]),
        "patch_sizes": config.get("patch_sizes", [7, 3, 3, 3]),
        "strides": config.get("strides", [4, 2, 2, 2]),
        "linear_attention": config.get("linear_attention", False),
        "qkv_bias": config.get("qkv_bias", True),
        "drop_path_rate": config.get("drop_path_rate", 0.0),
        "attention_dropout": config.get("attention_probs_dropout_prob", 0.0),
        "hidden_dropout": config.get("hidden_dropout_prob", 0.0),
        "layer_norm_epsilon": eps,
        "patch_norm_epsilon": eps,
        "reduction_norm_epsilon": eps,
        "image_shape": (None, None, config.get("num_channels", 3)),
    }


def backbone_kwargs_from_weights(state_dict: dict, layout: str) -> dict:
    """`PVTv2Backbone` arguments read off a timm / original state dict's shapes.

    Heads, strides and reduction ratios are not visible in the shapes; every published
    PVT v2 uses heads (1, 2, 5, 8) and strides (4, 2, 2, 2).
    """
    table = TABLES[layout]
    num_stages = 0
    while table.source_key(f"stage{num_stages}_patch_embedding/proj/kernel") in state_dict:
        num_stages += 1
    if num_stages == 0:
        raise ValueError("No PVT v2 patch embedding found in the checkpoint.")
    hidden_sizes, patch_sizes, depths, mlp_ratios, sr_ratios = [], [], [], [], []
    linear = table.source_key("stage0_block0/attention/spatial_reduction/kernel")
    linear = state_dict[linear].shape[-1] == 1 if linear in state_dict else False
    for s in range(num_stages):
        proj = state_dict[table.source_key(f"stage{s}_patch_embedding/proj/kernel")]
        hidden_sizes.append(int(proj.shape[0]))
        patch_sizes.append(int(proj.shape[-1]))
        depth = 0
        while table.source_key(f"stage{s}_block{depth}/layer_norm_1/gamma") in state_dict:
            depth += 1
        depths.append(depth)
        fc1 = state_dict[table.source_key(f"stage{s}_block0/mlp/dense1/kernel")]
        mlp_ratios.append(fc1.shape[0] // proj.shape[0])
        sr = state_dict.get(table.source_key(f"stage{s}_block0/attention/spatial_reduction/kernel"))
        sr_ratios.append(int(sr.shape[-1]) if sr is not None and not linear else 1)
    if linear:
        sr_ratios = [8, 4, 2, 1][:num_stages]
    num_heads = [1, 2, 5, 8][:num_stages]
    for size, heads in zip(hidden_sizes, num_heads):
        if size % heads:
            raise ValueError(
                f"A {layout} checkpoint without config.json is read as a standard PVT v2 with "
                f"heads {num_heads}, but its hidden sizes {hidden_sizes} do not divide by them. "
                "Build PVTv2Backbone with the right `num_heads` and load the weights into it."
            )
    return {
        "hidden_sizes": hidden_sizes,
        "depths": depths,
        "num_heads": num_heads,
        "mlp_ratios": mlp_ratios,
        "sr_ratios": sr_ratios,
        "patch_sizes": patch_sizes,
        "strides": [4, 2, 2, 2][:num_stages],
        "linear_attention": linear,
        **_REFERENCE_EPSILONS,
    }


def _family():
    from keras_pvt.models.family import Family
    from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
    from keras_pvt.models.pvt_v2.classifier import PVTv2Classifier
    from keras_pvt.models.pvt_v2.preprocessor import (
        PVTv2ImageClassifierPreprocessor,
        PVTv2ImageConverter,
    )
    from keras_pvt.models.pvt_v2.presets import PVT_V2_PRESETS

    return Family(
        name="pvt_v2",
        backbone_cls=PVTv2Backbone,
        classifier_cls=PVTv2Classifier,
        preprocessor_cls=PVTv2ImageClassifierPreprocessor,
        image_converter_cls=PVTv2ImageConverter,
        model_types=("pvt_v2",),
        timm_prefixes=("pvt_v2_",),
        tables=TABLES,
        head_keys=HEAD_KEYS,
        backbone_prefixes=BACKBONE_PREFIXES,
        detect_layout=detect_layout,
        kwargs_from_transformers=backbone_kwargs_from_transformers,
        kwargs_from_weights=backbone_kwargs_from_weights,
        presets=PVT_V2_PRESETS,
    )


FAMILY = _family()
