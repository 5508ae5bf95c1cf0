"""SegFormer (NVIDIA): the Mix Transformer encoder is PVT v2's, in transformers' `segformer`
key layout. Key tables, config translation and presets (MiT ImageNet encoders, ADE20K and
Cityscapes segmenters), used by the PVT v2 family's registration.
"""

from __future__ import annotations

from keras_pvt.checkpoints.keymap import prefixed
from keras_pvt.convert.registry import License, Preset

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


LICENSE = License(
    "NVIDIA Source Code License for SegFormer",
    "https://github.com/NVlabs/SegFormer/blob/master/LICENSE",
    commercial=False,
)
_PAPER = "Xie et al., SegFormer, 2021"
# Parameters of transformers' models (counted from their configs).
_MIT_PARAMS = [3_576_392, 13_664_424, 24_709_288, 44_585_128, 61_355_688, 81_956_008]
_ADE_PARAMS = [3_752_694, 13_715_798, 27_461_974, 47_337_814, 64_108_374, 84_708_694]
_CITYSCAPES_PARAMS = [3_719_027, 13_682_131, 27_361_235, 47_237_075, 64_007_635, 84_607_955]


def _mit(b: int) -> Preset:
    return Preset(
        f"nvidia/mit-b{b}",
        f"MiT-b{b} (SegFormer's encoder, a PVT v2 with MLP ratio 4), "
        f"{_MIT_PARAMS[b] / 1e6:.1f}M parameters. ImageNet-1k classifier ({_PAPER}).",
        _MIT_PARAMS[b], LICENSE,
    )


def _segmenter(b: int, dataset: str) -> Preset:
    if dataset == "ade":
        size = 640 if b == 5 else 512
        repo = f"nvidia/segformer-b{b}-finetuned-ade-{size}-{size}"
        params, what = _ADE_PARAMS[b], f"ADE20K, 150 classes, {size}x{size}"
    else:
        repo = f"nvidia/segformer-b{b}-finetuned-cityscapes-1024-1024"
        params, what = _CITYSCAPES_PARAMS[b], "Cityscapes, 19 classes, 1024x1024"
    return Preset(
        repo,
        f"SegFormer-b{b} semantic segmentation, {params / 1e6:.1f}M parameters. {what} "
        f"({_PAPER}).",
        params, LICENSE, task="segmenter",
    )


PRESETS = {
    **{f"mit_b{b}": _mit(b) for b in range(6)},
    **{f"segformer_b{b}_ade": _segmenter(b, "ade") for b in range(6)},
    **{f"segformer_b{b}_cityscapes": _segmenter(b, "cityscapes") for b in range(6)},
}
