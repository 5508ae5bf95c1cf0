"""Built-in CvT presets: Microsoft's checkpoints on the Hugging Face Hub (transformers)."""

from keras_pvt.models.family import Preset

_PAPER = "Wu et al., CvT, 2021"


def _preset(variant: str, params: int, resolution: int, imagenet_22k: bool = False) -> Preset:
    name = f"CvT-{variant.upper() if variant.startswith('w') else variant}"
    if imagenet_22k:
        data = f"ImageNet-22k pre-trained, ImageNet-1k fine-tuned at {resolution}x{resolution}"
    else:
        data = f"ImageNet-1k, {resolution}x{resolution}"
    suffix = f"-{resolution}" if resolution != 224 else ""
    suffix += "-22k" if imagenet_22k else ""
    return Preset(
        f"microsoft/cvt-{variant}{suffix}",
        f"{name}, {params / 1e6:.1f}M parameters. {data} ({_PAPER}).",
        params,
    )


# Parameter counts of transformers' CvtForImageClassification with 1000 classes (BatchNorm
# running statistics are buffers there, not parameters; keras counts them as weights).
CVT_13_PARAMS = 19_997_480
CVT_21_PARAMS = 31_622_696
CVT_W24_PARAMS = 277_196_392

CVT_PRESETS = {
    "cvt_13": _preset("13", CVT_13_PARAMS, 224),
    "cvt_13_384": _preset("13", CVT_13_PARAMS, 384),
    "cvt_13_384_22k": _preset("13", CVT_13_PARAMS, 384, imagenet_22k=True),
    "cvt_21": _preset("21", CVT_21_PARAMS, 224),
    "cvt_21_384": _preset("21", CVT_21_PARAMS, 384),
    "cvt_21_384_22k": _preset("21", CVT_21_PARAMS, 384, imagenet_22k=True),
    "cvt_w24_384_22k": _preset("w24", CVT_W24_PARAMS, 384, imagenet_22k=True),
}
