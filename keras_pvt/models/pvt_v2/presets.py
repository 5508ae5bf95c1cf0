"""Built-in PVT v2 presets: the official checkpoints on the Hugging Face Hub."""

from keras_pvt.models.family import Preset

_IMAGENET = "ImageNet-1k, 224x224 (Wang et al., PVT v2, 2022)"


def _preset(variant: str, params: int, what: str = "") -> Preset:
    name = variant.replace("_linear", "-linear")
    return Preset(
        f"OpenGVLab/pvt_v2_{variant}",
        f"PVT v2 {name}{what}, {params / 1e6:.1f}M parameters. {_IMAGENET}.",
        params,
    )


PVT_V2_PRESETS = {
    "pvt_v2_b0": _preset("b0", 3_666_760),
    "pvt_v2_b1": _preset("b1", 14_009_000),
    "pvt_v2_b2": _preset("b2", 25_362_856),
    "pvt_v2_b2_linear": _preset("b2_linear", 22_553_512, " (linear SRA, 7x7 pooling)"),
    "pvt_v2_b3": _preset("b3", 45_238_696),
    "pvt_v2_b4": _preset("b4", 62_556_072),
    "pvt_v2_b5": _preset("b5", 81_956_008),
}
