"""Bad checkpoints: each is a `CheckpointError` naming the file and the offending keys or
shapes, raised before a model is returned (and before anything is cached)."""

import json
import re
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_pvt
from keras_pvt import CheckpointError, hub
from tests.helpers.reference import hf_pvt_v2
from tests.robustness.conftest import TINY


def _copy(hf_tiny, tmp_path, name="ckpt"):
    return shutil.copytree(hf_tiny[1], tmp_path / name)


def _load(path, cls=keras_pvt.PVTv2Classifier):
    return cls.from_preset(str(path))


def _edit_weights(directory, edit):
    weights = directory / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_truncated_safetensors(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: not a readable safetensors")):
        _load(directory)


def test_corrupted_safetensors_header(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: not a readable safetensors")):
        _load(directory)


@pytest.fixture(scope="module")
def tiny_bin(tmp_path_factory):
    """A tiny checkpoint saved as pytorch_model.bin (torch's zip format)."""
    import torch

    path = tmp_path_factory.mktemp("bin")
    model = hf_pvt_v2("tiny", num_labels=4)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_truncated_pytorch_bin(tiny_bin, tmp_path):
    directory = shutil.copytree(tiny_bin, tmp_path / "ckpt")
    weights = directory / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: truncated or corrupted")):
        _load(directory)


def test_corrupted_pytorch_bin(tiny_bin, tmp_path):
    directory = shutil.copytree(tiny_bin, tmp_path / "ckpt")
    weights = directory / "pytorch_model.bin"
    data = bytearray(weights.read_bytes())
    start = data.index(b"data.pkl") + 200  # inside the pickle's stored bytes
    data[start : start + 16] = b"\x00" * 16
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: corrupted PyTorch")):
        _load(directory)


def test_zip_end_record_claiming_several_disks(tiny_bin, tmp_path):
    """`zipfile.is_zipfile` itself raised `BadZipFile` ("zipfiles that span multiple disks
    are not supported") for a ZIP64 locator that counts two disks (found by fuzzing)."""
    import struct

    directory = shutil.copytree(tiny_bin, tmp_path / "ckpt")
    weights = directory / "pytorch_model.bin"
    data = weights.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 2)
    weights.write_bytes(data[:end] + locator + data[end:])
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: corrupted PyTorch") +
                       ".*span multiple disks"):
        _load(directory)


def test_bin_checkpoint_still_loads(tiny_bin):
    # The control for the two tests above: the intact file loads.
    assert _load(tiny_bin).output_shape == (None, 4)


def test_weights_of_another_variant(tmp_path):
    """b1-like weights (twice the channels) under a b0-like config.json."""
    directory = tmp_path / "ckpt"
    hf_pvt_v2({**TINY, "hidden_sizes": [16, 32, 48, 64]}, num_labels=4).save_pretrained(directory)
    _edit_config(directory, hidden_sizes=TINY["hidden_sizes"])
    with pytest.raises(CheckpointError) as info:
        _load(directory)
    # Found before anything is built: config.json's sizes against the weights' shapes.
    assert str(info.value) == (
        f"{directory / 'config.json'}: hidden_sizes is [8, 16, 24, 32], but the weights in "
        f"{directory / 'model.safetensors'} have [16, 32, 48, 64] (is config.json from another "
        "checkpoint?); nothing was built.")


def test_config_json_disagrees_with_weights(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    _edit_config(directory, depths=[1, 1, 1, 2])  # the weights have one block in stage 4
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'config.json'}: depths is [1, 1, 1, 2], but the weights in "
            f"{directory / 'model.safetensors'} have [1, 1, 1, 1]")):
        _load(directory)


@pytest.mark.parametrize("field, value", [
    ("hidden_sizes", [8, 16, 24, 10**6]), ("mlp_ratios", [4, 4, 4, 10**5]),
    ("num_channels", 10**6), ("sr_ratios", [8, 4, 2, 10**4])])
def test_config_sizes_are_checked_before_building(hf_tiny, tmp_path, field, value):
    """A damaged config.json could otherwise build a model of many gigabytes first."""
    directory = _copy(hf_tiny, tmp_path)
    _edit_config(directory, **{field: value})
    with pytest.raises(CheckpointError, match=re.escape(f"{directory / 'config.json'}: ")
                       + ".* nothing was built"):
        _load(directory)


def test_missing_key(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    key = "pvt_v2.encoder.layers.1.blocks.0.attention.query.weight"
    _edit_weights(directory, lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=re.escape(f"missing keys (1):\n  - {key}")):
        _load(directory)


def test_unexpected_key(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    key = "pvt_v2.encoder.layers.1.blocks.0.attention.extra.weight"
    _edit_weights(directory, lambda state: state.update({key: np.zeros(3, "float32")}))
    with pytest.raises(CheckpointError, match=re.escape(f"unexpected keys (1):\n  - {key}")):
        _load(directory)


def test_wrong_shape(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    key = "pvt_v2.encoder.layers.2.blocks.0.layer_norm_1.weight"
    _edit_weights(directory, lambda state: state.update({key: np.ones(25, "float32")}))
    with pytest.raises(CheckpointError, match=re.escape(
            f"shape mismatches (1):\n  - {key}: checkpoint shape (25,) does not fit "
            "stage2_block0/layer_norm_1/gamma (24,)")):
        _load(directory)


@pytest.mark.parametrize("changes,pattern", [
    ({"model_type": "not_a_model"}, r"config\.json: unknown model_type 'not_a_model'"),
    ({"num_attention_heads": [1, 2, 3]}, r"config\.json: cannot build a pvt_v2 model from it: "
                                         r"ValueError: `num_heads` needs one value per stage"),
    ({"hidden_act": "relu"}, r"config\.json: cannot build a pvt_v2 model .*hidden_act='relu'"),
], ids=["unknown model_type", "heads per stage", "activation"])
def test_bad_config_values(hf_tiny, tmp_path, changes, pattern):
    directory = _copy(hf_tiny, tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=pattern):
        _load(directory)


def test_invalid_config_json(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    (directory / "config.json").write_text('{"model_type": "pvt_v2",')
    with pytest.raises(CheckpointError, match=re.escape(f"{directory / 'config.json'}: invalid")):
        _load(directory)


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """Tiny transformers checkpoints of other architectures."""
    from transformers import ConvNextConfig, ConvNextModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("others")
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)
             ).save_pretrained(root / "vit")
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
                  ).save_pretrained(root / "convnext")
    return root


def test_checkpoint_of_another_model_type(other_models):
    with pytest.raises(CheckpointError, match=re.escape(
            f"{other_models / 'vit' / 'config.json'}: unknown model_type 'vit'")):
        _load(other_models / "vit")


def test_weights_file_of_another_family(other_models):
    weights = other_models / "convnext" / "model.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(
            f"{weights}: the weights are not a keras_pvt model in any known layout")):
        _load(weights)


def test_other_weights_under_a_pvt_v2_config(other_models, hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    shutil.copy(other_models / "convnext" / "model.safetensors", directory)
    with pytest.raises(CheckpointError, match="the weights are not a pvt_v2 checkpoint in any "
                       r"known layout .*First keys: embeddings\."):
        _load(directory)


def test_checkpoint_for_another_class(hf_tiny):
    from keras_hub.models import Backbone

    from keras_pvt.models.base import PresetMixin

    class OtherBackbone(PresetMixin, Backbone):
        pass

    with pytest.raises(CheckpointError, match="is a pvt_v2 checkpoint; load it with "
                       "PVTv2Classifier, PVTv2SegFormerSegmenter, PVTv2GLPNDepthEstimator or "
                       "PVTv2Backbone, not "
                       "OtherBackbone"):
        OtherBackbone.from_preset(str(hf_tiny[1]))


# --- keras-hub preset directories --------------------------------------------------------


@pytest.fixture(scope="module")
def keras_presets(tmp_path_factory):
    """Two classifier presets whose backbones differ by one block in the last stage."""
    root = tmp_path_factory.mktemp("presets")
    for name, depths in (("small", [1, 1, 1, 1]), ("deeper", [1, 1, 1, 2])):
        backbone = keras_pvt.PVTv2Backbone(
            hidden_sizes=TINY["hidden_sizes"], depths=depths,
            num_heads=TINY["num_attention_heads"], mlp_ratios=TINY["mlp_ratios"])
        keras_pvt.PVTv2Classifier(
            backbone=backbone, num_classes=3,
            preprocessor=keras_pvt.PVTv2ImageClassifierPreprocessor(),
        ).save_to_preset(str(root / name))
    return root


@pytest.mark.parametrize("config_of,weights_of,pattern", [
    ("small", "deeper", r"The file holds 126 tensors; the PVTv2Backbone has 108 variables\.\n"
                        r"tensors in the file beyond the model's \(18\)"),
    ("deeper", "small", r"The file holds 108 tensors; the PVTv2Backbone has 126 variables\.\n"
                        r"variables of the model with no tensor in the file \(18\)"),
], ids=["more tensors than config.json", "fewer tensors than config.json"])
def test_keras_preset_weights_of_another_config(keras_presets, tmp_path, config_of, weights_of,
                                                pattern):
    """Keras alone would load the first case silently (it matches by layer order and ignores
    leftover tensors)."""
    directory = shutil.copytree(keras_presets / config_of, tmp_path / "preset")
    shutil.copy(keras_presets / weights_of / "model.weights.h5", directory)
    with pytest.raises(CheckpointError, match=pattern) as info:
        _load(directory)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{directory / 'model.weights.h5'} does not match the PVTv2Backbone")
    assert "stage3_block1/" in str(info.value) or "pv_tv2_block_4/" in str(info.value)


def test_truncated_keras_weights(keras_presets, tmp_path):
    directory = shutil.copytree(keras_presets / "small", tmp_path / "preset")
    weights = directory / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(
            f"{weights}: not a readable Keras weights file (truncated or corrupted?)")):
        _load(directory)


def test_keras_preset_head_of_another_size(keras_presets, tmp_path):
    directory = shutil.copytree(keras_presets / "small", tmp_path / "preset")
    task = json.loads((directory / "task.json").read_text())
    task["config"]["num_classes"] = 5
    (directory / "task.json").write_text(json.dumps(task))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'task.weights.h5'} does not match the PVTv2Classifier head")):
        _load(directory)
    # A new head on purpose is fine: the file's head is not loaded then.
    assert _load_with(directory, num_classes=7).output_shape == (None, 7)


def _load_with(directory, **kwargs):
    return keras_pvt.PVTv2Classifier.from_preset(str(directory), **kwargs)


def test_failed_conversion_caches_nothing(hf_tiny, tmp_path, monkeypatch):
    directory = _copy(hf_tiny, tmp_path)
    _edit_weights(directory, lambda state: state.pop("classifier.bias"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(hub, "download_checkpoint", lambda repo, handle=None, rev=None: directory)
    with pytest.raises(CheckpointError, match="missing keys"):
        keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    leftovers = [p.name for p in (tmp_path / "keras" / "keras_pvt").iterdir()]
    assert leftovers in ([], ["pvt_v2_b0.lock"])


def test_intact_checkpoint_loads_exactly(hf_tiny):
    # The control for this module: the unmodified checkpoint loads and matches its reference.
    import torch

    from tests.helpers.reference import images, to_torch

    reference, directory = hf_tiny
    x = images(1, 64, 64)
    with torch.no_grad():
        expected = reference(to_torch(x)).logits.numpy()
    got = keras.ops.convert_to_numpy(_load(directory)(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("changes, message", [
    ({"size": {"height": 10**6, "width": 224}}, "image size (1000000, 224) is not two integers"),
    ({"image_std": [0.229, 0, 0.225]}, "image_std [0.229, 0, 0.225] is not a list of non-zero"),
    ({"size": {"height": 224.5, "width": 224}}, "image size (224.5, 224) is not two integers"),
])
def test_preprocessing_that_would_fail_on_the_first_image(hf_tiny, tmp_path, changes, message):
    """Values that load but would allocate without bound (or divide by zero) only when the
    first image arrives are refused with the file they came from."""
    directory = _copy(hf_tiny, tmp_path)
    settings = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                "size": {"height": 224, "width": 224}, "resample": 3, **changes}
    (directory / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'preprocessor_config.json'}: unusable preprocessing settings: "
            f"ValueError: {message}")):
        _load(directory)


@pytest.mark.parametrize("changes, message", [
    ({"layer_norm_eps": -1e-6}, "layer_norm_epsilon -1e-06 is not in (0, 1)"),
    ({"drop_path_rate": 1.5}, "drop_path_rate 1.5 is not in [0, 1)"),
])
def test_config_hyperparameters_out_of_range(hf_tiny, tmp_path, changes, message):
    directory = _copy(hf_tiny, tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'config.json'}: cannot build a pvt_v2 model from it: ValueError: "
            f"{message}")):
        _load(directory)


def test_config_json_that_is_neither_transformers_nor_timm(hf_tiny, tmp_path):
    directory = _copy(hf_tiny, tmp_path)
    (directory / "config.json").write_text('{"hidden_sizes": [8, 16, 24, 32]}')
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'config.json'}: neither a transformers config (no model_type) nor "
            "a timm one (no architecture)")):
        _load(directory)


def test_sharded_checkpoint_errors_name_the_shard(tmp_path):
    """A tensor of the wrong shape in a shard is reported with that shard (found by
    fuzzing: the error named only the index)."""
    directory = tmp_path / "ckpt"
    hf_pvt_v2("tiny", num_labels=4).save_pretrained(directory, max_shard_size="90KB")
    shard = directory / "model-00001-of-00002.safetensors"
    state = load_file(shard)
    key = next(k for k in sorted(state) if k.endswith("dwconv.dwconv.weight"))
    state[key] = state[key][:-1]
    save_file(state, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape(f"{key} (in {shard}): checkpoint shape")):
        _load(directory)
