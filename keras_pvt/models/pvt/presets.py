"""Built-in PVT v1 presets: the official checkpoints, as converted to transformers, on the
Hugging Face Hub."""

from keras_pvt.models.family import Preset

_IMAGENET = "ImageNet-1k, 224x224 (Wang et al., PVT, 2021)"


def _preset(variant: str, params: int) -> Preset:
    return Preset(
        f"Zetatech/pvt-{variant}-224",
        f"PVT v1 {variant}, {params / 1e6:.1f}M parameters. {_IMAGENET}.",
        params,
    )


# Parameter counts (1000 classes) of transformers' PvtForImageClassification.
PVT_PRESETS = {
    "pvt_tiny": _preset("tiny", 13_229_288),
    "pvt_small": _preset("small", 24_485_864),
    "pvt_medium": _preset("medium", 44_208_104),
    "pvt_large": _preset("large", 61_369_320),
}
