"""What a new user meets in the first hour (issue 16), on the current backend.

The installed `keras-pvt` script in subprocesses: `--help` and `presets` import no Keras or
backend, `--backend` picks the backend, successful commands print nothing on stderr, the
first conversion prints one line, a filled Hugging Face cache works without network and
without retries, and no cache fails at once with a message for the CLI. In process:
`predict` on raw images of any kind, `fit` shuffling arrays every epoch, int8 quantisation,
gradient checkpointing and LoRA.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import keras_pvt
from keras_pvt import hub
from keras_pvt.data import ShuffledArrays
from tests.helpers.hub_cache import offline_env, place_in_hf_cache, run
from tests.helpers.reference import hf_pvt_v2
from tests.helpers.reference_cvt import hf_cvt

BACKEND = keras.backend.backend()
SCRIPT = Path(sys.executable).parent / "keras-pvt"
BACKENDS = ("tensorflow", "jax", "torch")

# Loaded by the interpreter at start-up (PYTHONPATH): records the top-level modules a
# command imported, at exit.
SITECUSTOMIZE = """
import atexit, os, sys

def _report():
    with open(os.environ["MODULES_OUT"], "a") as file:
        file.write(" ".join(sorted({name.split(".")[0] for name in sys.modules})) + "\\n")

atexit.register(_report)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_pvt_v2")
    hf_pvt_v2("tiny", num_labels=4).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))


def test_help_and_presets_import_no_keras(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    env["PYTHONPATH"] = f"{hook}:{env['PYTHONPATH']}"
    for argv in (["--help"], ["predict", "--help"], ["presets"], ["presets", "-v"]):
        env["MODULES_OUT"] = str(tmp_path / f"modules_{len(argv)}_{argv[-1]}.txt")
        result = run([str(SCRIPT), *argv], env)
        assert result.stderr == "" and result.stdout
        imported = set(Path(env["MODULES_OUT"]).read_text().split())
        assert "keras_pvt" in imported
        assert not imported & {"keras", "keras_hub", "tensorflow", "jax", "torch"}, argv


def test_a_user_session_on_a_filled_cache_without_network(checkpoint, tmp_path):
    """The Hub unreachable (not declared offline) and the model in the Hugging Face cache:
    the first run converts without any request or retry and prints one line about it; the
    next, with `--backend` against KERAS_BACKEND and a shell without TF_CPP_MIN_LOG_LEVEL,
    prints nothing on stderr; `presets -v` shows the conversion; `convert --overwrite`
    replaces a folder. With an empty cache, one request fails at once with a message for the
    CLI naming `hf download`."""
    hf_cache, keras_home = tmp_path / "hf", tmp_path / "keras"
    place_in_hf_cache(hf_cache, "OpenGVLab/pvt_v2_b0", checkpoint)
    env = offline_env(hf_cache, keras_home)
    del env["HF_HUB_OFFLINE"]
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    first = run([str(SCRIPT), "predict", "--top", "3", "--json"], env)
    top = json.loads(first.stdout)[0]["top"]
    assert len(top) == 3 and all(item["label"].startswith("label_") for item in top)
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert first.stderr.splitlines() == [
        f"keras_pvt: converting hf://OpenGVLab/pvt_v2_b0 to a keras-hub preset in "
        f"{keras_home / 'keras_pvt' / 'pvt_v2_b0'} (once; later loads read it from there)"]

    shell = {**env, "KERAS_BACKEND": next(b for b in BACKENDS if b != BACKEND)}
    del shell["TF_CPP_MIN_LOG_LEVEL"]
    second = run([str(SCRIPT), "--backend", BACKEND, "predict", "--top", "3"], shell)
    assert second.stderr == ""
    assert f"(pvt_v2_b0, {BACKEND} backend)" in second.stdout
    assert [line.split()[-2] for line in second.stdout.splitlines()[1:]] == [
        item["label"] for item in top]

    lines = run([str(SCRIPT), "presets", "-v"], env).stdout.splitlines()
    assert lines[0].split() == ["preset", "task", "params", "cached"]
    rows = {line.split()[0]: line.split() for line in lines[1:]
            if line and not line.startswith((" ", "Converted presets"))}
    assert rows["pvt_v2_b0"][3] == "yes" and rows["pvt_v2_b1"][3] == "no"
    assert rows["pvt_v2_b1"][2] == "14,009,000"
    text = "\n".join(lines)
    assert "published: ImageNet top-1 78.7%" in text  # PVT v2 paper, Table 1
    assert "published: ADE20K mIoU 37.4%" in text and "published: ImageNet top-1 87.7%" in text
    assert text.count("published:") == text.count("licence:") == len(rows)
    assert f"Converted presets are cached in {keras_home / 'keras_pvt'}" in text

    output = tmp_path / "converted"
    output.mkdir()
    (output / "notes.txt").write_text("replaced")
    result = run([str(SCRIPT), "convert", "pvt_v2_b0", str(output), "--overwrite"], env)
    assert result.stdout == f"Wrote keras-hub preset to {output}\n" and result.stderr == ""
    assert (output / "config.json").is_file() and not (output / "notes.txt").exists()

    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    result = run([str(SCRIPT), "convert", "pvt_v2_b2", "out"], env, check=False, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert err.startswith("keras-pvt: Could not get 'pvt_v2_b2'") and "\n" not in err
    assert "Retrying" not in err and "Traceback" not in err
    assert "`hf download OpenGVLab/pvt_v2_b2`" in err and "--preset ./pvt_v2_b2" in err
    assert "from_preset" not in err
    assert not (tmp_path / "out").exists()


def test_python_callers_get_the_python_spelling():
    message = str(hub._offline_error("OpenGVLab/pvt_v2_b0", "pvt_v2_b0", OSError()))
    assert "from_preset('./pvt_v2_b0')" in message and "hf download OpenGVLab/pvt_v2_b0" in message


# --- predict on raw images ----------------------------------------------------------------


def test_predict_takes_paths_pil_single_images_and_mixed_sizes(classifier, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (50, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    expected_a = classifier.predict(a[None], verbose=0)
    expected_b = classifier.predict(b[None], verbose=0)
    for x in (a, Image.fromarray(a), str(tmp_path / "a.png"), tmp_path / "a.png",
              [Image.fromarray(a)]):
        got = classifier.predict(x, verbose=0)
        assert got.shape == (1, 4)
        np.testing.assert_allclose(got, expected_a, atol=1e-5)
    got = classifier.predict([a, str(tmp_path / "b.png"), Image.fromarray(a)], verbose=0)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, np.concatenate([expected_a, expected_b, expected_a]),
                               atol=1e-5)
    with pytest.raises(ValueError, match="is a directory"):
        classifier.predict(str(tmp_path), verbose=0)


def test_float_images_in_unit_range_warn_once(classifier, monkeypatch):
    from keras_pvt import data

    monkeypatch.setattr(data, "_WARNED_UNIT_RANGE", False)
    image = np.random.default_rng(1).random((1, 48, 48, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"values in \[0, (0\.9|1\]).*expects pixel values "
                                         r"in \[0, 255\]"):
        classifier.predict(image, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        classifier.predict(image, verbose=0)  # once per process
        classifier.predict(image * 255, verbose=0)


# --- fit on arrays --------------------------------------------------------------------------


def test_fit_on_arrays_shuffles_every_epoch_without_warning(checkpoint):
    model = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Image i is filled with the value i, so each batch shows which samples it holds.
    x = np.broadcast_to(np.arange(8, dtype="float32")[:, None, None, None],
                        (8, 32, 32, 3)).copy()
    y = np.arange(8) % 4
    seen = []
    preprocess = model.preprocess_samples

    def spy(x, y=None, sample_weight=None):
        seen.append(np.asarray(keras.ops.convert_to_numpy(x))[:, 0, 0, 0].round().astype(int))
        return preprocess(x, y, sample_weight)

    model.preprocess_samples = spy
    keras.utils.set_random_seed(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]
    seen = seen[-6:]  # (keras reads one batch first, to learn the batch structure)
    epochs = [np.concatenate(seen[i:i + 2]) for i in range(0, 6, 2)]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3, epochs  # a new order every epoch

    unshuffled = ShuffledArrays((x, y, None), batch_size=4, shuffle=False)
    unshuffled.on_epoch_end()
    assert np.asarray(unshuffled[1][0])[:, 0, 0, 0].tolist() == [4, 5, 6, 7]


# --- quantisation, gradient checkpointing, LoRA --------------------------------------------


def test_int8_quantization_keeps_the_predictions(tmp_path, record_delta):
    hf_pvt_v2("tiny", num_labels=1000, seed=5).save_pretrained(tmp_path / "ckpt")
    model = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path / "ckpt"))
    images = np.random.default_rng(2).integers(0, 256, (16, 64, 64, 3)).astype("float32")
    before = model.predict(images, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning per float layer
        model.quantize("int8")
    after = model.predict(images, verbose=0)
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert dense and all(layer.quantization_mode == "int8" for layer in dense)
    agreement = float((before.argmax(-1) == after.argmax(-1)).mean())
    scale = float(np.abs(before).max())
    record_delta("int8 quantisation, top-1 agreement (16 images, 1000 classes)", agreement)
    record_delta("int8 quantisation, max |Δ logits| / max |logit|",
                 float(np.abs(after - before).max()) / scale)
    assert agreement >= 0.9 and np.abs(after - before).max() < 0.05 * scale


def test_gradient_checkpointing_and_remat_scope_train_identically(checkpoint, monkeypatch):
    """`enable_gradient_checkpointing()`, and a model built inside
    `keras.RematScope(mode="full")` (keras' own per-layer remat failed on every backend),
    recompute each block through `keras.remat` and reach the weights of plain training."""
    calls = []
    remat = keras.remat

    def counting(function):
        calls.append(function)
        return remat(function)

    monkeypatch.setattr(keras, "remat", counting)
    images = np.random.default_rng(4).integers(0, 256, (4, 64, 64, 3)).astype("float32")
    weights = {}
    for how in ("plain", "method", "scope"):
        keras.utils.set_random_seed(0)
        with keras.RematScope(mode="full" if how == "scope" else None):
            model = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))
        if how == "method":
            model.backbone.enable_gradient_checkpointing()
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        count = len(calls)
        model.fit(images, np.arange(4) % 4, batch_size=4, epochs=2, verbose=0, shuffle=False)
        weights[how] = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
        blocks = model.backbone.attention_blocks()
        assert all(block.gradient_checkpointing is (how != "plain") for block in blocks)
        assert (len(calls) - count >= len(blocks)) is (how != "plain")
    initial = [keras.ops.convert_to_numpy(v) for v in
               keras_pvt.PVTv2Classifier.from_preset(str(checkpoint)).trainable_weights]
    assert max(float(np.abs(a - b).max()) for a, b in zip(weights["plain"], initial)) > 0
    for how in ("method", "scope"):
        delta = max(float(np.abs(a - b).max()) for a, b in zip(weights[how], weights["plain"]))
        assert delta < 1e-5, how


def test_checkpointing_refuses_blocks_it_cannot_replay(checkpoint, tmp_path):
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(checkpoint), drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"stage1_block0 has DropPath .* with rate 0\.03.*"
                                         r"drop_path_rate=0\.0"):
        backbone.enable_gradient_checkpointing()
    hf_cvt("small", num_labels=3).save_pretrained(tmp_path / "cvt")
    backbone = keras_pvt.CvTBackbone.from_preset(str(tmp_path / "cvt"))
    with pytest.raises(ValueError, match="has batch normalisation"):
        backbone.enable_gradient_checkpointing()
    backbone.enable_gradient_checkpointing(False)  # (turning it off always works)


def test_lora_fine_tuning_trains_only_the_adapters_and_reloads(checkpoint, tmp_path):
    """README's LoRA recipe."""
    model = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))
    model.backbone.enable_lora(rank=4)
    adapted = [layer for layer in model.backbone._flatten_layers()
               if getattr(layer, "lora_enabled", False)]
    # keras' LoRA freezes a layer's kernel and trains its two factors and its bias.
    expected = sum(4 * (layer.kernel.shape[0] + layer.kernel.shape[1]) + layer.units
                   for layer in adapted)
    in_backbone = {id(v) for v in model.backbone.weights}
    head = sum(int(np.prod(v.shape)) for v in model.trainable_weights
               if id(v) not in in_backbone)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert adapted and trainable == expected + head
    frozen = {v.path: keras.ops.convert_to_numpy(v) for v in model.backbone.weights
              if not v.trainable}
    assert len(frozen) > len(adapted)
    images = np.random.default_rng(6).integers(0, 256, (8, 48, 48, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images, np.arange(8) % 4, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for v in model.backbone.weights:
        if v.path in frozen:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), frozen[v.path])
    # keras' LoRA also trains the adapted layers' biases, which `save_lora_weights` leaves
    # out: the tuned model is saved whole.
    model.save_to_preset(str(tmp_path / "tuned"))
    restored = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path / "tuned"))
    np.testing.assert_allclose(restored.predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-5)
