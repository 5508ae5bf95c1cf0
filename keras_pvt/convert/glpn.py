"""GLPN (KAIST, Kim et al.): SegFormer's Mix Transformer encoder (PVT v2's, in the
`segformer` key layout under `glpn.`) with a depth decoder and head. The head's key table,
config translation and presets, used by the PVT v2 family's registration.
"""

from __future__ import annotations

BACKBONE_PREFIX = "glpn."  # GLPNForDepthEstimation wraps GLPNModel

_FUSION = {
    "convolution1": "convolutional_layer1.0",
    "batch_norm1": "convolutional_layer1.1",
    "convolution2": "convolutional_layer2.0",
    "batch_norm2": "convolutional_layer2.1",
    "convolution3": "convolutional_layer3",
}
DEPTH_HEAD = {
    "decoder_stage{i}_convolution": "decoder.stages.{i}.convolution",
    **{f"decoder_stage{{i}}_fusion.{name}": f"decoder.stages.{{i}}.fusion.{source}"
       for name, source in _FUSION.items()},
    "head_convolution1": "head.head.0",
    "head_convolution2": "head.head.2",
}


def depth_estimator_kwargs(config: dict) -> dict:
    """`GLPNDepthEstimator` arguments from a transformers `GLPNConfig` (beyond the
    decoder width, which the weights give)."""
    index = config.get("head_in_index", -1)
    if index != -1:
        raise ValueError(f"head_in_index={index} is not supported; GLPN's head reads the "
                         "decoder's last output (-1).")
    return {"max_depth": float(config.get("max_depth", 10))}


def image_converter_kwargs(config: dict) -> dict:
    """`GLPNImageConverter` arguments from a `GLPNImageProcessor` config."""
    return {
        "size_divisor": config.get("size_divisor", 32) if config.get("do_resize", True)
        else None,
        "scale": config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True)
        else None,
    }


