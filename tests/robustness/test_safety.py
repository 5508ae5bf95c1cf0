"""Safety: no code from a downloaded file ever runs, and no handle escapes the cache."""

import io
import json
import os
import pickle
import re
import shutil
import zipfile

import keras
import numpy as np
import pytest

import keras_pvt
from keras_pvt import CheckpointError, PresetError, hub
from keras_pvt.checkpoints import read_state_dict


class _Payload:
    """Unpickling this calls `open(marker, "w")`: it would create the marker file."""

    def __init__(self, marker, call=open):
        self.marker, self.call = str(marker), call

    def __reduce__(self):
        if self.call is open:
            return open, (self.marker, "w")
        return self.call, (f"touch {self.marker}",)


def _torch_zip(path, data_pkl: bytes, storages: dict | None = None):
    """A file in PyTorch's zip layout (`archive/data.pkl` + `archive/data/<key>`)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


@pytest.mark.parametrize("call", [open, os.system], ids=["open", "os.system"])
def test_pickle_that_runs_code_is_refused_by_the_allow_list(hf_tiny, tmp_path, call):
    marker = tmp_path / "pwned"
    directory = tmp_path / "ckpt"
    directory.mkdir()
    shutil.copy(hf_tiny[1] / "config.json", directory)
    weights = _torch_zip(directory / "pytorch_model.bin",
                         pickle.dumps({"x": _Payload(marker, call)}, protocol=2))
    name = f"{call.__module__}.{call.__name__}"
    with pytest.raises(CheckpointError, match=re.escape(
            f"{weights}: refusing to unpickle `{name}`: a weights file should contain "
            "tensors only")):
        keras_pvt.PVTv2Classifier.from_preset(str(directory))
    assert not marker.exists()


@pytest.mark.parametrize("where", ["header", "state"])
def test_legacy_pickle_that_runs_code_is_refused_by_the_allow_list(tmp_path, where):
    """The legacy (non-zip) stream: four pickles, any of which could name a callable."""
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pth"
    payload = pickle.dumps({"x": _Payload(marker)}, protocol=2)
    if where == "state":  # a valid magic number, protocol and system information first
        payload = b"".join(pickle.dumps(part, protocol=2) for part in (
            0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})) + payload
    weights.write_bytes(payload)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{weights}: refusing to unpickle `io.open`: a weights file should contain "
            "tensors only")):
        keras_pvt.PVTv2Classifier.from_preset(str(weights))
    assert not marker.exists()


def test_tensor_pointing_outside_its_storage_is_refused(tmp_path):
    """A crafted size/stride must not make the reader touch memory outside the storage."""
    import torch

    storage = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (1 << 20,), (1,), False, {})

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    path = _torch_zip(tmp_path / "model.bin", buffer.getvalue(),
                      {"0": np.zeros(4, "float32").tobytes()})
    with pytest.raises(CheckpointError, match="points outside its storage of 4 elements"):
        read_state_dict(path)


def test_broadcast_tensor_cannot_allocate_without_bound(tmp_path):
    """Stride 0 keeps every element inside a one-element storage, but copying a
    10^6 x 10^6 view would allocate 4 TB: more elements than storage is refused."""
    import torch

    storage = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if obj is storage else None

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (
                storage, 0, (10**6, 10**6), (0, 0), False, {})

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    path = _torch_zip(tmp_path / "model.bin", buffer.getvalue(),
                      {"0": np.zeros(1, "float32").tobytes()})
    with pytest.raises(CheckpointError, match=r"has more elements than its storage of 1"):
        read_state_dict(path)


@pytest.mark.parametrize("content", ['{"weight_map": ["a.safetensors"]}', '["x"]',
                                     '{"weight_map": 3}'])
def test_malformed_shard_index(tmp_path, content):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    with pytest.raises(CheckpointError, match=re.escape(f"{index}: not a valid shard index")):
        read_state_dict(index)


def test_shard_index_cannot_point_outside_its_directory(tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(b"")
    directory = tmp_path / "ckpt"
    directory.mkdir()
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{index}: invalid shard name '../outside.safetensors'")):
        read_state_dict(index)


@pytest.fixture(scope="module")
def lambda_model_file(tmp_path_factory):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path_factory.mktemp("lambda") / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_keras_file_with_a_lambda_is_refused(lambda_model_file):
    # keras_pvt never turns off Keras' safe mode (importing it changes nothing)...
    with pytest.raises(ValueError, match="lambda"):
        keras.saving.load_model(lambda_model_file)
    # ...and from_preset does not read .keras files at all.
    with pytest.raises(CheckpointError, match=re.escape(
            f"{lambda_model_file} is a Keras model file, not a checkpoint")):
        keras_pvt.PVTv2Classifier.from_preset(str(lambda_model_file))


def test_preset_whose_config_holds_a_lambda_is_refused(classifier, tmp_path):
    """A keras-hub preset is deserialized in safe mode: bytecode in its JSON never loads."""
    classifier.save_to_preset(str(tmp_path))
    marker = tmp_path / "pwned"
    # The path is a constant of the code (a closure would not serialize).
    function = eval(f"lambda x: open({str(marker)!r}, 'w') and x")  # noqa: S307
    layer = keras.layers.Lambda(function)
    serialized = keras.saving.serialize_keras_object(layer)
    task = json.loads((tmp_path / "task.json").read_text())
    task["config"]["preprocessor"]["config"]["image_converter"] = serialized
    (tmp_path / "task.json").write_text(json.dumps(task))
    preprocessor = json.loads((tmp_path / "preprocessor.json").read_text())
    preprocessor["config"]["image_converter"] = serialized
    (tmp_path / "preprocessor.json").write_text(json.dumps(preprocessor))
    for load in (keras_pvt.PVTv2Classifier.from_preset,
                 keras_pvt.PVTv2ImageClassifierPreprocessor.from_preset):
        with pytest.raises(ValueError, match="whose `function` is a Python lambda"):
            load(str(tmp_path))
    assert not marker.exists()


BAD_HANDLES = [
    "hf://../../x",
    "hf://owner/../../x",
    "hf:///etc/passwd",
    "hf://owner/repo/../../x",
    "hf://owner/repo/",
    "hf://owner/..",
    "hf://./repo",
    "hf://owner/repo@../../x",
    "hf://owner/repo@main/../../x",
    "hf://owner/repo@/etc/passwd",
    "hf://owner/repo@",
    "hf://a--b/repo",
    "hf://owner\\..\\..\\x",
    "hf://owner/repo%2F..%2F..",
    "hf://owner/ré",
    "hf://owner/repo\n",
]


@pytest.mark.parametrize("handle", BAD_HANDLES)
def test_hf_handles_cannot_escape_the_cache(handle, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_download(*args, **kwargs):
        raise AssertionError("a bad handle reached the download")

    monkeypatch.setattr(hub, "download_checkpoint", no_download)
    with pytest.raises(PresetError, match="is not a valid Hugging Face handle: expected "
                       "hf://owner/repo or hf://owner/repo@revision"):
        keras_pvt.PVTv2Classifier.from_preset(handle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "pvt_v2_b0/../../x", "~/x", "pvt_v2_b0/"])
def test_preset_names_that_are_not_presets_or_paths(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PresetError, match=re.escape(f"Unknown preset {name!r}")):
        keras_pvt.PVTv2Classifier.from_preset(name)
    assert list(tmp_path.iterdir()) == []


def test_valid_revisions_are_pinned_to_a_commit_entry(hf_tiny, tmp_path, monkeypatch):
    """`hf://owner/repo@revision` downloads that revision; the cache entry is named by the
    commit the Hub resolved it to, never by the revision string."""
    import huggingface_hub

    assert hub.parse_hf_handle("hf://owner/repo@refs/pr/1") == ("owner/repo", "refs/pr/1")
    commit = "c" * 40
    snapshot = tmp_path / "snapshots" / commit
    shutil.copytree(hf_tiny[1], snapshot)
    requested = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        requested.append((repo_id, filename, revision))
        if not (snapshot / filename).exists():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub, "_check_hub_reachable", lambda repo_id, handle: None)  # (faked)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    model = keras_pvt.PVTv2Classifier.from_preset("hf://owner/repo@v1.0")
    assert model.output_shape == (None, 4)
    assert {revision for _, _, revision in requested} == {"v1.0"}
    entry = tmp_path / "keras" / "keras_pvt" / "hf" / "owner--repo" / commit
    assert hub.verify_entry(entry) is None

    # A snapshot folder that is not a commit hash is not used as a path component.
    bad = tmp_path / "snapshots" / "main"
    shutil.copytree(hf_tiny[1], bad)
    snapshot = bad
    with pytest.raises(PresetError, match="unexpected Hugging Face cache folder"):
        keras_pvt.PVTv2Classifier.from_preset("hf://owner/repo@main")


def test_memo_index_cannot_allocate_without_bound(tmp_path):
    """CPython's unpickler grows its memo table to the largest index a PUT names: one
    damaged LONG_BINPUT argument (found by fuzzing) made it allocate 12.6 GB for 31 s."""
    import resource

    data_pkl = b"\x80\x02}r\x00\x00\x00\x80." + b""  # PROTO 2, EMPTY_DICT, LONG_BINPUT 2^31
    path = _torch_zip(tmp_path / "model.bin", data_pkl)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: corrupted PyTorch checkpoint "
                                                        "(ValueError: memo index 2147483648")):
        read_state_dict(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB
