"""Named presets, hf:// handles, the conversion cache, the CLI and the examples -- offline.

A random-weight transformers checkpoint is placed in a temporary huggingface_hub cache
under the real repo id; fresh processes (huggingface_hub reads HF_* at import) run with
HF_HUB_OFFLINE=1 and a temporary KERAS_HOME.
"""

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt import hub
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run
from tests.helpers.reference import hf_pvt_v2, images, to_torch

PREDICT = """
import sys, numpy as np, keras, keras_pvt
model = keras_pvt.PVTv2Classifier.from_preset(sys.argv[1])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]))))
"""


@pytest.fixture(scope="module")
def b0_checkpoint(tmp_path_factory):
    reference = hf_pvt_v2("b0", num_labels=1000)
    path = tmp_path_factory.mktemp("pvt_v2_b0")
    reference.save_pretrained(path)
    return reference, path


def _predict(preset, x_path, out_path, env):
    run([sys.executable, "-c", PREDICT, preset, str(x_path), str(out_path)], env)
    return np.load(out_path)


def test_named_preset_offline_then_from_converted_cache(b0_checkpoint, tmp_path, record_delta):
    reference, checkpoint = b0_checkpoint
    hf_cache, keras_home = tmp_path / "hf", tmp_path / "keras"
    place_in_hf_cache(hf_cache, "OpenGVLab/pvt_v2_b0", checkpoint)
    env = offline_env(hf_cache, keras_home)
    x = images(2, 224, 224)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        expected = reference(to_torch(x)).logits.numpy()

    first = _predict("pvt_v2_b0", tmp_path / "x.npy", tmp_path / "first.npy", env)
    delta = float(np.abs(first - expected).max())
    record_delta("named preset pvt_v2_b0 (offline HF cache) logits", delta)
    assert delta < 1e-4
    entry = keras_home / "keras_pvt" / "pvt_v2_b0"
    assert hub.verify_entry(entry) is None
    assert not [p for p in entry.parent.iterdir() if ".tmp-" in p.name]

    # Without the Hub cache, the converted cache serves the same model.
    shutil.rmtree(hf_cache)
    second = _predict("pvt_v2_b0", tmp_path / "x.npy", tmp_path / "second.npy", env)
    np.testing.assert_array_equal(second, first)

    # The example on the cached preset, with the bundled sample image (the CLI's run is in
    # tests/test_first_hour.py).
    result = run([sys.executable, "examples/classify.py"], env)
    assert "grace_hopper.jpg" in result.stdout and result.stdout.count("label_") == 5


def test_hf_handle_offline(tmp_path):
    reference = hf_pvt_v2("tiny", num_labels=4)
    checkpoint = tmp_path / "ckpt"
    reference.save_pretrained(checkpoint)
    hf_cache, keras_home = tmp_path / "hf", tmp_path / "keras"
    place_in_hf_cache(hf_cache, "someone/tiny-pvt", checkpoint, commit="b" * 40)
    env = offline_env(hf_cache, keras_home)
    x = images(1, 64, 80)
    np.save(tmp_path / "x.npy", x)
    got = _predict("hf://someone/tiny-pvt", tmp_path / "x.npy", tmp_path / "y.npy", env)
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(to_torch(x)).logits.numpy(), atol=1e-4)
    assert hub.verify_entry(keras_home / "keras_pvt" / "hf" / "someone--tiny-pvt" / ("b" * 40)) \
        is None


def test_offline_without_cache_names_the_repo(tmp_path):
    env = offline_env(tmp_path / "empty_hf", tmp_path / "keras")
    result = run([sys.executable, "-m", "keras_pvt.cli", "predict"], env, check=False)
    assert result.returncode == 2
    assert "OpenGVLab/pvt_v2_b0" in result.stderr
    assert "--preset ./pvt_v2_b0" in result.stderr and "hf download" in result.stderr
    assert not (tmp_path / "keras" / "keras_pvt" / "pvt_v2_b0").exists()


def test_unknown_preset_lists_valid_names():
    with pytest.raises(keras_pvt.PresetError, match="pvt_v2_b0.*pvt_v2_b5"):
        keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b9")


def test_interrupted_conversion_leaves_no_trusted_entry(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    hf_pvt_v2("tiny", num_labels=4).save_pretrained(checkpoint)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(hub, "download_checkpoint", lambda repo, handle=None: checkpoint)

    real_convert = hub.convert_to_preset

    def fail_midway(source, output_dir):
        real_convert(source, output_dir)  # files written...
        raise KeyboardInterrupt  # ...then the process is interrupted before completion

    monkeypatch.setattr(hub, "convert_to_preset", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    root = tmp_path / "keras" / "keras_pvt"
    assert not (root / "pvt_v2_b0").exists()
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]

    monkeypatch.setattr(hub, "convert_to_preset", real_convert)
    model = keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    assert model.output_shape == (None, 4)
    assert hub.verify_entry(root / "pvt_v2_b0") is None


def test_corrupted_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    hf_pvt_v2("tiny", num_labels=4).save_pretrained(checkpoint)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(hub, "download_checkpoint", lambda repo, handle=None: checkpoint)
    x = images(1, 64, 64)
    before = keras.ops.convert_to_numpy(keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b1")(x))
    weights = tmp_path / "keras" / "keras_pvt" / "pvt_v2_b1" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "checksum" in hub.verify_entry(weights.parent)
    with pytest.warns(UserWarning, match="rebuilding"):
        model = keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b1")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)


def test_cli_convert_and_presets(tmp_path):
    checkpoint = tmp_path / "ckpt"
    hf_pvt_v2("tiny", num_labels=4).save_pretrained(checkpoint)
    from keras_pvt.cli import main

    assert main(["convert", str(checkpoint), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["class_name"] == \
        "PVTv2Backbone"
    model = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path / "out"))
    assert model.class_names == [f"label_{i}" for i in range(4)]
    assert main(["presets"]) == 0


def test_sample_image_ships_with_the_package():
    from keras_pvt.cli import sample_image_path

    assert sample_image_path().is_file()
    assert Path(REPO_ROOT / "keras_pvt" / "assets" / "grace_hopper.jpg").is_file()


def test_cli_presets_verbose_names_task_and_licence(tmp_path):
    """`keras-pvt presets -v` through the installed script: every preset's task and licence."""
    script = Path(sys.executable).parent / "keras-pvt"
    result = run([str(script), "presets", "-v"], offline_env(tmp_path / "hf", tmp_path / "k"))
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]
            if line and not line.startswith((" ", "Converted presets"))}
    assert set(rows) == set(hub.all_presets())
    assert rows["segformer_b0_ade"][1] == "segmenter" and rows["mit_b0"][1] == "classifier"
    licences = [line.strip() for line in lines if line.strip().startswith("licence:")]
    assert len(licences) == len(rows)
    assert sum("NVIDIA Source Code License for SegFormer (non-commercial" in line
               for line in licences) == 18
    assert sum(line.startswith("licence: Apache-2.0") for line in licences) == 11
    assert sum(line.startswith("licence: MIT") for line in licences) == 7
    assert rows["glpn_nyu"][1] == "depth_estimator"
    assert sum("GLPDepth terms" in line and "non-commercial" in line for line in licences) == 2
    header = lines[0].split()
    assert header == ["preset", "task", "params", "cached"]
    # columns aligned: every row's params column ends where the header's does
    end = lines[0].index("params") + len("params")
    assert all(line[end - 1].isdigit() for line in lines[1:]
               if line and not line.startswith((" ", "Converted presets")))
