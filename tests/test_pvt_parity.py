"""PVT v1 checkpoint parity: Keras outputs equal the reference PyTorch model run in the test.

Each checkpoint goes through the path real ones use: written to disk in its source layout,
then `from_preset(path)` (read -> identify -> key table -> keras-hub preset -> load).

References: at 224x224 (the config's `image_size`) transformers' `PvtForImageClassification`
as is. At other sizes transformers raises (its position-embedding "interpolation" reshapes
the stored grid to the new one), so the reference is the same transformers model with the
original repository's bilinear resize of the stored grid swapped in
(`tests/helpers/reference_pvt.py::original_position_interpolation`).
"""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import keras_pvt
from keras_pvt.layers import bilinear_resize
from tests.helpers.reference import images, to_torch
from tests.helpers.reference_pvt import (
    hf_pvt,
    original_position_interpolation,
    original_state_dict,
    use_original_epsilons,
)

TOLERANCE = 1e-4


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def max_delta(a, b) -> float:
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference, Keras classifier) per config, converted once per module; the full-size
    tiny has ImageNet's 1000 classes."""
    cache = {}

    def get(config):
        if config not in cache:
            reference = hf_pvt(config, num_labels=1000 if config == "tiny" else 10)
            path = tmp_path_factory.mktemp(f"hf_pvt_{config}")
            reference.save_pretrained(path)
            cache[config] = (reference, keras_pvt.PVTClassifier.from_preset(str(path)), path)
        return cache[config]

    return get


def check_outputs(reference, model, x, record_delta, label, tolerance=TOLERANCE):
    """Logits, the class token and the four stage maps against the reference."""
    with torch.no_grad():
        expected = reference(to_torch(x), output_hidden_states=True)
    backbone = model.backbone
    # One compiled forward pass (tf.function / jax.jit) for every output: on JAX, eager
    # calls compile each op separately, which is several times slower for a new shape.
    outputs = keras.Model(
        model.input,
        {"logits": model.output, "cls": backbone.cls_token_output, **backbone.pyramid_outputs},
    ).predict(x, verbose=0)
    delta = max_delta(numpy(outputs["logits"]), expected.logits.numpy())
    record_delta(f"{label} logits", delta)
    assert delta < tolerance
    # hidden_states: one per block, then the final LayerNorm's output (class token first).
    depths = np.cumsum(backbone.depths)
    final = expected.hidden_states[-1].numpy()
    delta = max_delta(numpy(outputs["cls"]), final[:, 0])
    record_delta(f"{label} class token", delta)
    assert delta < tolerance
    for stage, level in enumerate(["P2", "P3", "P4", "P5"]):
        got = numpy(outputs[level])
        batch, height, width, channels = got.shape
        if stage < 3:
            want = expected.hidden_states[depths[stage] - 1].numpy()
        else:
            want = final[:, 1:]
        delta = max_delta(got.reshape(batch, height * width, channels), want)
        record_delta(f"{label} {level}", delta)
        assert delta < tolerance, level


@pytest.mark.parametrize("config", ["small", "tiny"])
def test_transformers_parity_at_224(converted, record_delta, config):
    reference, model, _ = converted(config)
    check_outputs(reference, model, images(1, 224, 224, seed=1), record_delta,
                  f"transformers pvt {config} 224x224")
    assert model.count_params() == sum(p.numel() for p in reference.parameters())
    if config == "tiny":
        assert model.count_params() == 13_229_288  # pvt_tiny's published size


@pytest.mark.parametrize("height,width", [(256, 256), (197, 231)])
def test_parity_off_224_with_original_interpolation(converted, record_delta, height, width):
    reference, model, _ = converted("small")
    x = images(1, height, width, seed=height + width)
    with pytest.raises(RuntimeError):  # transformers' own interpolation fails off 224
        with torch.no_grad():
            reference(to_torch(x))
    with original_position_interpolation():
        check_outputs(reference, model, x, record_delta,
                      f"original-interpolation pvt small {height}x{width}")


def test_original_interpolation_is_identity_at_224(converted):
    reference, _, _ = converted("small")
    x = to_torch(images(1, 224, 224))
    with torch.no_grad():
        plain = reference(x).logits
        with original_position_interpolation():
            resized = reference(x).logits
    torch.testing.assert_close(resized, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    "grid,size",
    [((7, 7), (8, 8)), ((7, 7), (10, 6)), ((14, 14), (6, 7)), ((5, 9), (13, 4)),
     ((56, 56), (80, 48)), ((7, 7), (1, 1))],
)
def test_bilinear_resize_matches_torch(grid, size):
    values = np.random.default_rng(0).standard_normal((*grid, 5)).astype("float32")
    want = F.interpolate(
        torch.from_numpy(values).permute(2, 0, 1)[None], size=size, mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0).numpy()
    got = numpy(bilinear_resize(keras.ops.convert_to_tensor(values), size))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # keras' own resize (bilinear, no antialiasing) follows the same convention.
    keras_resize = keras.ops.image.resize(values[None], size, interpolation="bilinear",
                                          antialias=False)[0]
    np.testing.assert_allclose(numpy(keras_resize), want, atol=1e-5)


def test_bilinear_resize_at_the_stored_size_is_exact():
    values = np.random.default_rng(1).standard_normal((14, 9, 4)).astype("float32")
    got = numpy(bilinear_resize(keras.ops.convert_to_tensor(values), (14, 9)))
    np.testing.assert_array_equal(got, values)


def test_bare_transformers_model_into_backbone(tmp_path, record_delta):
    """A `PvtModel` (no head) trained at 128x128: transformers runs natively at its own
    `image_size`, and the Keras position grids (32, 16, 8, 4) follow the config."""
    reference = hf_pvt("small", num_labels=None, image_size=128)
    reference.save_pretrained(tmp_path)
    backbone = keras_pvt.PVTBackbone.from_preset(str(tmp_path))
    assert backbone.position_embedding_shape == (128, 128)
    x = images(1, 128, 128)
    with torch.no_grad():
        want = reference(to_torch(x)).last_hidden_state.numpy()
    outputs = keras.Model(backbone.input, [backbone.output, backbone.cls_token_output])
    feature_map, cls = outputs.predict(x, verbose=0)
    assert feature_map.shape == (1, 4, 4, 64)
    delta = max(max_delta(feature_map.reshape(1, 16, 64), want[:, 1:]),
                max_delta(cls, want[:, 0]))
    record_delta("transformers PvtModel small (image_size 128) 128x128 last stage", delta)
    assert delta < TOLERANCE


def test_classifier_checkpoint_into_backbone_drops_head(converted):
    _, model, path = converted("small")
    backbone = keras_pvt.PVTBackbone.from_preset(str(path))
    assert len(backbone.weights) == len(model.backbone.weights)
    for loaded, expected in zip(backbone.weights, model.backbone.weights):
        assert loaded.path == expected.path
        np.testing.assert_array_equal(numpy(loaded), numpy(expected))


def test_transformers_weights_without_config(converted, tmp_path):
    """A bare safetensors file: the architecture is read off the weight shapes."""
    reference, model, _ = converted("small")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = keras_pvt.PVTClassifier.from_preset(str(path))
    assert loaded.backbone.get_config() == {**model.backbone.get_config(),
                                            "name": loaded.backbone.name}
    # Same architecture and the same values in every variable: the same model.
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for got, want in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(numpy(got), numpy(want))


def _original_keys(depths, sr_ratios) -> set[str]:
    """The state-dict keys of whai362/PVT's `PyramidVisionTransformer` (classification)."""
    keys = {"cls_token", "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i, (depth, sr) in enumerate(zip(depths, sr_ratios), start=1):
        keys |= {f"patch_embed{i}.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
        keys.add(f"pos_embed{i}")
        modules = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
        if sr > 1:
            modules += ["attn.sr", "attn.norm"]
        keys |= {f"block{i}.{j}.{m}.{p}" for j in range(depth) for m in modules
                 for p in ("weight", "bias")}
    return keys


def test_original_repository_layout(converted, tmp_path, record_delta):
    reference, _, _ = converted("small")
    state_dict = original_state_dict(reference)
    assert set(state_dict) == _original_keys(reference.config.depths, [8, 4, 2, 1])
    path = tmp_path / "pvt_small.pth"
    torch.save(state_dict, path)  # a zip pickle, read by the allow-list unpickler
    model = keras_pvt.PVTClassifier.from_preset(str(path))
    backbone = model.backbone
    assert (backbone.patch_norm_epsilon, backbone.reduction_norm_epsilon) == (1e-5, 1e-5)
    assert backbone.layer_norm_epsilon == 1e-6
    # The same weights with the original's epsilons and interpolation.
    original = use_original_epsilons(hf_pvt("small", num_labels=10))
    original.load_state_dict(reference.state_dict())
    with original_position_interpolation():
        check_outputs(original, model, images(1, 197, 231, seed=7), record_delta,
                      "original layout pvt small 197x231")


def test_layouts_are_not_confused_with_pvt_v2(converted):
    from keras_pvt.convert import Checkpoint, identify
    from keras_pvt.convert.pvt import detect_layout as detect_v1
    from keras_pvt.convert.pvt_v2 import detect_layout as detect_v2
    from tests.helpers.reference import hf_pvt_v2

    reference, _, _ = converted("small")
    v1_transformers = {k.removeprefix("pvt."): v for k, v in reference.state_dict().items()}
    v1_original = original_state_dict(reference)
    v2_transformers = {k.removeprefix("pvt_v2."): v
                       for k, v in hf_pvt_v2("tiny", num_labels=4).state_dict().items()}
    # PVT v2's original layout: the same names, no position embeddings, a depthwise conv.
    v2_original = {k: v for k, v in v1_original.items()
                   if not k.startswith(("pos_embed", "cls_token"))}
    v2_original["block1.0.mlp.dwconv.dwconv.weight"] = torch.zeros(1)

    assert (detect_v1(v1_transformers), detect_v2(v1_transformers)) == ("transformers", None)
    assert (detect_v1(v1_original), detect_v2(v1_original)) == ("original", None)
    assert (detect_v1(v2_transformers), detect_v2(v2_transformers)) == (None, "transformers")
    assert (detect_v1(v2_original), detect_v2(v2_original)) == (None, "original")
    for state_dict, family, layout in [(reference.state_dict(), "pvt", "transformers"),
                                       (v1_original, "pvt", "original")]:
        found = identify(Checkpoint(path=None, weights_path=None, state_dict=state_dict))
        assert (found[0].name, found[1]) == (family, layout)
