"""Task heads that work on any keras_pvt backbone."""

from keras_pvt.tasks.classifier import (
    PyramidImageClassifier,
    PyramidImageClassifierPreprocessor,
)
from keras_pvt.tasks.depth import AbsRelError, DeltaAccuracy, SiLogLoss
from keras_pvt.tasks.glpn import (
    GLPNDepthEstimator,
    GLPNDepthEstimatorPreprocessor,
    GLPNImageConverter,
    SelectiveFeatureFusion,
)
from keras_pvt.tasks.segformer import (
    SegFormerImageConverter,
    SegFormerSegmenter,
    SegFormerSegmenterPreprocessor,
)
from keras_pvt.tasks.segmentation import SegmentationLoss, SegmentationMeanIoU

__all__ = [
    "AbsRelError",
    "DeltaAccuracy",
    "GLPNDepthEstimator",
    "GLPNDepthEstimatorPreprocessor",
    "GLPNImageConverter",
    "SelectiveFeatureFusion",
    "SiLogLoss",
    "PyramidImageClassifier",
    "PyramidImageClassifierPreprocessor",
    "SegFormerImageConverter",
    "SegFormerSegmenter",
    "SegFormerSegmenterPreprocessor",
    "SegmentationLoss",
    "SegmentationMeanIoU",
]
