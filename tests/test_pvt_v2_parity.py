"""Checkpoint parity: Keras outputs equal the reference PyTorch models run in the same test.

Each checkpoint goes through the same path real ones use: written to disk in its source
layout, then `from_preset(path)` (read -> identify -> key table -> keras-hub preset -> load).
"""

import re

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import keras_pvt
from tests.helpers.reference import hf_pvt_v2, images, nchw_to_nhwc, timm_pvt_v2, to_torch

SIZES = {
    "b0": [(224, 224), (197, 231)],
    # 100x150: stage maps 25x38, 13x19, 7x10, 4x5 -- none a multiple of 7, the last smaller.
    "b2_linear_small": [(224, 224), (197, 231), (100, 150)],
}
CASES = [(config, h, w) for config, sizes in SIZES.items() for h, w in sizes]


def max_delta(a, b) -> float:
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def transformers_pair(tmp_path_factory):
    """(reference, Keras classifier) per config, converted once per module."""
    cache = {}

    def get(config):
        if config not in cache:
            reference = hf_pvt_v2(config, num_labels=10)
            path = tmp_path_factory.mktemp(f"hf_{config}")
            reference.save_pretrained(path)
            cache[config] = (reference, keras_pvt.PVTv2Classifier.from_preset(str(path)))
        return cache[config]

    return get


@pytest.mark.parametrize("config,height,width", CASES)
def test_transformers_parity(transformers_pair, record_delta, config, height, width):
    reference, model = transformers_pair(config)
    x = images(2, height, width, seed=height)
    with torch.no_grad():
        expected = reference(to_torch(x), output_hidden_states=True)
    logits = keras.ops.convert_to_numpy(model(x))
    delta = max_delta(logits, expected.logits.numpy())
    record_delta(f"transformers {config} {height}x{width} logits", delta)
    assert delta < 1e-4

    pyramid = keras.Model(model.backbone.input, model.backbone.pyramid_outputs)(x)
    for stage, level in enumerate(["P2", "P3", "P4", "P5"]):
        want = nchw_to_nhwc(expected.hidden_states[stage])
        delta = max_delta(keras.ops.convert_to_numpy(pyramid[level]), want)
        record_delta(f"transformers {config} {height}x{width} {level}", delta)
        assert delta < 1e-4, level


def test_backbone_from_bare_transformers_model(tmp_path, record_delta):
    reference = hf_pvt_v2("tiny", num_labels=None)
    reference.save_pretrained(tmp_path)
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(tmp_path))
    x = images(1, 96, 128)
    with torch.no_grad():
        want = nchw_to_nhwc(reference(to_torch(x)).last_hidden_state)
    delta = max_delta(keras.ops.convert_to_numpy(backbone(x)), want)
    record_delta("transformers PvtV2Model tiny 96x128 last stage", delta)
    assert delta < 1e-4


def test_classifier_checkpoint_into_backbone_drops_head(transformers_pair, tmp_path):
    reference, model = transformers_pair("b0")
    reference.save_pretrained(tmp_path)
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(tmp_path))
    x = images(1, 64, 64)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone(x)), keras.ops.convert_to_numpy(model.backbone(x))
    )


# --- timm and the original repository ---------------------------------------------------------

# Heads are not visible in weight shapes: a checkpoint without config gets PVT v2's (1, 2, 5, 8).
TIMM_SMALL_LINEAR = dict(
    embed_dims=[16, 32, 80, 128], depths=[1, 2, 2, 1], num_heads=[1, 2, 5, 8],
    mlp_ratios=[8, 8, 4, 4],
)


def timm_to_original(state_dict: dict) -> dict:
    """The original whai362 key names of a timm state dict (inverse of timm's filter)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.", "patch_embed1.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
        out[key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")] = value
    return out


@pytest.mark.parametrize(
    "name,kwargs,height,width",
    [("pvt_v2_b0", {}, 224, 224), ("pvt_v2_b0", {}, 197, 231),
     ("pvt_v2_b2_li", TIMM_SMALL_LINEAR, 100, 150)],
)
@pytest.mark.parametrize("layout", ["timm", "original"])
def test_timm_and_original_parity(tmp_path, record_delta, name, kwargs, height, width, layout):
    reference = timm_pvt_v2(name, num_classes=10, **kwargs)
    state_dict = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if layout == "timm":
        path = tmp_path / "model.safetensors"
        save_file(state_dict, str(path))
    else:
        from timm.models.pvt_v2 import checkpoint_filter_fn

        original = timm_to_original(state_dict)
        # Our reconstruction of the original layout is exactly what timm converts from.
        assert set(checkpoint_filter_fn(original, reference)) == set(state_dict)
        path = tmp_path / "pvt_v2.pth"
        torch.save(original, path)  # a zip pickle, read by the allow-list unpickler
    model = keras_pvt.PVTv2Classifier.from_preset(str(path))
    x = images(2, height, width, seed=width)
    with torch.no_grad():
        expected = reference(to_torch(x)).numpy()
    delta = max_delta(keras.ops.convert_to_numpy(model(x)), expected)
    record_delta(f"{layout} {name} {height}x{width} logits", delta)
    assert delta < 1e-5
