"""Reading checkpoint tensors without ever executing code from the file.

`.safetensors` files are read with the safetensors library. PyTorch pickles
(`pytorch_model.bin`, `.pth`: the zip format and the legacy stream before it) are read by
an allow-list unpickler that rebuilds only tensors, parameters and ordered dicts, so
PyTorch itself is not needed and a pickle that names any other callable is refused.

Every size a file declares (a storage's element count, a zip member's length, a tensor's
shape and strides) is checked against the file's own size before anything is allocated,
and whatever goes wrong while reading is a `CheckpointError` that names the file.
"""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pickle
import pickletools
import struct
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


class _Storage:
    """A storage named by the pickle; its bytes are attached once the pickle is read (the
    legacy format stores them after it)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


class _TensorRef:
    """A tensor rebuilt from the pickle, copied out of its storage only if it is kept."""

    def __init__(self, storage, offset, size, stride):
        # Offsets, sizes and strides come from the file: they are checked against the
        # storage (`_materialize`) so that a crafted file cannot read outside it.
        try:
            self.offset = int(offset)
            self.size = tuple(int(d) for d in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"invalid tensor layout in the pickle ({error}).") from error
        if not isinstance(storage, _Storage):
            raise ValueError(f"invalid tensor storage in the pickle ({type(storage).__name__}).")
        self.storage = storage


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


def _materialize(ref: _TensorRef) -> np.ndarray:
    storage, offset, size, stride = ref.storage.array, ref.offset, ref.size, ref.stride
    if storage is None:
        raise ValueError(f"storage {ref.storage.key!r} has no data in the file.")
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
    if math.prod(size) > storage.size:
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


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a PyTorch checkpoint's pickle, allowing tensors only.

    `max_bytes` bounds the bytes the storages it names may declare (the file's size).
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, path: Path, max_bytes: int):
        super().__init__(file)
        self.path = path
        self.max_bytes = max_bytes
        self.storages: dict[str, _Storage] = {}

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
        # ("storage", type, key, location, numel), plus a view field in the legacy format
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int):
            raise ValueError(f"unsupported persistent id {str(pid)[:200]}.")
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views (PyTorch < 0.4 files) are not supported.")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = _numpy_dtype(storage_type.dtype_name)
        if not 0 <= numel * dtype.itemsize <= self.max_bytes:
            raise ValueError(f"storage {key!r} declares {numel} elements of {dtype}, more than "
                             f"the file's {self.max_bytes} bytes hold.")
        storage = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if (storage.dtype, storage.numel) != (dtype, numel):
            raise ValueError(f"storage {key!r} is declared twice with different sizes.")
        return storage


def _unpickle(stream, path: Path, max_bytes: int) -> tuple[object, dict[str, _Storage]]:
    """Unpickles the pickle at `stream`'s position with the allow-list: `(object, storages)`.

    The opcodes are scanned first (in Python, allocating nothing): a memo index makes
    CPython's unpickler grow its memo table to that size, so one damaged PUT argument could
    allocate gigabytes. A pickle of n opcodes never needs an index above n.
    """
    start = stream.tell()
    count = 0
    for opcode, argument, _ in pickletools.genops(stream):
        count += 1
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= argument <= count:
            raise ValueError(f"memo index {argument} is out of range for a pickle of "
                             f"{count}+ opcodes.")
    stream.seek(start)
    unpickler = _RestrictedUnpickler(stream, path, max_bytes)
    return unpickler.load(), unpickler.storages


def _attach(storage: _Storage, raw) -> None:
    """Gives `storage` its bytes, which must be exactly what the pickle declared."""
    if len(raw) != storage.numel * storage.dtype.itemsize:
        raise ValueError(f"storage {storage.key!r} has {len(raw)} bytes; the pickle declares "
                         f"{storage.numel} elements of {storage.dtype}.")
    storage.array = np.frombuffer(raw, dtype=storage.dtype)


def _read_torch_zip(path: Path) -> dict:
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        for member in members:
            # torch stores every member uncompressed: a compressed one could inflate to any
            # size, and none may claim more bytes than the archive has.
            if member.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {member.filename!r} is compressed; PyTorch "
                                 "checkpoints are not.")
            if member.file_size != member.compress_size or member.file_size > size:
                raise ValueError(f"member {member.filename!r} declares {member.file_size} bytes "
                                 f"in an archive of {size}.")
        names = [m.filename for m in members]
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no single data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder) != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported.")
        state, storages = _unpickle(io.BytesIO(archive.read(pickles[0])), path, size)
        for key, storage in storages.items():
            try:
                raw = archive.read(f"{prefix}data/{key}")
            except KeyError as error:
                raise ValueError(f"storage {key!r} is missing from the archive.") from error
            _attach(storage, raw)
        return _unwrap(state, path)


# The legacy format (torch.save before 1.6, or `_use_new_zipfile_serialization=False`): four
# pickles (magic number, protocol, system info, the object), the storage keys, then each
# storage's element count (int64) and bytes, in the order of the keys.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_torch_legacy(path: Path) -> dict:
    size = path.stat().st_size
    if size == 0:
        raise ValueError("the file is empty.")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        stream = data

        def header():  # plain values only: the same allow-list refuses any callable
            return _unpickle(stream, path, 0)[0]

        if header() != _LEGACY_MAGIC:
            raise ValueError("not a PyTorch checkpoint (no zip archive, no legacy magic number).")
        if header() != _LEGACY_PROTOCOL:
            raise ValueError("unknown legacy PyTorch protocol version.")
        info = header()
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise ValueError("big-endian or unknown system information.")
        state, storages = _unpickle(stream, path, size)
        keys = header()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise ValueError("the storage list does not match the storages the pickle uses.")
        position = stream.tell()
        for key in keys:
            storage = storages[key]
            if position + 8 > size:
                raise ValueError(f"storage {key!r} is missing (the file ends at {size} bytes).")
            (count,) = struct.unpack("<q", data[position : position + 8])
            nbytes = count * storage.dtype.itemsize
            if count != storage.numel or position + 8 + nbytes > size:
                raise ValueError(f"storage {key!r} holds {count} elements; the pickle declares "
                                 f"{storage.numel} and the file has {size - position - 8} "
                                 "bytes left.")
            _attach(storage, data[position + 8 : position + 8 + nbytes])
            position += 8 + nbytes
        return _unwrap(state, path)


def _unwrap(state, path: Path) -> dict[str, np.ndarray]:
    # Training checkpoints nest the weights ({"model": ...} / {"state_dict": ...}).
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}.")
    tensors = {k: _materialize(v) for k, v in state.items()
               if isinstance(k, str) and isinstance(v, _TensorRef)}
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


def _read_sharded(index_path: Path) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint: each shard must hold exactly the tensors its
    index assigns to it."""
    try:
        index = json.loads(index_path.read_bytes())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("weight_map must map tensor names to shard files")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{index_path}: not a valid shard index ({error!r}).") from error
    shards: dict[str, set] = {}
    for key, name in weight_map.items():
        # Shards live next to their index: a name with a directory part could point
        # anywhere on disk.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: invalid shard name {name!r} in the index.")
        shards.setdefault(name, set()).add(key)
    state = {}
    for name, keys in sorted(shards.items()):
        shard = index_path.parent / name
        if not os.path.isfile(shard):  # (False, not OSError, for a name too long)
            raise CheckpointError(f"{index_path}: the shard {name[:100]} it lists is missing.")
        tensors = read_state_dict(shard)
        if set(tensors) != keys:
            differ = sorted(set(tensors) ^ keys)
            raise CheckpointError(
                f"{index_path}: the index and the shard {shard} disagree on "
                f"{len(differ)} tensor names (first: {differ[0]!r}); is a shard from another "
                "checkpoint?"
            )
        state.update(tensors)
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a checkpoint file (or a sharded index) into `{key: numpy array}`."""
    path = Path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
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
    if is_zip or path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        try:
            return _read_torch_zip(path) if is_zip else _read_torch_legacy(path)
        except CheckpointError:
            raise
        except Exception as error:  # pickle, zipfile and numpy raise many kinds
            text = str(error).strip().splitlines()
            raise CheckpointError(
                f"{path}: corrupted PyTorch checkpoint ({type(error).__name__}: "
                f"{text[0] if text else ''})."
            ) from error
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
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError... on damage
        raise CheckpointError(
            f"{path}: not a readable Keras weights file (truncated or corrupted?): "
            f"{type(error).__name__}: {error}"
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
