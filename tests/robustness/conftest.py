"""Shared fixtures of the robustness suite: tiny PVT v2 models and checkpoints."""

import keras
import numpy as np
import pytest

import keras_pvt
from tests.helpers.reference import PVT_V2_CONFIGS, hf_pvt_v2

TINY = PVT_V2_CONFIGS["tiny"]


def tiny_backbone(**kwargs) -> keras_pvt.PVTv2Backbone:
    """The tiny SRA config (sr_ratios 8, 4, 2, 1: 29-pixel minimum)."""
    return keras_pvt.PVTv2Backbone(
        hidden_sizes=TINY["hidden_sizes"], depths=TINY["depths"],
        num_heads=TINY["num_attention_heads"], mlp_ratios=TINY["mlp_ratios"], **kwargs,
    )


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="session")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="session")
def classifier(backbone):
    # A small preprocessing size keeps the compiled predict/fit steps cheap.
    converter = keras_pvt.PVTv2ImageConverter(image_size=(64, 64))
    return keras_pvt.PVTv2Classifier(
        backbone=backbone, num_classes=3,
        preprocessor=keras_pvt.PVTv2ImageClassifierPreprocessor(image_converter=converter),
    )


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """`(reference, directory)`: a tiny transformers PVT v2 classifier, save_pretrained."""
    reference = hf_pvt_v2("tiny", num_labels=4)
    path = tmp_path_factory.mktemp("hf_tiny")
    reference.save_pretrained(path)
    return reference, path
