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
import re
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
    # Offsets, sizes and strides come from the file: check them so that a crafted file
    # cannot make `as_strided` read outside the storage.
    try:
        offset = int(offset)
        size = tuple(int(d) for d in size)
        stride = tuple(int(s) for s in stride)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid tensor layout in the pickle ({error}).") from error
    if not isinstance(storage, np.ndarray):
        raise ValueError(f"invalid tensor storage in the pickle ({type(storage).__name__}).")
    if (
        offset < 0 or len(size) != len(stride) or any(d < 0 for d in size)
        or any(s < 0 for s in stride)
    ):
        raise ValueError(
            f"invalid tensor layout in the pickle (offset {offset}, size {size}, stride {stride})."
        )
    if not size:
        if offset >= storage.size:
            raise ValueError("a tensor in the pickle points outside its storage.")
        return storage[offset : offset + 1].reshape(()).copy()
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((d - 1) * s for d, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(
            f"a tensor in the pickle (offset {offset}, size {size}, stride {stride}) points "
            f"outside its storage of {storage.size} elements."
        )
    if int(np.prod(size, dtype=object)) > storage.size:
        # Only a broadcast view (stride 0) has more elements than its storage; weights never
        # are one, and copying it could allocate any amount of memory.
        raise ValueError(
            f"a tensor in the pickle (size {size}, stride {stride}) has more elements than "
            f"its storage of {storage.size}."
        )
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride)
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
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError as error:
                raise CheckpointError(f"{self.path}: storage {key!r} is missing from the "
                                      "archive (truncated or corrupted file).") from error
            dtype = _numpy_dtype(storage_type.dtype_name)
            if len(raw) % dtype.itemsize:
                raise CheckpointError(f"{self.path}: storage {key!r} has {len(raw)} bytes, "
                                      f"not a whole number of {dtype} elements.")
            self.storages[key] = np.frombuffer(raw, dtype=dtype)
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
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch's bold markers
        first_line = text.splitlines()[0] if text else ""
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True), which loads tensors only: "
            f"the file is corrupted or holds other objects, and loading it could run "
            f"arbitrary code ({first_line})."
        ) from error
    except Exception as error:  # torch raises RuntimeError, EOFError... on damaged files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupted?): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}.")
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
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{path}: not a valid shard index ({error!r}).") from error
        state = {}
        for shard in shards:
            # Shards live next to their index: a name with a directory part could point
            # anywhere on disk.
            if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
                raise CheckpointError(f"{path}: invalid shard name {shard!r} in the index.")
            state.update(read_state_dict(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".keras":
        raise CheckpointError(
            f"{path} is a Keras model file, not a checkpoint: load it with "
            "`keras.saving.load_model(path)` (safe_mode stays on, so files that hold "
            "Python code such as lambda layers are refused)."
        )
    with open(path, "rb") as file:
        magic = file.read(4)
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as error:  # e.g. an end record claiming several disks
        raise CheckpointError(f"{path}: corrupted PyTorch checkpoint ({error}).") from error
    if magic.startswith(b"PK") and not is_zip:
        raise CheckpointError(
            f"{path}: truncated or corrupted PyTorch checkpoint (a zip archive without its "
            "central directory)."
        )
    if is_zip:
        try:
            state = _read_torch_zip(path)
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(
                f"{path}: corrupted PyTorch checkpoint ({type(error).__name__}: {error})."
            ) from error
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


# Top-level groups of a Keras weights file that are not model variables.
_KERAS_NON_MODEL_GROUPS = ("optimizer", "metrics", "compile_metrics", "_compile_metrics")


def keras_weights_shapes(path: str | os.PathLike) -> dict[str, tuple]:
    """`{dataset path: shape}` of a Keras `.weights.h5` file's model variables (metadata
    only, nothing is read into memory)."""
    import h5py

    shapes = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in _KERAS_NON_MODEL_GROUPS:
            shapes[name] = tuple(obj.shape)

    try:
        with h5py.File(path, "r") as file:
            file.visititems(visit)
    except OSError as error:
        raise CheckpointError(
            f"{path}: not a readable Keras weights file (truncated or corrupted?): {error}"
        ) from error
    return shapes


def check_keras_weights(path: str | os.PathLike, variables, what: str) -> None:
    """Raises `CheckpointError` unless the `.weights.h5` file at `path` holds one tensor per
    variable in `variables`, with the same shapes.

    Keras matches a weights file to a model by layer order and silently ignores tensors left
    over (a file with more blocks than `config.json` loads "fine"); this check runs before
    anything is assigned.
    """
    shapes = keras_weights_shapes(path)
    expected = collections.Counter(tuple(v.shape) for v in variables)
    found = collections.Counter(shapes.values())
    if expected == found:
        return
    extra, missing = found - expected, expected - found
    sections = [f"The file holds {len(shapes)} tensors; the {what} has {len(variables)} "
                "variables."]
    if extra:
        # The surplus is likely the last tensors of each shape (e.g. extra blocks).
        names = _last_of_each_shape(list(shapes.items()), extra)
        sections.append(f"tensors in the file beyond the model's ({sum(extra.values())}), by "
                        f"shape: {_shape_counts(extra)}\n{describe(names)}")
    if missing:
        names = _last_of_each_shape([(v.path, tuple(v.shape)) for v in variables], missing)
        sections.append(f"variables of the model with no tensor in the file "
                        f"({sum(missing.values())}), by shape: {_shape_counts(missing)}\n"
                        f"{describe(names)}")
    raise CheckpointError(
        f"{path} does not match the {what} (was it saved from another configuration? "
        "compare config.json); nothing was loaded.\n" + "\n".join(sections)
    )


def _shape_counts(counts: collections.Counter) -> str:
    return ", ".join(f"{shape} x{n}" for shape, n in counts.most_common())


def _last_of_each_shape(items: list, counts: collections.Counter) -> list[str]:
    picked = []
    for shape, n in counts.items():
        picked += [f"{name} {shape}" for name, s in items if s == shape][-n:]
    return picked


def describe(items, limit: int = 20) -> str:
    """An indented list of `items` for an error message, cut after `limit`."""
    lines = [f"  - {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)
