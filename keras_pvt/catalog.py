"""The built-in presets (name, Hub repository, task, size, published accuracy, licence) and
where their conversions are cached.

This module imports neither Keras nor any backend, so `keras-pvt --help` and
`keras-pvt presets` start at once; the families in `keras_pvt.convert` take their presets
from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "keras_pvt_manifest.json"


class PresetError(ValueError):
    """A preset that cannot be resolved (unknown name, offline, corrupted cache...) or that
    does not hold what the loading class needs."""


@dataclass(frozen=True)
class License:
    """The licence of a preset's weights, as its upstream repository states it."""

    name: str  # SPDX identifier, or the licence's title
    url: str
    commercial: bool = True  # False: research / evaluation only

    def describe(self) -> str:
        use = "" if self.commercial else " (non-commercial: research or evaluation only)"
        return f"{self.name}{use}, {self.url}"


@dataclass(frozen=True)
class Preset:
    """A built-in preset: where its official checkpoint lives, what it is, its licence."""

    hf_repo: str
    description: str
    params: int
    license: License
    source: str = "transformers"
    task: str = "classifier"  # what the checkpoint holds: a `Task.name`, or "backbone"
    published: str = ""  # the accuracy its authors report, e.g. "ImageNet top-1 70.5%"

    def metadata(self) -> dict:
        return {
            "description": self.description,
            "params": self.params,
            "source": f"{self.source}: https://huggingface.co/{self.hf_repo}",
            "hf_repo": self.hf_repo,
            "task": self.task,
            "license": self.license.describe(),
            "published": self.published,
        }


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def cache_root() -> Path:
    """Where converted presets live: `$KERAS_HOME/keras_pvt`."""
    return keras_home() / "keras_pvt"


def is_cached(name: str) -> bool:
    """Whether preset `name` has a finished conversion in the cache (its manifest is written
    last; `from_preset` verifies the checksums on load)."""
    return (cache_root() / name / MANIFEST).is_file()


# --- PVT v2 (whai362/PVT, OpenGVLab on the Hub) ---------------------------------------------

PVT_V2_LICENSE = License("Apache-2.0", "https://github.com/whai362/PVT/blob/v2/LICENSE")


def _pvt_v2(variant: str, params: int, top1: float, what: str = "") -> Preset:
    name = variant.replace("_linear", "-linear")
    return Preset(
        f"OpenGVLab/pvt_v2_{variant}",
        f"PVT v2 {name}{what}, {params / 1e6:.1f}M parameters. ImageNet-1k, 224x224 "
        "(Wang et al., PVT v2, 2022).",
        params, PVT_V2_LICENSE, published=f"ImageNet top-1 {top1}%",
    )


# --- SegFormer (NVIDIA): MiT encoders and segmenters ----------------------------------------

SEGFORMER_LICENSE = License(
    "NVIDIA Source Code License for SegFormer",
    "https://github.com/NVlabs/SegFormer/blob/master/LICENSE",
    commercial=False,
)
_SEGFORMER_PAPER = "Xie et al., SegFormer, 2021"
# Parameters of transformers' models (counted from their configs).
_MIT_PARAMS = [3_576_392, 13_664_424, 24_709_288, 44_585_128, 61_355_688, 81_956_008]
_ADE_PARAMS = [3_752_694, 13_715_798, 27_461_974, 47_337_814, 64_108_374, 84_708_694]
_CITYSCAPES_PARAMS = [3_719_027, 13_682_131, 27_361_235, 47_237_075, 64_007_635, 84_607_955]
# Single-scale mIoU in the SegFormer paper's tables.
_ADE_MIOU = [37.4, 42.2, 46.5, 49.4, 50.3, 51.0]
_CITYSCAPES_MIOU = [76.2, 78.5, 81.0, 81.7, 82.3, 82.4]


def _mit(b: int) -> Preset:
    return Preset(
        f"nvidia/mit-b{b}",
        f"MiT-b{b} (SegFormer's encoder, a PVT v2 with MLP ratio 4), "
        f"{_MIT_PARAMS[b] / 1e6:.1f}M parameters. ImageNet-1k classifier ({_SEGFORMER_PAPER}).",
        _MIT_PARAMS[b], SEGFORMER_LICENSE, published="not published",
    )


def _segformer(b: int, dataset: str) -> Preset:
    if dataset == "ade":
        size = 640 if b == 5 else 512
        repo = f"nvidia/segformer-b{b}-finetuned-ade-{size}-{size}"
        params, what = _ADE_PARAMS[b], f"ADE20K, 150 classes, {size}x{size}"
        published = f"ADE20K mIoU {_ADE_MIOU[b]}%"
    else:
        repo = f"nvidia/segformer-b{b}-finetuned-cityscapes-1024-1024"
        params, what = _CITYSCAPES_PARAMS[b], "Cityscapes, 19 classes, 1024x1024"
        published = f"Cityscapes mIoU {_CITYSCAPES_MIOU[b]}%"
    return Preset(
        repo,
        f"SegFormer-b{b} semantic segmentation, {params / 1e6:.1f}M parameters. {what} "
        f"({_SEGFORMER_PAPER}).",
        params, SEGFORMER_LICENSE, task="segmenter", published=published,
    )


# --- GLPN (KAIST) ----------------------------------------------------------------------------

# The authors' repository has no licence file; its README restricts the code and weights
# to non-commercial use (the Hub model cards say apache-2.0, which the authors did not).
GLPN_LICENSE = License(
    "GLPDepth terms (no licence file; non-commercial use per the authors' README)",
    "https://github.com/vinvino02/GLPDepth",
    commercial=False,
)
_GLPN_PARAMS = 61_220_903  # GLPNForDepthEstimation with the MiT-b4 encoder (both checkpoints)


def _glpn(dataset: str, what: str, published: str) -> Preset:
    return Preset(
        f"vinvino02/glpn-{dataset}",
        f"GLPN monocular depth (MiT-b4 encoder), {_GLPN_PARAMS / 1e6:.1f}M parameters. "
        f"{what} (Kim et al., GLPN, 2022).",
        _GLPN_PARAMS, GLPN_LICENSE, task="depth_estimator", published=published,
    )


# --- PVT v1 ------------------------------------------------------------------------------------


def _pvt(variant: str, params: int, top1: float) -> Preset:
    return Preset(
        f"Zetatech/pvt-{variant}-224",
        f"PVT v1 {variant}, {params / 1e6:.1f}M parameters. ImageNet-1k, 224x224 "
        "(Wang et al., PVT, 2021).",
        params, PVT_V2_LICENSE, published=f"ImageNet top-1 {top1}%",
    )


# --- CvT (microsoft/CvT) -----------------------------------------------------------------------

# The Hugging Face model cards say apache-2.0; the upstream repository's licence file is MIT.
CVT_LICENSE = License("MIT", "https://github.com/microsoft/CvT/blob/main/LICENSE")
# Parameter counts of transformers' CvtForImageClassification with 1000 classes (BatchNorm
# running statistics are buffers there, not parameters; keras counts them as weights).
CVT_13_PARAMS = 19_997_480
CVT_21_PARAMS = 31_622_696
CVT_W24_PARAMS = 277_196_392


def _cvt(variant: str, params: int, resolution: int, top1: float,
         imagenet_22k: bool = False) -> Preset:
    name = f"CvT-{variant.upper() if variant.startswith('w') else variant}"
    if imagenet_22k:
        data = f"ImageNet-22k pre-trained, ImageNet-1k fine-tuned at {resolution}x{resolution}"
    else:
        data = f"ImageNet-1k, {resolution}x{resolution}"
    suffix = f"-{resolution}" if resolution != 224 else ""
    suffix += "-22k" if imagenet_22k else ""
    return Preset(
        f"microsoft/cvt-{variant}{suffix}",
        f"{name}, {params / 1e6:.1f}M parameters. {data} (Wu et al., CvT, 2021).",
        params, CVT_LICENSE, published=f"ImageNet top-1 {top1}%",
    )


# Family name -> its presets, in listing order. Accuracies are the papers' (PVT v2 Table 1,
# PVT Table 2, CvT Table 3, SegFormer Tables 1 and 2, GLPN Tables 1 and 2).
FAMILY_PRESETS: dict[str, dict[str, Preset]] = {
    "pvt_v2": {
        "pvt_v2_b0": _pvt_v2("b0", 3_666_760, 70.5),
        "pvt_v2_b1": _pvt_v2("b1", 14_009_000, 78.7),
        "pvt_v2_b2": _pvt_v2("b2", 25_362_856, 82.0),
        "pvt_v2_b2_linear": _pvt_v2("b2_linear", 22_553_512, 82.1,
                                    " (linear SRA, 7x7 pooling)"),
        "pvt_v2_b3": _pvt_v2("b3", 45_238_696, 83.1),
        "pvt_v2_b4": _pvt_v2("b4", 62_556_072, 83.6),
        "pvt_v2_b5": _pvt_v2("b5", 81_956_008, 83.8),
        **{f"mit_b{b}": _mit(b) for b in range(6)},
        **{f"segformer_b{b}_ade": _segformer(b, "ade") for b in range(6)},
        **{f"segformer_b{b}_cityscapes": _segformer(b, "cityscapes") for b in range(6)},
        "glpn_kitti": _glpn("kitti", "KITTI (outdoor driving), depth up to 80 m",
                            "KITTI δ1 0.967, AbsRel 0.057"),
        "glpn_nyu": _glpn("nyu", "NYU Depth v2 (indoor), depth up to 10 m",
                          "NYU δ1 0.915, AbsRel 0.098"),
    },
    "pvt": {
        "pvt_tiny": _pvt("tiny", 13_229_288, 75.1),
        "pvt_small": _pvt("small", 24_485_864, 79.8),
        "pvt_medium": _pvt("medium", 44_208_104, 81.2),
        "pvt_large": _pvt("large", 61_369_320, 81.7),
    },
    "cvt": {
        "cvt_13": _cvt("13", CVT_13_PARAMS, 224, 81.6),
        "cvt_13_384": _cvt("13", CVT_13_PARAMS, 384, 83.0),
        "cvt_13_384_22k": _cvt("13", CVT_13_PARAMS, 384, 83.3, imagenet_22k=True),
        "cvt_21": _cvt("21", CVT_21_PARAMS, 224, 82.5),
        "cvt_21_384": _cvt("21", CVT_21_PARAMS, 384, 83.3),
        "cvt_21_384_22k": _cvt("21", CVT_21_PARAMS, 384, 84.9, imagenet_22k=True),
        "cvt_w24_384_22k": _cvt("w24", CVT_W24_PARAMS, 384, 87.7, imagenet_22k=True),
    },
}


def presets() -> dict[str, Preset]:
    """Every built-in preset by name, in listing order."""
    return {name: p for family in FAMILY_PRESETS.values() for name, p in family.items()}
