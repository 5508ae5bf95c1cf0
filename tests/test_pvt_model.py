"""PVT v1 model behaviour: any input size, the position-embedding layer, serialization round
trips, training, export, the named presets offline and the conversion script."""

import json
import runpy
import sys

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import keras_pvt
from keras_pvt import hub
from keras_pvt.layers import PositionEmbedding
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run
from tests.helpers.reference import images, to_torch
from tests.helpers.reference_pvt import PVT_CONFIGS, hf_pvt

SMALL = PVT_CONFIGS["small"]
# One input shape for the eager calls of this module (also the conversion script's): JAX
# compiles each op per new shape, so reusing a shape makes later calls cheap.
X = images(1, 224, 224)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def small_backbone(**kwargs):
    return keras_pvt.PVTBackbone(
        hidden_sizes=SMALL["hidden_sizes"], depths=SMALL["depths"],
        num_heads=SMALL["num_attention_heads"], mlp_ratios=SMALL["mlp_ratios"], **kwargs,
    )


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    converter = keras_pvt.PVTImageConverter(image_size=X.shape[1:3])
    return keras_pvt.PVTClassifier(
        backbone=small_backbone(), num_classes=5, class_names=list("abcde"),
        preprocessor=keras_pvt.PVTImageClassifierPreprocessor(converter),
    )


# --- Shapes and configuration ----------------------------------------------------------------


def test_one_model_runs_at_any_size(classifier):
    """320x192 here; 256x256, 197x231 and others in the parity tests."""
    backbone = classifier.backbone  # image_shape (None, None, 3)
    outputs = keras.Model(
        backbone.input, {**backbone.pyramid_outputs, "cls": backbone.cls_token_output}
    )
    for height, width in [(320, 192)]:
        result = outputs.predict(images(1, height, width), verbose=0)
        for level, stride, channels in zip(["P2", "P3", "P4", "P5"], [4, 8, 16, 32],
                                           SMALL["hidden_sizes"]):
            assert result[level].shape == (1, height // stride, width // stride, channels)
            assert np.all(np.isfinite(result[level]))
        assert result["cls"].shape == (1, 64)


def test_fixed_image_shape(classifier):
    assert classifier.minimum_image_size() == 32  # stage 1's 8x8 spatial reduction
    backbone = small_backbone(image_shape=(64, 96, 3))
    assert backbone.output_shape == (None, 2, 3, 64)
    assert backbone.pyramid_outputs["P2"].shape == (None, 16, 24, 8)
    assert backbone.cls_token_output.shape == (None, 64)


def test_invalid_configurations_are_explained():
    with pytest.raises(ValueError, match="sr_ratios\\[-1\\] must be 1"):
        small_backbone(sr_ratios=[8, 4, 2, 2])
    with pytest.raises(ValueError, match="one value per stage"):
        keras_pvt.PVTBackbone(num_heads=[1, 2, 5])
    with pytest.raises(ValueError, match="empty position-embedding grid"):
        small_backbone(position_embedding_shape=(16, 16))
    backbone = small_backbone()
    with pytest.raises(ValueError, match="pooling"):
        keras_pvt.PVTClassifier(backbone=backbone, num_classes=2, pooling="median")
    with pytest.raises(ValueError, match="class_names"):
        keras_pvt.PVTClassifier(backbone=backbone, num_classes=2, class_names=["a"])


def test_position_embedding_layer():
    layer = PositionEmbedding((3, 4), cls_token=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 2, 6)).astype("float32")
    tokens = numpy(layer(x))
    assert tokens.shape == (2, 1 + 5 * 2, 6)
    table = numpy(layer.embeddings)
    assert table.shape == (1, 1 + 3 * 4, 6)
    grid = torch.from_numpy(table[0, 1:].reshape(3, 4, 6)).permute(2, 0, 1)[None]
    resized = F.interpolate(grid, size=(5, 2), mode="bilinear", align_corners=False)
    want = x.reshape(2, 10, 6) + resized[0].permute(1, 2, 0).reshape(1, 10, 6).numpy()
    np.testing.assert_allclose(tokens[:, 1:], want, atol=1e-6)
    cls = numpy(layer.class_token)[0, 0] + table[0, 0]
    np.testing.assert_allclose(tokens[:, 0], np.broadcast_to(cls, (2, 6)), atol=1e-7)

    plain = PositionEmbedding(4)
    x = np.zeros((1, 4, 4, 3), "float32")
    np.testing.assert_array_equal(numpy(plain(x))[0], numpy(plain.embeddings)[0].reshape(4, 4, 3))
    clone = PositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="NHWC"):
        plain(np.zeros((1, 16, 3), "float32"))


def test_compiled_calls_follow_the_input_size(classifier):
    """`predict` compiles (tf.function / jax.jit; eager on torch) for the sizes the data
    has; on TensorFlow, also one graph traced with unknown (None) spatial dims serves
    every size."""
    backbone = classifier.backbone
    eager = numpy(backbone(X))
    np.testing.assert_allclose(backbone.predict(X, verbose=0), eager, atol=1e-5)
    x = X[:, :32, :64]
    assert backbone.predict(x, verbose=0).shape == (1, 1, 2, 64)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(
            lambda t: backbone(t), input_signature=[tf.TensorSpec((None, None, None, 3))]
        )
        np.testing.assert_allclose(traced(X).numpy(), eager, atol=1e-5)
        np.testing.assert_allclose(traced(x).numpy(), backbone.predict(x, verbose=0),
                                   atol=1e-5)


# --- Serialization ---------------------------------------------------------------------------


def test_config_round_trip(classifier):
    x = X
    clone = keras_pvt.PVTClassifier.from_config(classifier.get_config())
    clone.set_weights(classifier.get_weights())
    np.testing.assert_array_equal(numpy(clone(x)), numpy(classifier(x)))
    assert clone.class_names == list("abcde")
    backbone = classifier.backbone
    clone = keras_pvt.PVTBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()


def test_keras_file_round_trip(classifier, tmp_path):
    x = X
    path = tmp_path / "model.keras"
    classifier.save(path)
    restored = keras.saving.load_model(path)  # safe_mode stays on
    assert isinstance(restored, keras_pvt.PVTClassifier)
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))


def test_preset_round_trip(classifier, tmp_path):
    x = X
    classifier.save_to_preset(str(tmp_path))
    restored = keras_pvt.PVTClassifier.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))
    assert restored.class_names == list("abcde")
    backbone = keras_pvt.PVTBackbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(backbone(x)), numpy(classifier.backbone(x)))
    # A new head for transfer learning keeps the backbone weights.
    retargeted = keras_pvt.PVTClassifier.from_preset(str(tmp_path), num_classes=3)
    assert retargeted.output_shape == (None, 3)
    assert retargeted.class_names is None
    np.testing.assert_array_equal(numpy(retargeted.backbone(x)), numpy(classifier.backbone(x)))


def test_average_pooling_head(classifier):
    model = keras_pvt.PVTClassifier(backbone=classifier.backbone, num_classes=4, pooling="avg")
    x = X
    pooled = numpy(classifier.backbone(x)).mean(axis=(1, 2))
    kernel, bias = (numpy(w) for w in model.output_dense.weights)
    np.testing.assert_allclose(numpy(model(x)), pooled @ kernel + bias, atol=1e-5)
    clone = keras_pvt.PVTClassifier.from_config(model.get_config())
    assert clone.pooling == "avg"


def test_default_preprocessing():
    converter = keras_pvt.PVTClassifier.preprocessor_cls().image_converter
    assert isinstance(converter, keras_pvt.PVTImageConverter)
    config = converter.get_config()
    assert tuple(config["image_size"]) == (224, 224)
    assert (config["interpolation"], config["antialias"]) == ("bilinear", True)
    assert not config["crop_to_aspect_ratio"]
    pixel = np.array([[[[0.0, 128.0, 255.0]]]], "float32")
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    normalised = numpy(converter(keras.ops.image.resize(pixel, (224, 224))))
    np.testing.assert_allclose(normalised[0, 0, 0], (pixel[0, 0, 0] / 255 - mean) / std,
                               atol=1e-5)


def test_predict_preprocesses_raw_images(classifier):
    raw = np.random.default_rng(0).integers(0, 256, (1, 300, 200, 3)).astype("uint8")
    by_predict = classifier.predict(raw, verbose=0)
    resized = keras.ops.image.resize(raw.astype("float32"), X.shape[1:3], antialias=True)
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    normalised = (numpy(resized) / 255.0 - mean) / std
    np.testing.assert_allclose(by_predict, numpy(classifier(normalised)), atol=1e-4)


def test_decode_predictions(classifier):
    logits = np.array([[0.0, 3.0, 1.0, -1.0, 2.0]])
    top = classifier.decode_predictions(logits, top=3)[0]
    assert [(i, name) for i, name, _ in top] == [(1, "b"), (4, "e"), (2, "c")]


# --- Training and export ---------------------------------------------------------------------


def test_fit_reduces_the_loss():
    keras.utils.set_random_seed(1)
    # No dropout: the loss then decreases deterministically (and JAX compiles the step
    # several times faster).
    backbone = keras_pvt.PVTBackbone(
        hidden_sizes=[8, 16, 40, 64], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]
    )
    model = keras_pvt.PVTClassifier(backbone=backbone, num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = images(8, 64, 64, seed=3)
    y = np.array([0, 1] * 4)
    x[y == 1] += 1.0  # a learnable signal
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0).history["loss"]
    assert history[-1] < history[0], history


def test_export_saved_model(classifier, tmp_path):
    """`model.export` writes a TensorFlow SavedModel (from TensorFlow or JAX) that serves
    Keras' logits; an already normalised batch goes in, the preprocessor is not part of it.

    A fixed image size keeps keras' default JAX export (jax2tf) free of symbolic shapes;
    dynamic sizes are covered on TensorFlow by `test_compiled_calls_follow_the_input_size`.
    """
    model = keras_pvt.PVTClassifier(
        backbone=small_backbone(image_shape=X.shape[1:]), num_classes=5
    )
    model.set_weights(classifier.get_weights())
    path = tmp_path / "saved_model"
    if keras.backend.backend() == "torch":
        # keras cannot write a SavedModel from PyTorch (its route needs torch_xla): the call
        # fails with an error naming torch rather than writing anything.
        with pytest.raises(Exception, match="(?i)torch"):
            model.export(str(path))
        assert not (path / "saved_model.pb").exists()
        return
    model.export(str(path))
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
    np.testing.assert_allclose(loaded.serve(X).numpy(), numpy(classifier(X)), atol=1e-5)


# --- Named presets (offline) and the conversion script ---------------------------------------

PREDICT = """
import sys, numpy as np, keras, keras_pvt
model = keras_pvt.PVTClassifier.from_preset(sys.argv[1])
logits = keras.Model(model.input, model.output)  # normalised input: no preprocessing
np.save(sys.argv[3], logits.predict(np.load(sys.argv[2]), verbose=0))
print(model.class_names[:2])
"""


def test_preset_table():
    presets = keras_pvt.PVTClassifier.presets
    assert {name: p["params"] for name, p in presets.items()} == {
        "pvt_tiny": 13_229_288, "pvt_small": 24_485_864,
        "pvt_medium": 44_208_104, "pvt_large": 61_369_320,
    }
    assert presets["pvt_large"]["hf_repo"] == "Zetatech/pvt-large-224"
    assert not set(presets) & set(keras_pvt.PVTv2Classifier.presets)
    with pytest.raises(keras_pvt.PresetError, match="pvt_large, pvt_medium, pvt_small, pvt_tiny"):
        keras_pvt.PVTClassifier.from_preset("pvt_huge")


def test_preset_parameter_counts_match_transformers():
    from transformers import PvtConfig, PvtForImageClassification

    depths = {"tiny": [2, 2, 2, 2], "small": [3, 4, 6, 3], "medium": [3, 4, 18, 3],
              "large": [3, 8, 27, 3]}
    for name, params in ((n, p["params"]) for n, p in keras_pvt.PVTClassifier.presets.items()):
        with torch.device("meta"):
            reference = PvtForImageClassification(
                PvtConfig(num_labels=1000, depths=depths[name.removeprefix("pvt_")]))
        assert params == sum(p.numel() for p in reference.parameters()), name


def test_named_preset_offline(tmp_path, record_delta):
    reference = hf_pvt("small", num_labels=4)
    checkpoint = tmp_path / "ckpt"
    reference.save_pretrained(checkpoint)
    hf_cache, keras_home = tmp_path / "hf", tmp_path / "keras"
    place_in_hf_cache(hf_cache, "Zetatech/pvt-tiny-224", checkpoint)
    env = offline_env(hf_cache, keras_home)
    x = images(1, 224, 224)
    np.save(tmp_path / "x.npy", x)
    result = run([sys.executable, "-c", PREDICT, "pvt_tiny", str(tmp_path / "x.npy"),
                  str(tmp_path / "y.npy")], env)
    assert "['label_0', 'label_1']" in result.stdout
    with torch.no_grad():
        expected = reference(to_torch(x)).logits.numpy()
    delta = float(np.abs(np.load(tmp_path / "y.npy") - expected).max())
    record_delta("named preset pvt_tiny (offline HF cache) logits", delta)
    assert delta < 1e-4
    assert hub.verify_entry(keras_home / "keras_pvt" / "pvt_tiny") is None


def test_convert_pvt_script(tmp_path, monkeypatch, capsys):
    """The script's own code, run in this process (`runpy`) to share its compiled kernels."""
    reference = hf_pvt("small", num_labels=1000)
    checkpoint = tmp_path / "pvt_small_random"
    reference.save_pretrained(checkpoint)
    monkeypatch.setattr(sys, "argv", [
        "convert_pvt.py", "--presets", "pvt_tiny", "--source", str(checkpoint),
        "--output-dir", str(tmp_path / "out"),
    ])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends conversion/
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "conversion" / "convert_pvt.py"), run_name="__main__")
    assert exited.value.code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["preset"] == "pvt_tiny"
    assert figures["max_abs_logit_delta"] < 1e-4
    assert figures["params"] == sum(p.numel() for p in reference.parameters())
    assert (tmp_path / "out" / "pvt_tiny" / "task.json").is_file()
