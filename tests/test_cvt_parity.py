"""CvT checkpoint parity: Keras outputs equal transformers' CvT run in the same test.

Each checkpoint goes through the path real ones use: `save_pretrained` to disk, then
`from_preset(path)` (read -> identify -> key table -> keras-hub preset -> load). Reference
models have random weights, LayerNorm/BatchNorm affines and BatchNorm running statistics.
"""

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import keras_pvt
from keras_pvt.convert.cvt import backbone_kwargs_from_transformers
from keras_pvt.layers.conv_attention import average_pool_ceil
from tests.helpers.reference import images, nchw_to_nhwc, to_torch
from tests.helpers.reference_cvt import CVT_CONFIGS, hf_cvt

SIZES = {
    "small": [(224, 224), (197, 231)],
    "small_variants": [(197, 231)],
    # 197x231 gives odd maps: ceil-mode pooling windows hang over the padding.
    "small_avg_linear": [(197, 231)],
    "13": [(224, 224), (197, 231)],
}
CASES = [(config, h, w) for config, sizes in SIZES.items() for h, w in sizes]
TOLERANCE = 1e-4


def max_delta(a, b) -> float:
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def keras_outputs(model, x) -> dict:
    """Logits, pyramid maps and cls token in one (compiled) pass."""
    backbone = model.backbone
    outputs = {"logits": model.output, **backbone.pyramid_outputs}
    if backbone.cls_token_output is not None:
        outputs["cls"] = backbone.cls_token_output
    return keras.Model(model.input, outputs).predict(x, batch_size=len(x), verbose=0)


def reference_outputs(reference, x) -> dict:
    with torch.no_grad():
        hidden = {}
        handle = reference.cvt.register_forward_hook(
            lambda module, args, out: hidden.update(cls=out.cls_token_value)
        )
        out = reference(to_torch(x), output_hidden_states=True)
        handle.remove()
    result = {"logits": out.logits.numpy()}
    for stage, state in enumerate(out.hidden_states):
        result[f"P{stage + 2}"] = nchw_to_nhwc(state)
    if hidden["cls"] is not None:
        result["cls"] = hidden["cls"][:, 0].numpy()
    return result


@pytest.fixture(scope="module")
def transformers_pair(tmp_path_factory):
    """(reference, Keras classifier, checkpoint dir) per config, converted once per module."""
    cache = {}

    def get(config):
        if config not in cache:
            reference = hf_cvt(config, num_labels=10)
            path = tmp_path_factory.mktemp(f"cvt_{config}")
            reference.save_pretrained(path)
            cache[config] = (reference, keras_pvt.CvTClassifier.from_preset(str(path)), path)
        return cache[config]

    return get


@pytest.mark.parametrize("config,height,width", CASES)
def test_transformers_parity(transformers_pair, record_delta, config, height, width):
    reference, model, _ = transformers_pair(config)
    x = images(2, height, width, seed=height)
    want = reference_outputs(reference, x)
    got = keras_outputs(model, x)
    has_cls = CVT_CONFIGS[config].get("cls_token", [False, False, True])[-1]
    assert set(got) == set(want) == {"logits", "P2", "P3", "P4"} | ({"cls"} if has_cls else set())
    for name in sorted(want):
        delta = max_delta(got[name], want[name])
        record_delta(f"transformers cvt {config} {height}x{width} {name}", delta)
        assert delta < TOLERANCE, name


def test_cvt_13_parameter_count(transformers_pair):
    reference, model, _ = transformers_pair("13")  # 10 classes
    expected = sum(p.numel() for p in reference.parameters())
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == expected == 19_997_480 - (1000 - 10) * (384 + 1)
    # keras also counts the BatchNorm running statistics (torch buffers) as weights.
    statistics = sum(b.numel() for name, b in reference.named_buffers()
                     if not name.endswith("num_batches_tracked"))
    assert model.count_params() == expected + statistics


def test_bare_model_into_backbone(transformers_pair, tmp_path):
    """A `CvtModel` checkpoint (no head) loads into `CvTBackbone` with exactly the weights of
    the classifier's backbone, whose outputs (maps and cls token) are checked above."""
    reference, model, _ = transformers_pair("small")
    reference.cvt.save_pretrained(tmp_path)  # a CvtModel
    backbone = keras_pvt.CvTBackbone.from_preset(str(tmp_path))
    assert [w.path for w in backbone.weights] == [w.path for w in model.backbone.weights]
    for mine, theirs in zip(backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))


def test_classifier_checkpoint_into_backbone_drops_head(transformers_pair):
    _, model, path = transformers_pair("small")
    backbone = keras_pvt.CvTBackbone.from_preset(str(path))
    for mine, theirs in zip(backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))


def test_weights_file_without_config(tmp_path):
    """A lone weights file: the architecture is read off the weight shapes (CvT-13's here,
    compared with its config; only the training-time stochastic depth is not visible)."""
    from transformers import CvtConfig, CvtForImageClassification

    from keras_pvt.convert import identify, read_checkpoint

    with torch.device("meta"):
        reference = CvtForImageClassification(CvtConfig(num_labels=1000))
    state_dict = {k: np.zeros(v.shape, "float32") for k, v in reference.state_dict().items()}
    path = tmp_path / "cvt_13.safetensors"
    from safetensors.numpy import save_file as save_numpy

    save_numpy(state_dict, str(path))
    family, layout, weights = identify(read_checkpoint(path))
    assert (family.name, layout) == ("cvt", "transformers")
    inferred = family.kwargs_from_weights(weights, layout)
    configured = backbone_kwargs_from_transformers(reference.config.to_dict())
    # Everything but dropout rates and initialisation is read off the weights.
    assert set(configured) - set(inferred) == {
        "drop_path_rate", "attention_dropout", "hidden_dropout", "initializer_range",
        "image_shape"}
    assert inferred == {name: configured[name] for name in inferred}


def test_weights_file_without_config_needs_64_channel_heads(tmp_path):
    reference = hf_cvt("small", num_labels=3)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="64 channels per head.*stage 0 has 16 channels"):
        keras_pvt.CvTClassifier.from_preset(str(path))


def test_backbone_kwargs_cover_cvt_config():
    """Every CvtConfig field that shapes the computation has a CvTBackbone argument."""
    from transformers import CvtConfig, PreTrainedConfig

    config = CvtConfig(**CVT_CONFIGS["small_variants"]).to_dict()
    kwargs = backbone_kwargs_from_transformers(config)
    backbone = keras_pvt.CvTBackbone(**kwargs)
    assert backbone.kernel_qkv == [3, 5, 3] and backbone.stride_kv == [1, 3, 2]
    assert backbone.patch_paddings == [0, 1, 0] and backbone.qkv_bias == [False, True, False]
    assert backbone.layer_norm_epsilon == 1e-5  # not config.layer_norm_eps (unused there)
    used = {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_sizes", "patch_stride",
            "patch_padding", "qkv_projection_method", "kernel_qkv", "padding_q", "stride_q",
            "padding_kv", "stride_kv", "qkv_bias", "cls_token", "drop_path_rate",
            "attention_drop_rate", "drop_rate", "initializer_range", "num_channels"}
    not_used = {"layer_norm_eps"}  # transformers builds nn.LayerNorm(dim): eps 1e-5
    cvt_fields = set(CvtConfig().to_dict()) - set(PreTrainedConfig().to_dict())
    assert cvt_fields <= used | not_used, cvt_fields - used - not_used


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (3, 3, 1), (3, 3, 0), (2, 2, 1),
                                                   (5, 3, 2), (3, 1, 1)])
def test_average_pool_ceil_matches_torch(kernel, stride, padding):
    """The `avg` projection equals torch's AvgPool2d(ceil_mode=True), including the windows
    that hang over the padding (and the last one torch drops) for every small size."""
    pool = torch.nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)
    for height, width in [(2, 3), (4, 5), (7, 9), (13, 15)]:
        if min(height, width) + 2 * padding < kernel:
            continue
        x = np.random.default_rng(height).standard_normal((2, height, width, 4))
        x = x.astype("float32")
        with torch.no_grad():
            want = nchw_to_nhwc(pool(to_torch(x)))
        got = keras.ops.convert_to_numpy(average_pool_ceil(x, kernel, stride, padding))
        assert max_delta(got, want) < 1e-6, (height, width)


def test_invalid_attention_configuration():
    with pytest.raises(ValueError, match="stride_q must be 1"):
        keras_pvt.layers.ConvAttention(16, 2, stride_q=2)
    with pytest.raises(ValueError, match="Unknown qkv projection method"):
        keras_pvt.layers.ConvAttention(16, 2, method="conv")
    with pytest.raises(ValueError, match="divisible"):
        keras_pvt.layers.ConvAttention(16, 3)
    with pytest.raises(ValueError, match="one value per stage"):
        keras_pvt.CvTBackbone(depths=[1, 1, 1], hidden_sizes=[16, 32])
