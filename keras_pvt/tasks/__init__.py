"""Task heads that work on any keras_pvt backbone."""

from keras_pvt.tasks.classifier import (
    PyramidImageClassifier,
    PyramidImageClassifierPreprocessor,
)

__all__ = ["PyramidImageClassifier", "PyramidImageClassifierPreprocessor"]
