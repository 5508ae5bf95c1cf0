"""Determinism: the same input gives bit-identical outputs across loads, and inference (no
dropout, no drop-path) is the default everywhere but `fit`."""

import numpy as np

import keras_pvt
from tests.helpers.reference import images
from tests.robustness.conftest import numpy, tiny_backbone


def test_two_loads_of_a_preset_are_bit_identical(hf_tiny):
    x = images(2, 64, 64)
    first = keras_pvt.PVTv2Classifier.from_preset(str(hf_tiny[1]))
    second = keras_pvt.PVTv2Classifier.from_preset(str(hf_tiny[1]))
    np.testing.assert_array_equal(numpy(first(x)), numpy(second(x)))
    # (test_cache also compares four loads in separate processes bit for bit)


def test_inference_is_the_default():
    backbone = tiny_backbone(drop_path_rate=0.5, attention_dropout=0.3, hidden_dropout=0.3)
    model = keras_pvt.PVTv2Classifier(backbone=backbone, num_classes=3, dropout=0.5)
    x = images(2, 64, 64)
    inference = numpy(model(x))
    np.testing.assert_array_equal(numpy(model(x)), inference)
    np.testing.assert_array_equal(numpy(model(x, training=False)), inference)
    # predict is compiled (jit / tf.function): equal up to float reassociation.
    np.testing.assert_allclose(model.predict(x, verbose=0), inference, atol=1e-5)
    # The control: the same model does drop in training mode, so the checks above can fail.
    assert np.abs(numpy(model(x, training=True)) - inference).max() > 1e-4
