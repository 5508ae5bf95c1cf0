"""keras_pvt: Pyramid Vision Transformers for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_pvt import explain, layers
from keras_pvt.checkpoints import CheckpointError
from keras_pvt.convert import convert_to_preset
from keras_pvt.export import ExportError
from keras_pvt.hub import PresetError
from keras_pvt.models.cvt import (
    CvTBackbone,
    CvTClassifier,
    CvTGLPNDepthEstimator,
    CvTImageClassifierPreprocessor,
    CvTImageConverter,
    CvTSegFormerSegmenter,
)
from keras_pvt.models.pvt import (
    PVTBackbone,
    PVTClassifier,
    PVTGLPNDepthEstimator,
    PVTImageClassifierPreprocessor,
    PVTImageConverter,
    PVTSegFormerSegmenter,
)
from keras_pvt.models.pvt_v2 import (
    PVTv2Backbone,
    PVTv2Classifier,
    PVTv2GLPNDepthEstimator,
    PVTv2ImageClassifierPreprocessor,
    PVTv2ImageConverter,
    PVTv2SegFormerSegmenter,
)
from keras_pvt.tasks import (
    AbsRelError,
    DeltaAccuracy,
    GLPNDepthEstimator,
    GLPNDepthEstimatorPreprocessor,
    GLPNImageConverter,
    PyramidImageClassifier,
    SegFormerImageConverter,
    SegFormerSegmenter,
    SegFormerSegmenterPreprocessor,
    SegmentationLoss,
    SegmentationMeanIoU,
    SiLogLoss,
)

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
