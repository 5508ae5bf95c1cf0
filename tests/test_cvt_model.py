"""CvT model behaviour: sizes and cls token, round trips, training, export, preprocessing
against transformers' ConvNext processor, presets, the named preset offline and the
conversion script."""

import json
import sys

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt import hub
from keras_pvt.convert.cvt import PRESETS as CVT_PRESETS
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run
from tests.helpers.reference import images, to_torch
from tests.helpers.reference_cvt import hf_cvt

SMALL = dict(hidden_sizes=[16, 32, 48], depths=[1, 1, 2], num_heads=[1, 2, 3])
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def small_backbone(**kwargs):
    return keras_pvt.CvTBackbone(**SMALL, **kwargs)


@pytest.fixture(scope="module")
def classifier():
    # A direct resize to the size the tests call the model with: JAX then compiles each
    # operation for one input shape only.
    converter = keras_pvt.CvTImageConverter(image_size=(64, 96), crop_pct=None)
    return keras_pvt.CvTClassifier(
        backbone=small_backbone(), num_classes=5, class_names=list("abcde"),
        preprocessor=keras_pvt.CvTImageClassifierPreprocessor(converter),
    )


def test_outputs_at_any_size(classifier):
    backbone = classifier.backbone
    probe = keras.Model(backbone.input, {**backbone.pyramid_outputs,
                                         "out": backbone.output,
                                         "cls": backbone.cls_token_output})
    height, width = 64, 96  # parity tests run other sizes (224x224, 197x231)
    outputs = {k: numpy(v) for k, v in probe(images(2, height, width)).items()}
    # Token embeddings: 7x7 stride 4 padding 2, then 3x3 stride 2 padding 1 (twice).
    h, w = (height - 3) // 4 + 1, (width - 3) // 4 + 1
    for level, channels in zip(["P2", "P3", "P4"], [16, 32, 48]):
        assert outputs[level].shape == (2, h, w, channels), level
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    np.testing.assert_array_equal(outputs["out"], outputs["P4"])
    assert outputs["cls"].shape == (2, 48)
    assert backbone.minimum_image_size() == 3
    for size in [(3, 5), (131, 97)]:
        assert probe.compute_output_spec(keras.KerasTensor((1, *size, 3)))["P4"].shape[1:3] == \
            tuple((((s - 3) // 4 + 1 - 1) // 2 + 1 - 1) // 2 + 1 for s in size)


def test_fixed_image_shape():
    backbone = small_backbone(image_shape=(96, 64, 3))
    assert backbone.output_shape == (None, 6, 4, 48)
    assert backbone.pyramid_outputs["P2"].shape == (None, 24, 16, 16)
    assert backbone.cls_token_output.shape == (None, 48)


def test_minimum_image_size_names_the_key_value_projection():
    # 4x4 patches without padding, then 3x3 unpadded key/value projections: 12 pixels.
    backbone = small_backbone(patch_sizes=[4, 3, 3], patch_paddings=[0, 1, 1],
                              padding_kv=[0, 1, 1])
    assert backbone.minimum_image_size() == 12
    with pytest.raises(ValueError, match="at least 12x12 pixels.*stage 1's 3x3 key/value"):
        backbone(np.zeros((1, 11, 64, 3), "float32"))


def test_pooling_follows_the_cls_token():
    no_cls = small_backbone(cls_token=False)
    assert no_cls.cls_token_output is None
    assert keras_pvt.CvTClassifier(no_cls, num_classes=2).pooling == "avg"
    with pytest.raises(ValueError, match="needs a backbone with a class token"):
        keras_pvt.CvTClassifier(no_cls, num_classes=2, pooling="token")
    with pytest.raises(ValueError, match="Unknown `pooling` 'median'"):
        keras_pvt.CvTClassifier(small_backbone(), num_classes=2, pooling="median")
    with pytest.raises(ValueError, match="class_names has 1 entries"):
        keras_pvt.CvTClassifier(small_backbone(), num_classes=2, class_names=["a"])


def test_config_round_trip(classifier):
    x = images(2, 64, 96)
    clone = keras_pvt.CvTClassifier.from_config(classifier.get_config())
    clone.set_weights(classifier.get_weights())
    np.testing.assert_array_equal(numpy(clone(x)), numpy(classifier(x)))
    assert clone.class_names == list("abcde") and clone.pooling == "token"
    backbone = classifier.backbone
    clone = keras_pvt.CvTBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()
    converter = keras_pvt.CvTImageConverter(image_size=(256, 256), crop_pct=0.9)
    restored = keras_pvt.CvTImageConverter.from_config(converter.get_config())
    assert (restored.crop_pct, restored.image_size, restored.interpolation) == (
        0.9, (256, 256), "bicubic")


def test_keras_file_round_trip(classifier, tmp_path):
    x = images(2, 64, 96)
    path = tmp_path / "model.keras"
    classifier.save(path)
    restored = keras.saving.load_model(path)  # safe_mode stays on
    assert isinstance(restored, keras_pvt.CvTClassifier)
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))
    assert restored.class_names == list("abcde")


def test_preset_round_trip(classifier, tmp_path):
    x = images(2, 64, 96)
    classifier.save_to_preset(str(tmp_path))
    restored = keras_pvt.CvTClassifier.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(restored(x)), numpy(classifier(x)))
    assert restored.class_names == list("abcde")
    backbone = keras_pvt.CvTBackbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(numpy(backbone(x)), numpy(classifier.backbone(x)))
    # A new head for transfer learning keeps the backbone weights.
    retargeted = keras_pvt.CvTClassifier.from_preset(str(tmp_path), num_classes=3)
    assert retargeted.output_shape == (None, 3) and retargeted.class_names is None
    np.testing.assert_array_equal(numpy(retargeted.backbone(x)), numpy(classifier.backbone(x)))


def test_decode_predictions(classifier):
    logits = np.array([[0.0, 3.0, 1.0, -1.0, 2.0]])
    top = classifier.decode_predictions(logits, top=3)[0]
    assert [(i, name) for i, name, _ in top] == [(1, "b"), (4, "e"), (2, "c")]
    probabilities = np.exp(logits) / np.exp(logits).sum()
    assert top[0][2] == pytest.approx(probabilities[0, 1])


def tiny_backbone(**kwargs):
    return keras_pvt.CvTBackbone(hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
                                 num_heads=[1, 2, 3], **kwargs)


def test_fit_updates_batch_norm_statistics_unless_frozen():
    keras.utils.set_random_seed(0)
    backbone = tiny_backbone()
    model = keras_pvt.CvTClassifier(backbone, num_classes=2)
    x = images(16, 32, 32, seed=1)
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32")

    def compile_model():
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def moving_statistics():
        return [numpy(w) for w in backbone.non_trainable_weights if "moving_" in w.path]

    compile_model()
    before = moving_statistics()
    assert len(before) == 2 * 3 * 3  # mean and variance of q/k/v, in each of 3 layers
    history = model.fit(x, y, epochs=6, batch_size=8, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    changed = [not np.allclose(a, b) for a, b in zip(before, moving_statistics())]
    assert all(changed)  # BatchNorm ran in training mode

    # A frozen backbone keeps its weights and its BatchNorm statistics (inference mode).
    backbone.trainable = False
    compile_model()
    frozen = [numpy(w) for w in backbone.weights]
    head = [numpy(w) for w in model.output_dense.weights]
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    for before_w, after_w in zip(frozen, [numpy(w) for w in backbone.weights]):
        np.testing.assert_array_equal(before_w, after_w)
    assert not np.allclose(head[0], numpy(model.output_dense.kernel))


def test_savedmodel_export(tmp_path, record_delta):
    model = keras_pvt.CvTClassifier(tiny_backbone(), num_classes=4)
    path = tmp_path / "saved_model"
    if keras.backend.backend() == "torch":
        # keras exports PyTorch models to SavedModel through torch_xla (not installed).
        with pytest.raises(ValueError, match="torch_xla"):
            model.export(str(path))
        assert not (path / "saved_model.pb").exists()
        return
    model.export(str(path), verbose=False)
    import tensorflow as tf

    served = tf.saved_model.load(str(path))
    for height, width in [(64, 80), (50, 71)]:  # one SavedModel, any image size
        x = images(2, height, width, seed=height)
        delta = float(np.abs(served.serve(x).numpy() - numpy(model(x))).max())
        record_delta(f"SavedModel export {height}x{width} logits", delta)
        assert delta < 1e-5


# --- Preprocessing ----------------------------------------------------------------------------


def smooth_images(count, height, width):
    """Low-frequency uint8 images: resize kernels then differ by PIL's rounding only."""
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        channels = [128 + 100 * np.sin(2 * np.pi * (a * rows + b * cols) + c)
                    for a, b, c in rng.uniform(0.5, 3.0, (3, 3))]
        image = np.stack(channels, -1) + rng.normal(0, 3, (height, width, 3))
        out.append(np.clip(image, 0, 255).astype("uint8"))
    return np.stack(out)


LEVEL = 1 / (255 * 0.224)  # one uint8 level after normalisation (largest for the smallest std)


@pytest.mark.parametrize("size", [224, 384])
def test_image_converter_matches_transformers(size, record_delta):
    """Resize + centre crop (224) and direct resize (384) against transformers'
    ConvNextImageProcessor (its PIL implementation, which rounds the resized image to uint8,
    as keras does for uint8 input).

    Tolerances: on smooth images the bicubic kernels agree up to that rounding, so max |Δ| is
    one uint8 level (~0.0175 normalised); on uniform noise the antialiasing filters differ
    at every edge, so only the mean is bounded (< 0.3 level).
    """
    from transformers import ConvNextImageProcessorPil

    reference = ConvNextImageProcessorPil(size={"shortest_edge": size}, crop_pct=0.875,
                                          **IMAGENET)
    converter = keras_pvt.CvTImageConverter(image_size=(size, size))
    noise = np.random.default_rng(0).integers(0, 256, (2, 300, 200, 3)).astype("uint8")
    for kind, batch in [("smooth", smooth_images(2, 300, 200)),
                        ("smooth", smooth_images(2, 480, 640)), ("noise", noise)]:
        want = reference(images=list(batch), return_tensors="np")["pixel_values"]
        got = numpy(converter(batch))
        assert got.shape == (2, size, size, 3)
        delta = np.abs(got - want.transpose(0, 2, 3, 1))
        shape = "x".join(map(str, batch.shape[1:3]))
        record_delta(f"CvT preprocessing {size} {kind} {shape} max", delta.max())
        record_delta(f"CvT preprocessing {size} {kind} {shape} mean", delta.mean())
        if kind == "smooth":
            assert delta.max() < 1.01 * LEVEL
        assert delta.mean() < 0.3 * LEVEL
        # One unbatched image gives the batch's result. Float pixels are not rounded after
        # the resize (nor clipped: bicubic overshoots at the noise's edges).
        np.testing.assert_allclose(numpy(converter(batch[0])), got[0], atol=1e-5)
        if kind == "smooth":
            np.testing.assert_allclose(numpy(converter(batch.astype("float32"))), got,
                                       atol=0.51 * LEVEL)


def test_image_converter_in_tf_data():
    import tensorflow as tf

    preprocessor = keras_pvt.CvTImageClassifierPreprocessor()
    batch = smooth_images(2, 300, 200)
    dataset = tf.data.Dataset.from_tensor_slices((batch, [0, 1])).batch(2).map(preprocessor)
    x, y = next(iter(dataset))
    assert x.shape == (2, 224, 224, 3) and list(y.numpy()) == [0, 1]
    # tf.data resizes with TensorFlow's kernels, eager calls with the backend's: a few
    # pixels round to the neighbouring uint8 level.
    eager = numpy(preprocessor(batch))
    np.testing.assert_allclose(x.numpy(), eager, atol=1.01 * LEVEL)
    assert np.mean(np.abs(x.numpy() - eager) > 1e-4) < 1e-3


def test_image_converter_arguments():
    with pytest.raises(ValueError, match="square"):
        keras_pvt.CvTImageConverter(image_size=(224, 160))
    with pytest.raises(ValueError, match="crop_pct"):
        keras_pvt.CvTImageConverter(crop_pct=1.5)
    warp = keras_pvt.CvTImageConverter(image_size=(224, 160), crop_pct=None)
    assert numpy(warp(smooth_images(1, 300, 200))).shape == (1, 224, 160, 3)


def test_predict_preprocesses_raw_images(classifier):
    import tensorflow as tf

    raw = smooth_images(2, 300, 200)
    by_predict = classifier.predict(raw, verbose=0)
    # predict() runs the preprocessor in tf.data (TensorFlow's resize, whatever the backend).
    dataset = tf.data.Dataset.from_tensor_slices(raw).batch(2).map(classifier.preprocessor)
    converted = next(iter(dataset)).numpy()
    assert converted.shape == (2, 64, 96, 3)
    np.testing.assert_allclose(by_predict, numpy(classifier(converted)), atol=1e-4)


# --- Presets ----------------------------------------------------------------------------------


def test_preset_table_parameter_counts_match_transformers():
    from transformers import CvtConfig, CvtForImageClassification

    variants = {
        "13": {},
        "21": dict(depth=[1, 4, 16]),
        "w24": dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20]),
    }
    counts = {}
    for variant, kwargs in variants.items():
        with torch.device("meta"):
            reference = CvtForImageClassification(CvtConfig(num_labels=1000, **kwargs))
        counts[variant] = sum(p.numel() for p in reference.parameters())
    assert counts["13"] == 19_997_480
    presets = keras_pvt.CvTClassifier.presets
    assert set(presets) == set(CVT_PRESETS) == {
        "cvt_13", "cvt_13_384", "cvt_13_384_22k", "cvt_21", "cvt_21_384", "cvt_21_384_22k",
        "cvt_w24_384_22k"}
    for name, preset in presets.items():
        variant = name.split("_")[1]
        assert preset["params"] == counts[variant], name
        assert preset["hf_repo"] == "microsoft/" + name.replace("_", "-"), name
        assert f"{counts[variant] / 1e6:.1f}M" in preset["description"]
    assert set(keras_pvt.CvTBackbone.presets) == set(CVT_PRESETS)
    assert not set(keras_pvt.PVTv2Classifier.presets) & set(CVT_PRESETS)


PREDICT = """
import json, sys, numpy as np, keras, keras_pvt
model = keras_pvt.CvTClassifier.from_preset("cvt_13")
np.save(sys.argv[2], keras.ops.convert_to_numpy(model(np.load(sys.argv[1]))))
converter = model.preprocessor.image_converter
print(json.dumps({"class_names": model.class_names[:2], "crop_pct": converter.crop_pct,
                  "image_size": list(converter.image_size),
                  "interpolation": converter.interpolation}))
"""


def test_named_preset_offline(tmp_path, record_delta):
    """`cvt_13` resolves to microsoft/cvt-13 in the local Hugging Face cache (a small random
    checkpoint with the preprocessor_config.json of the Hub repository), offline."""
    from transformers import ConvNextImageProcessorPil

    reference = hf_cvt("small", num_labels=1000)
    checkpoint = tmp_path / "cvt-13"
    reference.save_pretrained(checkpoint)
    ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
                              **IMAGENET).save_pretrained(checkpoint)
    hf_cache, keras_home = tmp_path / "hf", tmp_path / "keras"
    place_in_hf_cache(hf_cache, "microsoft/cvt-13", checkpoint)
    env = offline_env(hf_cache, keras_home)
    x = images(2, 64, 80)
    np.save(tmp_path / "x.npy", x)
    result = run([sys.executable, "-c", PREDICT, str(tmp_path / "x.npy"),
                  str(tmp_path / "y.npy")], env)
    with torch.no_grad():
        expected = reference(to_torch(x)).logits.numpy()
    delta = float(np.abs(np.load(tmp_path / "y.npy") - expected).max())
    record_delta("named preset cvt_13 (offline HF cache) logits", delta)
    assert delta < 1e-4
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "class_names": ["label_0", "label_1"], "crop_pct": 0.875, "image_size": [224, 224],
        "interpolation": "bicubic"}
    assert hub.verify_entry(keras_home / "keras_pvt" / "cvt_13") is None


def test_image_converter_from_hub_preprocessor_configs(tmp_path):
    """The converter arguments read from microsoft/cvt-* preprocessor configs (legacy and
    current layouts): 224 crops (crop_pct), 384 resizes directly."""
    from keras_pvt.convert.conversion import Checkpoint, _image_converter
    from keras_pvt.convert.cvt import FAMILY

    legacy = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "resample": 3,
              "size": 384, **IMAGENET}
    current = {**legacy, "size": {"shortest_edge": 224}}
    for config, size in [(legacy, 384), (current, 224)]:
        checkpoint = Checkpoint(tmp_path, tmp_path, {}, preprocessor_config=config)
        converter = _image_converter(FAMILY, None, FAMILY.image_converter_cls, checkpoint)
        assert converter.image_size == (size, size) and converter.crop_pct == 0.875
        assert converter.interpolation == "bicubic"
        assert converter._crops() == (size < 384)


def test_convert_cvt_script(tmp_path, capsys):
    """conversion/convert_cvt.py's entry point, in-process (its own process would repeat the
    backend start-up): converts a checkpoint and asserts parity on the sample image."""
    import importlib.util

    from keras_pvt.cli import sample_image_path

    spec = importlib.util.spec_from_file_location(
        "convert_cvt", REPO_ROOT / "conversion" / "convert_cvt.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkpoint = tmp_path / "cvt-13"
    hf_cvt("small", num_labels=1000).save_pretrained(checkpoint)
    argv = ["--presets", "cvt_13", "--source", str(checkpoint),
            "--output-dir", str(tmp_path / "out"), "--image", str(sample_image_path())]
    assert script.main(keras_pvt.CvTClassifier, script.CvtForImageClassification,
                       script.DEFAULT_PROCESSOR, "test", argv=argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["preset"] == "cvt_13"
    assert figures["max_abs_logit_delta"] < 1e-4
    assert (tmp_path / "out" / "cvt_13" / "task.json").is_file()
    model = keras_pvt.CvTClassifier.from_preset(str(tmp_path / "out" / "cvt_13"))
    assert figures["params"] == model.count_params()
