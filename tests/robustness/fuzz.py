"""A seeded fuzzer for every checkpoint file keras_pvt reads.

It mutates real files (a tiny random-weight PVT v2 saved by transformers, torch and Keras):
`model.safetensors`, a sharded checkpoint's index and shards, `pytorch_model.bin` in torch's
zip and legacy formats, a Keras `model.weights.h5`, `config.json` and
`preprocessor_config.json`. The mutations are byte flips, insertions, deletions, truncations,
header fields set to huge, negative or odd values (safetensors headers, zip records, torch's
storage counts, JSON values), zip members renamed, duplicated, dropped or compressed, and
pickle opcodes swapped or replaced.

Each case must either load or raise `CheckpointError` / `PresetError` naming the mutated
file, within 1 s of CPU time and 200 MB of peak memory growth. `tests/robustness/test_fuzz.py`
runs 2,000 cases; a longer campaign is one command:

    KERAS_BACKEND=torch python -m tests.robustness.fuzz --cases 50000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import pickle
import pickletools
import random
import re
import struct
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

TIME_LIMIT_S = 1.0
MEMORY_LIMIT_MB = 200.0
EXTREMES = [0, 1, -1, 2, 3, 255, 65535, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63),
            2**64, 10**30]
ODD_JSON = [None, True, "", "x", "../../etc/passwd", [], {}, 0.5, -1, 0, 10**30, 1e308,
            float("nan"), [[[[[]]]]], {"a": {"b": {}}}, "1" * 5000]
TARGETS = [  # (directory, file, weight): the weights formats get most of the cases
    ("safetensors", "model.safetensors", 4),
    ("sharded", "model.safetensors.index.json", 1),
    ("sharded", "model-00001-of-00002.safetensors", 1),
    ("bin", "pytorch_model.bin", 4),
    ("legacy", "pytorch_model.bin", 3),
    ("keras", "model.weights.h5", 3),
    ("safetensors", "config.json", 2),
    ("safetensors", "preprocessor_config.json", 1),
]


# --- Seed files -------------------------------------------------------------------------------


def write_seeds(root: Path) -> None:
    """Writes the seed checkpoints under `root` (one directory per format)."""
    import torch
    import transformers  # noqa: F401 (before TensorFlow: see DEVELOPERS.md)

    from tests.helpers.reference import hf_pvt_v2

    reference = hf_pvt_v2("tiny", num_labels=4)
    reference.save_pretrained(root / "safetensors")
    (root / "safetensors" / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "PvtImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224}}))
    # Two shards.
    reference.save_pretrained(root / "sharded", max_shard_size="90KB")
    shards = sorted(p.name for p in (root / "sharded").glob("model-*.safetensors"))
    assert shards[0] == "model-00001-of-00002.safetensors", shards
    state = reference.state_dict()
    for name, legacy in (("bin", False), ("legacy", True)):
        (root / name).mkdir()
        reference.config.save_pretrained(root / name)
        weights = root / name / "pytorch_model.bin"
        torch.save(state, weights, _use_new_zipfile_serialization=not legacy)
        if legacy:
            weights.write_bytes(_renumbered(weights.read_bytes()))

    import keras_pvt

    (root / "keras").mkdir()
    backbone = keras_pvt.PVTv2Classifier.from_preset(str(root / "safetensors")).backbone
    backbone.save_weights(root / "keras" / "model.weights.h5")


# --- Mutations --------------------------------------------------------------------------------


def _position(rng: random.Random, size: int) -> int:
    # Headers and directories sit at the ends of these files: half the cases land there.
    if size == 0:
        return 0
    if rng.random() < 0.5:
        edge = min(size, 4096)
        return rng.randrange(edge) if rng.random() < 0.5 else size - 1 - rng.randrange(edge)
    return rng.randrange(size)


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "insert", "delete", "truncate", "duplicate", "run",
                       "integer"])
    at = _position(rng, len(data))
    if kind == "flip":
        flips = rng.randint(1, 8)
        for _ in range(flips):
            i = _position(rng, len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data), f"{flips} bit flips"
    if kind == "insert":
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "delete":
        del data[at : at + rng.randint(1, 256)]
    elif kind == "truncate":
        del data[at:]
    elif kind == "duplicate":
        data[at:at] = data[at : at + rng.randint(1, 512)]
    elif kind == "run":
        data[at : at + rng.randint(1, 64)] = bytes([rng.choice([0, 255])]) * rng.randint(1, 64)
    else:
        width = rng.choice([1, 2, 4, 8])
        value = rng.choice(EXTREMES) % (1 << (8 * width))
        data[at : at + width] = value.to_bytes(width, "little")
    return bytes(data), f"{kind} at {at}"


def mutate_json_value(value, rng: random.Random):
    """`(new value, description)`: one node of a JSON tree replaced, removed or renamed."""
    nodes = []

    def walk(node, path):
        nodes.append((node, path))
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])

    walk(value, [])
    _, path = rng.choice(nodes)
    if not path:
        return rng.choice(ODD_JSON), "whole document replaced"
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    kind = rng.choice(["odd", "odd", "extreme", "delete", "rename", "wrap"])
    if kind == "odd":
        parent[key] = rng.choice(ODD_JSON)
    elif kind == "extreme":
        parent[key] = rng.choice(EXTREMES)
    elif kind == "wrap":
        parent[key] = [parent[key]]
    elif isinstance(parent, dict):
        old = parent.pop(key)
        if kind == "rename":
            parent[key + rng.choice(["_", "x", " "])] = old
    else:
        del parent[key]
    return value, f"{kind} at {'/'.join(map(str, path))}"


def mutate_json(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    if rng.random() < 0.05:
        return b"[" * 100_000, "nesting 100000 deep"
    value, what = mutate_json_value(json.loads(data), rng)
    return json.dumps(value).encode(), what


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.4:
        return mutate_bytes(data, rng)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    if rng.random() < 0.15:
        new_length = rng.choice(EXTREMES) % 2**64
        return struct.pack("<Q", new_length) + data[8:], f"header length {new_length}"
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["dtype", "shape", "offsets", "offsets", "drop", "rename", "metadata",
                       "json"])
    if kind == "dtype":
        entry["dtype"] = rng.choice(["F64", "F16", "BF16", "I64", "I8", "U8", "BOOL",
                                     "F8_E4M3", "C64", "X", "", 3])
    elif kind == "shape":
        shape = list(entry["shape"])
        op = rng.choice(["set", "add", "remove"])
        if op == "set" and shape:
            shape[rng.randrange(len(shape))] = rng.choice(EXTREMES + [1.5, "2", None])
        elif op == "add":
            shape.insert(rng.randrange(len(shape) + 1), rng.choice(EXTREMES))
        elif shape:
            shape.pop(rng.randrange(len(shape)))
        entry["shape"] = shape
    elif kind == "offsets":
        offsets = list(entry["data_offsets"])
        op = rng.choice(["set", "swap", "shift"])
        if op == "set":
            offsets[rng.randrange(2)] = rng.choice(EXTREMES + [len(body), len(body) + 1])
        elif op == "swap":
            offsets.reverse()
        else:
            step = rng.choice([-4, -1, 1, 4])
            offsets = [offsets[0] + step, offsets[1] + step]
        entry["data_offsets"] = offsets
    elif kind == "drop":
        del header[name]
    elif kind == "rename":
        header[name + ".x"] = header.pop(name)
    elif kind == "metadata":
        header["__metadata__"] = rng.choice(ODD_JSON)
    else:
        header, _ = mutate_json_value(header, rng)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body, f"header {kind} of {name}"


def mutate_pickle(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Opcodes replaced, swapped, dropped or duplicated; integer arguments set to extremes."""
    ops = [(op, arg, pos) for op, arg, pos in pickletools.genops(data)]
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    spans = [(pos, end, op) for (op, _, pos), end in zip(ops, ends)]
    data = bytearray(data)
    kind = rng.choice(["replace", "swap", "drop", "duplicate", "integer"])
    start, end, op = rng.choice(spans)
    if kind == "replace":
        data[start] = ord(rng.choice(pickletools.opcodes).code)
    elif kind == "swap":
        other = rng.choice(spans)[0]
        data[start], data[other] = data[other], data[start]
    elif kind == "drop":
        del data[start:end]
    elif kind == "duplicate":
        data[start:start] = data[start:end]
    else:
        integers = [(s, e, o) for s, e, o in spans
                    if o.name in ("BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE",
                                  "SHORT_BINUNICODE", "BINPUT", "LONG_BINPUT", "BINGET")]
        if integers:
            start, end, op = rng.choice(integers)
            width = end - start - 1 if op.name != "LONG1" else 1
            width = min(width, {"BINUNICODE": 4, "SHORT_BINUNICODE": 1}.get(op.name, width))
            value = rng.choice(EXTREMES) % (1 << (8 * width))
            data[start + 1 : start + 1 + width] = value.to_bytes(width, "little")
    return bytes(data), f"pickle {kind} at {op.name} @{start}"


def _zip_rebuilt(members: list[tuple[str, bytes]], compress=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in members:
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), raw, compress_type=kind)
    return buffer.getvalue()


# Field offsets (bytes, width) in zip records: local file headers and central directory.
_LOCAL_FIELDS = {"compressed size": (18, 4), "size": (22, 4), "name length": (26, 2),
                 "extra length": (28, 2), "method": (8, 2)}
_CENTRAL_FIELDS = {"compressed size": (20, 4), "size": (24, 4), "name length": (28, 2),
                   "extra length": (30, 2), "comment length": (32, 2), "disk": (34, 2),
                   "header offset": (42, 4), "method": (10, 2)}
_END_FIELDS = {"entries on disk": (8, 2), "entries": (10, 2), "directory size": (12, 4),
               "directory offset": (16, 4), "comment length": (20, 2), "disk": (4, 2)}


def mutate_torch_zip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.3:
        return mutate_bytes(data, rng)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    if roll < 0.55:  # the pickle itself, in a well-formed archive
        i = next(i for i, (name, _) in enumerate(members) if name.endswith("data.pkl"))
        raw, what = mutate_pickle(members[i][1], rng)
        members[i] = (members[i][0], raw)
        return _zip_rebuilt(members), what
    if roll < 0.75:
        kind = rng.choice(["rename", "duplicate", "drop", "compress", "big-endian"])
        i = rng.randrange(len(members))
        name, raw = members[i]
        if kind == "rename":
            members[i] = (name + rng.choice(["x", "/", "0"]), raw)
        elif kind == "duplicate":
            members.insert(rng.randrange(len(members) + 1), (name, raw[: len(raw) // 2]))
        elif kind == "drop":
            del members[i]
        elif kind == "big-endian":
            members = [(n, b"big" if n.endswith("byteorder") else r) for n, r in members]
        compress = {name} if kind == "compress" else set()
        return _zip_rebuilt(members, compress), f"member {kind} {name}"
    records = [(m.start(), _LOCAL_FIELDS, "local") for m in re.finditer(b"PK\x03\x04", data)]
    records += [(m.start(), _CENTRAL_FIELDS, "central") for m in re.finditer(b"PK\x01\x02", data)]
    records += [(m.start(), _END_FIELDS, "end") for m in re.finditer(b"PK\x05\x06", data)]
    start, fields, what = rng.choice(records)
    field = rng.choice(list(fields))
    offset, width = fields[field]
    value = rng.choice(EXTREMES) % (1 << (8 * width))
    data = bytearray(data)
    data[start + offset : start + offset + width] = value.to_bytes(width, "little")
    return bytes(data), f"{what} record {field} = {value}"


def _renumbered(data: bytes) -> bytes:
    """A legacy torch file with its storages (keyed by memory addresses, in address order)
    renamed and ordered by first use, so that the seed file is the same in every run."""
    start, end, counts, keys, used = _legacy_layout(data)
    ends = counts[1:] + [len(data)]
    blocks = {key: data[at:stop] for key, at, stop in zip(keys, counts, ends)}
    names = {key: str(i).zfill(len(key)) for i, key in enumerate(used)}
    state = data[start:end]
    for key, name in names.items():
        state = state.replace(key.encode(), name.encode())
    listed = pickle.dumps([names[k] for k in used], protocol=2)
    return data[:start] + state + listed + b"".join(blocks[k] for k in used)


def _legacy_layout(data: bytes):
    """`(start, end, count offsets, keys, keys by first use)`: the state pickle's span,
    where each storage's element count is (in the order of the file's key list), in a
    legacy torch file."""
    stream = io.BytesIO(data)
    used = []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            return collections.OrderedDict if name == "OrderedDict" else lambda *args: None

        def persistent_load(self, pid):
            if pid[2] not in used:
                used.append(pid[2])
            return pid

    for _ in range(3):
        pickle.load(stream)
    start = stream.tell()
    Unpickler(stream).load()
    end = stream.tell()
    keys = pickle.load(stream)
    counts, position = [], stream.tell()
    for _ in keys:
        counts.append(position)
        (count,) = struct.unpack("<q", data[position : position + 8])
        position += 8 + count * 4  # the seed file holds float32 storages only
    return start, end, counts, keys, used


def mutate_torch_legacy(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.4:
        return mutate_bytes(data, rng)
    start, end, counts, _, _ = _legacy_layout(data)
    if roll < 0.8:
        raw, what = mutate_pickle(data[start:end], rng)
        return data[:start] + raw + data[end:], what
    at = rng.choice(counts)
    value = rng.choice(EXTREMES) % 2**64
    return data[:at] + value.to_bytes(8, "little") + data[at + 8 :], f"storage count {value}"


MUTATORS = {
    ".safetensors": mutate_safetensors,
    ".json": mutate_json,
    ".h5": mutate_bytes,
}


def mutator(directory: str, name: str):
    if name == "pytorch_model.bin":
        return mutate_torch_legacy if directory == "legacy" else mutate_torch_zip
    return MUTATORS[Path(name).suffix]


# --- Running cases ----------------------------------------------------------------------------


def _peak_rss_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _rss_kb() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Case:
    number: int
    target: str
    mutation: str
    outcome: str  # "loaded", "CheckpointError", "PresetError" or a failure
    message: str
    cpu_s: float
    peak_mb: float


class Loader:
    """Loads checkpoints the way `from_preset` converts them, reusing built models: the
    conversion is planned and checked for every case (reading, identification, sizes,
    preprocessing), and its weights assigned to a model built once per architecture."""

    def __init__(self, root: Path):
        from keras_pvt.convert.conversion import plan_conversion, read_checkpoint

        self.read, self.plan = read_checkpoint, plan_conversion
        self.models = {}
        seed = self.plan(self.read(root / "safetensors"))
        self.backbone = seed.build()[0].backbone  # receives the .weights.h5 cases

    def load(self, path: Path) -> None:
        if path.suffix == ".h5":
            self.backbone.load_weights(str(path))
            return
        conversion = self.plan(self.read(path.parent))
        key = (conversion.family.name, conversion.layout,
               getattr(conversion.task, "name", None), repr(conversion.backbone_kwargs),
               repr((conversion.checkpoint.config or {}).get("id2label")))
        model = self.models.get(key)
        if model is None:
            if len(self.models) > 8:
                self.models.clear()
            model = self.models[key] = conversion.build()[0]
        else:
            conversion.load_into(model)


def run_case(loader: Loader, root: Path, originals: dict, number: int, seed: int) -> Case:
    """Mutates one seed file (chosen by the case's own generator), loads, restores it."""
    from keras_pvt import CheckpointError, PresetError

    rng = random.Random(f"{seed}:{number}")
    directory, name, _ = rng.choices(TARGETS, weights=[t[2] for t in TARGETS])[0]
    path = root / directory / name
    mutated, mutation = mutator(directory, name)(originals[path], rng)
    path.write_bytes(mutated)
    _reset_peak_rss()
    before = _rss_kb()
    start = time.process_time()
    try:
        loader.load(path)
        outcome, message = "loaded", ""
    except (CheckpointError, PresetError) as error:
        outcome, message = type(error).__name__, str(error)
        if str(path) not in message:
            outcome = f"{outcome} not naming {name}"
    except Exception as error:  # noqa: BLE001 (every other exception is a finding)
        outcome, message = f"escaped {type(error).__name__}", str(error)
    cpu = time.process_time() - start
    peak = (_peak_rss_kb() - before) / 1024
    path.write_bytes(originals[path])
    return Case(number, f"{directory}/{name}", mutation, outcome, message[:300], cpu, peak)


def failed(case: Case) -> bool:
    return (case.outcome not in ("loaded", "CheckpointError", "PresetError")
            or case.cpu_s > TIME_LIMIT_S or case.peak_mb > MEMORY_LIMIT_MB)


def campaign(cases: int, seed: int = 0, root: Path | None = None, progress=None) -> list[Case]:
    """Runs `cases` seeded cases against fresh seed files; returns them all."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(root or scratch)
        if not (root / "keras").exists():
            write_seeds(root)
        originals = {root / d / n: (root / d / n).read_bytes() for d, n, _ in TARGETS}
        loader = Loader(root)
        results = []
        for number in range(cases):
            with warnings.catch_warnings():  # (keras and zipfile warn about damaged files)
                warnings.simplefilter("ignore")
                results.append(run_case(loader, root, originals, number, seed))
            if progress and (number + 1) % progress == 0:
                print(summary(results), flush=True)
        return results


def summary(results: list[Case]) -> str:
    outcomes = collections.Counter(c.outcome for c in results)
    by_target = collections.Counter((c.target, c.outcome) for c in results)
    lines = [f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()),
             f"max CPU time {max(c.cpu_s for c in results):.3f} s, max peak RSS growth "
             f"{max(c.peak_mb for c in results):.1f} MB, failures {sum(map(failed, results))}"]
    lines += [f"  {target}: {outcome} {n}" for (target, outcome), n in sorted(by_target.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", type=int, default=5000, help="print a summary every N")
    args = parser.parse_args(argv)
    results = campaign(args.cases, args.seed, progress=args.progress)
    print(summary(results))
    for case in [c for c in results if failed(c)][:20]:
        print(f"FAILED {case}")
    return 1 if any(map(failed, results)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
