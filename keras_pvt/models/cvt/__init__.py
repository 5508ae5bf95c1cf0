"""CvT: backbone, classifier and preprocessing."""

from keras_pvt.models.cvt.backbone import CvTBackbone, CvTClassToken, CvTLayer
from keras_pvt.models.cvt.classifier import CvTClassifier
from keras_pvt.models.cvt.depth_estimator import CvTGLPNDepthEstimator
from keras_pvt.models.cvt.preprocessor import (
    CvTImageClassifierPreprocessor,
    CvTImageConverter,
)
from keras_pvt.models.cvt.segmenter import CvTSegFormerSegmenter

__all__ = [
    "CvTBackbone",
    "CvTClassToken",
    "CvTClassifier",
    "CvTImageClassifierPreprocessor",
    "CvTImageConverter",
    "CvTLayer",
    "CvTGLPNDepthEstimator",
    "CvTSegFormerSegmenter",
]
