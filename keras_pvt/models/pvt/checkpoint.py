"""PVT v1 checkpoints: key tables for transformers and the original repository (whai362/PVT).

Keras names (left) follow transformers' modules; each source is one table. timm has no
PVT v1.
"""

from __future__ import annotations

import math

from keras_pvt.checkpoints.keymap import Fused, KeyTable, fused

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
_ORIGINAL_BLOCK = {
    "layer_norm_1": "norm1",
    "attention.query": "attn.q",
    "attention.key": fused("attn.kv", 0, 2),
    "attention.value": fused("attn.kv", 1, 2),
    "attention.proj": "attn.proj",
    "attention.spatial_reduction": "attn.sr",
    "attention.layer_norm": "attn.norm",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
}


def _prefixed(keras_prefix: str, source_prefix: str, rows: dict) -> dict:
    out = {}
    for keras_name, source in rows.items():
        if isinstance(source, Fused):
            source = fused(f"{source_prefix}.{source.key}", source.index, source.parts)
        else:
            source = f"{source_prefix}.{source}"
        out[f"{keras_prefix}.{keras_name}"] = source
    return out


_HF_EMBEDDINGS = "encoder.patch_embeddings.{s}"  # patch + position embeddings + class token
TRANSFORMERS = KeyTable(
    {
        "stage{s}_patch_embedding.proj": f"{_HF_EMBEDDINGS}.projection",
        "stage{s}_patch_embedding.layer_norm": f"{_HF_EMBEDDINGS}.layer_norm",
        "stage{s}_position_embedding.embeddings": f"{_HF_EMBEDDINGS}.position_embeddings",
        "stage{s}_position_embedding.cls_token": f"{_HF_EMBEDDINGS}.cls_token",
        **_prefixed("stage{s}_block{b}", "encoder.block.{s}.{b}", _TRANSFORMERS_BLOCK),
        "layer_norm": "encoder.layer_norm",
        "predictions": "classifier",
    }
)
ORIGINAL = KeyTable(
    {
        "stage{s}_patch_embedding.proj": "patch_embed{s1}.proj",
        "stage{s}_patch_embedding.layer_norm": "patch_embed{s1}.norm",
        "stage{s}_position_embedding.embeddings": "pos_embed{s1}",
        "stage{s}_position_embedding.cls_token": "cls_token",
        **_prefixed("stage{s}_block{b}", "block{s1}.{b}", _ORIGINAL_BLOCK),
        "layer_norm": "norm",
        "predictions": "head",
    }
)
TABLES = {"transformers": TRANSFORMERS, "original": ORIGINAL}
HEAD_KEYS = {"transformers": ("classifier.",), "original": ("head.",)}

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
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act={act!r} is not supported; PVT uses exact GELU.")
    num_stages = config.get("num_encoder_blocks", 4)
    depths = list(config.get("depths", [2, 2, 2, 2]))
    if len(depths) != num_stages:
        raise ValueError(
            f"num_encoder_blocks={num_stages} does not match depths={depths} in the config."
        )
    image_size = config.get("image_size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    eps = config.get("layer_norm_eps", 1e-6)
    return {
        "hidden_sizes": config.get("hidden_sizes", [64, 128, 320, 512]),
        "depths": depths,
        "num_heads": config.get("num_attention_heads", [1, 2, 5, 8]),
        "mlp_ratios": config.get("mlp_ratios", [8, 8, 4, 4]),
        "sr_ratios": config.get("sequence_reduction_ratios", [8, 4, 2, 1]),
        "patch_sizes": config.get("strides", [4, 2, 2, 2]),
        "strides": config.get("patch_sizes", [4, 2, 2, 2]),
        "position_embedding_shape": tuple(image_size),
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
    """`PVTBackbone` arguments read off a state dict's shapes (no config.json).

    Heads are not visible in the shapes: every published PVT v1 uses (1, 2, 5, 8).
    Strides are taken equal to the patch-embedding kernels (non-overlapping patches), and the
    pretraining size is read from the first stage's (square) position-embedding grid.
    """
    table = TABLES[layout]

    def weight(path: str):
        return state_dict.get(table.source_key(path))

    num_stages = 0
    while weight(f"stage{num_stages}_patch_embedding/proj/kernel") is not None:
        num_stages += 1
    if num_stages == 0:
        raise ValueError("No PVT v1 patch embedding found in the checkpoint.")
    hidden_sizes, patch_sizes, depths, mlp_ratios, sr_ratios = [], [], [], [], []
    for s in range(num_stages):
        proj = weight(f"stage{s}_patch_embedding/proj/kernel")
        hidden_sizes.append(int(proj.shape[0]))
        patch_sizes.append(int(proj.shape[-1]))
        depth = 0
        while weight(f"stage{s}_block{depth}/layer_norm_1/gamma") is not None:
            depth += 1
        depths.append(depth)
        fc1 = weight(f"stage{s}_block0/mlp/dense1/kernel")
        ratio = fc1.shape[0] / proj.shape[0]
        mlp_ratios.append(int(ratio) if ratio == int(ratio) else ratio)
        sr = weight(f"stage{s}_block0/attention/spatial_reduction/kernel")
        sr_ratios.append(int(sr.shape[-1]) if sr is not None else 1)
    tokens = int(weight("stage0_position_embedding/embeddings").shape[1])
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(
            f"The first stage's position embeddings hold {tokens} positions, not a square grid; "
            "build PVTBackbone with the right `position_embedding_shape` and load the weights "
            "into it."
        )
    num_heads = [1, 2, 5, 8][:num_stages]
    for size, heads in zip(hidden_sizes, num_heads):
        if size % heads:
            raise ValueError(
                f"A {layout} checkpoint without config.json is read as a standard PVT v1 with "
                f"heads {num_heads}, but its hidden sizes {hidden_sizes} do not divide by them. "
                "Build PVTBackbone with the right `num_heads` and load the weights into it."
            )
    qkv_bias = weight("stage0_block0/attention/query/bias") is not None
    return {
        "hidden_sizes": hidden_sizes,
        "depths": depths,
        "num_heads": num_heads,
        "mlp_ratios": mlp_ratios,
        "sr_ratios": sr_ratios,
        "patch_sizes": patch_sizes,
        "strides": patch_sizes,
        "position_embedding_shape": (grid * patch_sizes[0],) * 2,
        "qkv_bias": qkv_bias,
        **(_ORIGINAL_EPSILONS if layout == "original" else {}),
    }


def _family():
    from keras_pvt.models.family import Family
    from keras_pvt.models.pvt.backbone import PVTBackbone
    from keras_pvt.models.pvt.classifier import PVTClassifier
    from keras_pvt.models.pvt.preprocessor import PVTImageClassifierPreprocessor, PVTImageConverter
    from keras_pvt.models.pvt.presets import PVT_PRESETS

    return Family(
        name="pvt",
        backbone_cls=PVTBackbone,
        classifier_cls=PVTClassifier,
        preprocessor_cls=PVTImageClassifierPreprocessor,
        image_converter_cls=PVTImageConverter,
        model_types=("pvt",),
        timm_prefixes=(),
        tables=TABLES,
        head_keys=HEAD_KEYS,
        backbone_prefixes=BACKBONE_PREFIXES,
        detect_layout=detect_layout,
        kwargs_from_transformers=backbone_kwargs_from_transformers,
        kwargs_from_weights=backbone_kwargs_from_weights,
        presets=PVT_PRESETS,
    )


FAMILY = _family()
