"""PVT v1: backbone, classifier and preprocessing."""

from keras_pvt.models.pvt.backbone import ClassTokenSplit, PVTBackbone
from keras_pvt.models.pvt.classifier import PVTClassifier
from keras_pvt.models.pvt.depth_estimator import PVTGLPNDepthEstimator
from keras_pvt.models.pvt.preprocessor import PVTImageClassifierPreprocessor, PVTImageConverter
from keras_pvt.models.pvt.segmenter import PVTSegFormerSegmenter

__all__ = [
    "ClassTokenSplit",
    "PVTBackbone",
    "PVTClassifier",
    "PVTImageClassifierPreprocessor",
    "PVTImageConverter",
    "PVTGLPNDepthEstimator",
    "PVTSegFormerSegmenter",
]
