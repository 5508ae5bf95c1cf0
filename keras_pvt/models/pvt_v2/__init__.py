"""PVT v2: backbone, classifier and preprocessing."""

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.models.pvt_v2.classifier import PVTv2Classifier
from keras_pvt.models.pvt_v2.depth_estimator import PVTv2GLPNDepthEstimator
from keras_pvt.models.pvt_v2.preprocessor import (
    PVTv2ImageClassifierPreprocessor,
    PVTv2ImageConverter,
)
from keras_pvt.models.pvt_v2.segmenter import PVTv2SegFormerSegmenter

__all__ = [
    "PVTv2Backbone",
    "PVTv2Classifier",
    "PVTv2ImageClassifierPreprocessor",
    "PVTv2ImageConverter",
    "PVTv2GLPNDepthEstimator",
    "PVTv2SegFormerSegmenter",
]
