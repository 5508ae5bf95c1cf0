"""keras_pvt: Pyramid Vision Transformers for Keras 3 (TensorFlow, JAX, PyTorch).

`import keras_pvt` does not import Keras by itself, so the Keras backend can still be chosen
afterwards (`keras-pvt --backend jax`, or `os.environ["KERAS_BACKEND"]`). The models load on
the first use of any name below, or at once when Keras is already imported; either way every
keras_pvt class is registered with Keras before a model is built or a `.keras` file is read
through keras_pvt. (`keras.saving.load_model` alone does not touch keras_pvt: import Keras
first, or use any keras_pvt name, before it.)
"""

from __future__ import annotations

import importlib
import sys

from keras_pvt.catalog import PresetError

# Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "CheckpointError": "keras_pvt.checkpoints",
    "convert_to_preset": "keras_pvt.convert",
    "ExportError": "keras_pvt.export",
    **dict.fromkeys(["CvTBackbone", "CvTClassifier", "CvTGLPNDepthEstimator",
                     "CvTImageClassifierPreprocessor", "CvTImageConverter",
                     "CvTSegFormerSegmenter"], "keras_pvt.models.cvt"),
    **dict.fromkeys(["PVTBackbone", "PVTClassifier", "PVTGLPNDepthEstimator",
                     "PVTImageClassifierPreprocessor", "PVTImageConverter",
                     "PVTSegFormerSegmenter"], "keras_pvt.models.pvt"),
    **dict.fromkeys(["PVTv2Backbone", "PVTv2Classifier", "PVTv2GLPNDepthEstimator",
                     "PVTv2ImageClassifierPreprocessor", "PVTv2ImageConverter",
                     "PVTv2SegFormerSegmenter"], "keras_pvt.models.pvt_v2"),
    **dict.fromkeys(["AbsRelError", "DeltaAccuracy", "GLPNDepthEstimator",
                     "GLPNDepthEstimatorPreprocessor", "GLPNImageConverter",
                     "PyramidImageClassifier", "SegFormerImageConverter",
                     "SegFormerSegmenter", "SegFormerSegmenterPreprocessor",
                     "SegmentationLoss", "SegmentationMeanIoU", "SiLogLoss"],
                    "keras_pvt.tasks"),
}
_SUBMODULES = ("explain", "layers")


def _load() -> None:
    """Imports the models, tasks and preset resolution (registering every class with Keras)."""
    importlib.import_module("keras_pvt.hub")  # families, tasks, and `from_preset`'s resolver
    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(module)


def __getattr__(name: str):
    if name in _SUBMODULES:
        _load()
        return importlib.import_module(f"keras_pvt.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_pvt' has no attribute {name!r}")
    _load()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


if "keras" in sys.modules:  # nothing left to choose: register the classes now
    _load()

__version__ = "0.1.0"

__all__ = [
    "AbsRelError",
    "DeltaAccuracy",
    "GLPNDepthEstimator",
    "GLPNDepthEstimatorPreprocessor",
    "GLPNImageConverter",
    "PVTv2GLPNDepthEstimator",
    "PVTGLPNDepthEstimator",
    "CvTGLPNDepthEstimator",
    "SiLogLoss",
    "SegmentationMeanIoU",
    "SegmentationLoss",
    "SegFormerSegmenterPreprocessor",
    "SegFormerSegmenter",
    "SegFormerImageConverter",
    "PVTv2SegFormerSegmenter",
    "PVTSegFormerSegmenter",
    "CvTSegFormerSegmenter",
    "CheckpointError",
    "CvTBackbone",
    "CvTClassifier",
    "CvTImageClassifierPreprocessor",
    "CvTImageConverter",
    "ExportError",
    "PVTBackbone",
    "PVTClassifier",
    "PVTImageClassifierPreprocessor",
    "PVTImageConverter",
    "PVTv2Backbone",
    "PVTv2Classifier",
    "PVTv2ImageClassifierPreprocessor",
    "PVTv2ImageConverter",
    "PresetError",
    "PyramidImageClassifier",
    "convert_to_preset",
    "explain",
    "layers",
]
