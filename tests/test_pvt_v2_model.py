"""PVT v2 model behaviour: any input size, serialization round trips, sizes, precision."""

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from tests.helpers.reference import PVT_V2_CONFIGS, hf_pvt_v2, images


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def tiny_backbone(**kwargs):
    config = PVT_V2_CONFIGS["tiny"]
    return keras_pvt.PVTv2Backbone(
        hidden_sizes=config["hidden_sizes"], depths=config["depths"],
        num_heads=config["num_attention_heads"], mlp_ratios=config["mlp_ratios"], **kwargs,
    )


@pytest.fixture(scope="module")
def classifier():
    backbone = tiny_backbone()
    return keras_pvt.PVTv2Classifier(
        backbone=backbone, num_classes=5, class_names=list("abcde"),
        preprocessor=keras_pvt.PVTv2ImageClassifierPreprocessor(),
    )


def test_one_model_runs_at_any_size():
    backbone = keras_pvt.PVTv2Backbone()  # b0, image_shape (None, None, 3)
    pyramid = keras.Model(backbone.input, backbone.pyramid_outputs)
    for height, width in [(64, 64), (224, 224), (320, 256)]:
        outputs = pyramid(images(1, height, width))
        for level, stride in zip(["P2", "P3", "P4", "P5"], [4, 8, 16, 32]):
            assert outputs[level].shape[1:3] == (-(-height // stride), -(-width // stride))
        assert backbone(images(1, height, width)).shape == (1, height // 32, width // 32, 256)


def test_fixed_image_shape():
    backbone = tiny_backbone(image_shape=(96, 64, 3))
    assert backbone.output_shape == (None, 3, 2, 32)
    assert backbone.pyramid_outputs["P2"].shape == (None, 24, 16, 8)


def test_config_round_trip(classifier):
    x = images(2, 64, 96)
    clone = keras_pvt.PVTv2Classifier.from_config(classifier.get_config())
    clone.set_weights(classifier.get_weights())
    np.testing.assert_array_equal(numpy(clone(x)), numpy(classifier(x)))
    assert clone.class_names == list("abcde")
    backbone = classifier.backbone
    clone = keras_pvt.PVTv2Backbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()


def test_keras_file_round_trip(classifier, tmp_path):
    x = images(2, 64, 96)
    path = tmp_path / "model.keras"
    classifier.save(path)
    restored = keras.saving.load_model(path)  # safe_mode stays on
    assert isinstance(restored, keras_pvt.PVTv2Classifier)
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))


def test_preset_round_trip(classifier, tmp_path):
    x = images(2, 64, 96)
    classifier.save_to_preset(str(tmp_path))
    restored = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))
    assert restored.class_names == list("abcde")
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(backbone(x)), numpy(classifier.backbone(x)))
    # A new head for transfer learning keeps the backbone weights.
    retargeted = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path), num_classes=3)
    assert retargeted.output_shape == (None, 3)
    np.testing.assert_array_equal(numpy(retargeted.backbone(x)), numpy(classifier.backbone(x)))


def test_predict_preprocesses_raw_images(classifier):
    raw = np.random.default_rng(0).integers(0, 256, (2, 300, 200, 3)).astype("uint8")
    by_predict = classifier.predict(raw, verbose=0)
    resized = keras.ops.image.resize(raw.astype("float32"), (224, 224), antialias=True)
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    normalised = (numpy(resized) / 255.0 - mean) / std
    np.testing.assert_allclose(by_predict, numpy(classifier(normalised)), atol=1e-4)


def test_decode_predictions(classifier):
    logits = np.array([[0.0, 3.0, 1.0, -1.0, 2.0]])
    top = classifier.decode_predictions(logits, top=3)[0]
    assert [(i, name) for i, name, _ in top] == [(1, "b"), (4, "e"), (2, "c")]
    probabilities = np.exp(logits) / np.exp(logits).sum()
    assert top[0][2] == pytest.approx(probabilities[0, 1])
    with pytest.raises(ValueError, match="shape"):
        classifier.decode_predictions(np.zeros((1, 4)))


@pytest.mark.parametrize("config", ["b0", "b2_linear_full"])
def test_parameter_count_equals_reference(config):
    from transformers import PvtV2Config, PvtV2ForImageClassification

    if config == "b0":
        kwargs = PVT_V2_CONFIGS["b0"]
    else:
        kwargs = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3],
                      num_attention_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
                      linear_attention=True)
    with torch.device("meta"):
        reference = PvtV2ForImageClassification(PvtV2Config(num_labels=1000, **kwargs))
    expected = sum(p.numel() for p in reference.parameters())
    from keras_pvt.convert.pvt_v2 import backbone_kwargs_from_transformers

    backbone = keras_pvt.PVTv2Backbone(**backbone_kwargs_from_transformers(kwargs))
    model = keras_pvt.PVTv2Classifier(backbone=backbone, num_classes=1000)
    assert model.count_params() == expected
    if config == "b0":
        assert expected == 3_666_760


def test_preset_table_parameter_counts_match_transformers():
    from transformers import PvtV2Config, PvtV2ForImageClassification

    variants = {
        "b0": ([32, 64, 160, 256], [2, 2, 2, 2], [8, 8, 4, 4], False),
        "b1": ([64, 128, 320, 512], [2, 2, 2, 2], [8, 8, 4, 4], False),
        "b2": ([64, 128, 320, 512], [3, 4, 6, 3], [8, 8, 4, 4], False),
        "b2_linear": ([64, 128, 320, 512], [3, 4, 6, 3], [8, 8, 4, 4], True),
        "b3": ([64, 128, 320, 512], [3, 4, 18, 3], [8, 8, 4, 4], False),
        "b4": ([64, 128, 320, 512], [3, 8, 27, 3], [8, 8, 4, 4], False),
        "b5": ([64, 128, 320, 512], [3, 6, 40, 3], [4, 4, 4, 4], False),
    }
    presets = keras_pvt.PVTv2Classifier.presets
    for name, (sizes, depths, ratios, linear) in variants.items():
        with torch.device("meta"):
            reference = PvtV2ForImageClassification(PvtV2Config(
                num_labels=1000, hidden_sizes=sizes, depths=depths, mlp_ratios=ratios,
                linear_attention=linear))
        assert presets[f"pvt_v2_{name}"]["params"] == sum(
            p.numel() for p in reference.parameters()), name


def test_mixed_bfloat16_stays_close_to_float32(tmp_path, record_delta):
    reference = hf_pvt_v2("b0", num_labels=10)
    reference.save_pretrained(tmp_path)
    x = images(2, 128, 160)
    full = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path))
    mixed = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path), dtype="mixed_bfloat16")
    assert mixed.backbone.compute_dtype == "bfloat16"
    assert mixed.backbone.variable_dtype == "float32"
    want = numpy(full(x))
    got = numpy(mixed(x)).astype("float32")
    delta = float(np.abs(got - want).max())
    record_delta("mixed_bfloat16 vs float32 b0 128x160 logits", delta)
    assert np.all(np.isfinite(got))
    assert delta < 2e-2
    features = numpy(keras.ops.cast(mixed.backbone(x), "float32"))
    relative = np.abs(features - numpy(full.backbone(x))).max() / np.abs(features).max()
    record_delta("mixed_bfloat16 vs float32 b0 128x160 P5 (relative)", relative)
    assert relative < 2e-2
