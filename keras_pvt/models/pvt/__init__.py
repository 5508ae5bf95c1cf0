"""PVT v1: backbone, classifier, preprocessing, checkpoint maps and presets."""

from keras_pvt.models.pvt.backbone import ClassTokenSplit, PVTBackbone, PVTBlock
from keras_pvt.models.pvt.classifier import PVTClassifier
from keras_pvt.models.pvt.preprocessor import PVTImageClassifierPreprocessor, PVTImageConverter

__all__ = [
    "ClassTokenSplit",
    "PVTBackbone",
    "PVTBlock",
    "PVTClassifier",
    "PVTImageClassifierPreprocessor",
    "PVTImageConverter",
]
