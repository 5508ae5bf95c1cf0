"""SegFormer (NVIDIA): the Mix Transformer encoder is PVT v2's, in transformers' `segformer`
key layout. Key tables, config translation and presets (MiT ImageNet encoders, ADE20K and
Cityscapes segmenters), used by the PVT v2 family's registration.
"""

from __future__ import annotations

from keras_pvt.checkpoints.keymap import prefixed

BACKBONE_PREFIX = "segformer."  # SegformerFor* wrap SegformerModel

_BLOCK = {
    "layer_norm_1": "layer_norm_1",
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention.proj": "attention.output.dense",
    "attention.spatial_reduction": "attention.self.sr",
    "attention.layer_norm": "attention.self.layer_norm",
    "layer_norm_2": "layer_norm_2",
    "mlp.dense1": "mlp.dense1",
    "mlp.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.dense2",
}
BACKBONE_ROWS = {
    "stage{s}_patch_embedding.proj": "encoder.patch_embeddings.{s}.proj",
    "stage{s}_patch_embedding.layer_norm": "encoder.patch_embeddings.{s}.layer_norm",
    **prefixed("stage{s}_block{b}", "encoder.block.{s}.{b}", _BLOCK),
    "stage{s}_layer_norm": "encoder.layer_norm.{s}",
}
CLASSIFIER_HEAD = {"predictions": "classifier"}
SEGMENTER_HEAD = {
    "linear_c{i}": "decode_head.linear_c.{i}.proj",
    "linear_fuse": "decode_head.linear_fuse",
    "batch_norm": "decode_head.batch_norm",
    "classifier": "decode_head.classifier",
}


def is_segformer(state_dict: dict) -> bool:
    return "encoder.patch_embeddings.0.proj.weight" in state_dict


# Every SegFormer LayerNorm is `nn.LayerNorm`'s default; the config's `layer_norm_eps` is not
# used by the model.
EPSILONS = {"layer_norm_epsilon": 1e-5, "patch_norm_epsilon": 1e-5,
            "reduction_norm_epsilon": 1e-5}


