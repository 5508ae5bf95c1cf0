"""Reading checkpoint tensors without ever executing code from the file.

`.safetensors` files are read with the safetensors library. PyTorch pickles
(`pytorch_model.bin`, `.pth`) are read by an allow-list unpickler that rebuilds only
tensors, parameters and ordered dicts, so PyTorch itself is not needed and a pickle that
names any other callable is refused. Legacy (pre-zip) PyTorch files fall back to
`torch.load(weights_only=True)` when torch is installed.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType:
    def __init__(self, dtype_name: str):
        self.dtype_name = dtype_name


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a PyTorch zip checkpoint's `data.pkl`, allowing tensors only."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(_TORCH_STORAGE_DTYPES[name])
        raise CheckpointError(
            f"{self.path}: refusing to unpickle `{module}.{name}`: a weights file should "
            "contain tensors only, and loading this one could run arbitrary code. Convert "
            "the checkpoint to safetensors with a tool you trust."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}.")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {storage_type!r}.")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=_numpy_dtype(storage_type.dtype_name))
        return self.storages[key]


def _read_torch_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no single data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported.")
        with archive.open(pickles[0]) as file:
            return _RestrictedUnpickler(file, archive, prefix, path).load()


def _read_torch_legacy(path: Path) -> dict:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"{path} is a legacy (non-zip) PyTorch file; reading it needs PyTorch "
            "(`pip install torch`), or convert it to safetensors."
        ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True): {error}"
        ) from error
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items() if hasattr(v, "numpy")}


def _unwrap(state, path: Path) -> dict[str, np.ndarray]:
    # Training checkpoints nest the weights ({"model": ...} / {"state_dict": ...}).
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}.")
    tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise CheckpointError(f"{path}: the file holds no tensors.")
    return tensors


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="numpy") as file:
            for key in file.keys():
                tensors[key] = file.get_tensor(key)
        return tensors
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from error


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a checkpoint file (or a sharded index) into `{key: numpy array}`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: not a valid shard index ({error}).") from error
        state = {}
        for shard in shards:
            state.update(read_state_dict(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        try:
            state = _read_torch_zip(path)
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(f"{path}: corrupted PyTorch checkpoint ({error}).") from error
        return _unwrap(state, path)
    if path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        return _unwrap(_read_torch_legacy(path), path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected one of {', '.join(CHECKPOINT_SUFFIXES)}."
    )


def find_weights_file(directory: str | os.PathLike) -> Path:
    """The weights file of a transformers / timm checkpoint directory."""
    directory = Path(directory)
    for name in WEIGHT_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"{directory}: no weights file found; expected one of {', '.join(WEIGHT_FILE_NAMES)}."
    )
