"""SegFormer parity: Keras outputs equal transformers' run in the same test.

Checkpoints take the path real ones use: `save_pretrained`, then `from_preset(path)`.
"""

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from tests.helpers.reference import hf_segformer, images, nchw_to_nhwc, to_torch


def relative_delta(got, want) -> float:
    got, want = np.asarray(got, dtype="float64"), np.asarray(want, dtype="float64")
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def segformer_b0(tmp_path_factory):
    reference = hf_segformer("b0", "segmentation", num_labels=150)
    path = tmp_path_factory.mktemp("segformer_b0")
    reference.save_pretrained(path)
    return reference, keras_pvt.SegFormerSegmenter.from_preset(str(path)), path


@pytest.mark.parametrize("batch,height,width", [(1, 512, 512), (1, 333, 517), (2, 128, 160)])
def test_segmenter_parity(segformer_b0, record_delta, batch, height, width):
    reference, model, _ = segformer_b0
    assert isinstance(model, keras_pvt.PVTv2SegFormerSegmenter)
    x = images(batch, height, width, seed=height)
    with torch.no_grad():
        expected = reference(to_torch(x), output_hidden_states=True)
    logits = keras.ops.convert_to_numpy(model(x))
    delta = relative_delta(logits, nchw_to_nhwc(expected.logits))
    record_delta(f"segformer b0 {batch}x{height}x{width} logits (relative)", delta)
    assert delta < 1e-4
    pyramid = keras.Model(model.backbone.input, model.backbone.pyramid_outputs)(x)
    for stage, level in enumerate(["P2", "P3", "P4", "P5"]):
        want = nchw_to_nhwc(expected.hidden_states[stage])
        delta = relative_delta(keras.ops.convert_to_numpy(pyramid[level]), want)
        record_delta(f"segformer b0 {batch}x{height}x{width} {level} (relative)", delta)
        assert delta < 1e-4, level
