"""Cache integrity: killed conversions, corrupted entries, stale locks and concurrent callers.

The process tests run real `from_preset` calls in fresh processes (huggingface_hub reads
HF_* at import) against a random-weight checkpoint placed in a temporary, offline Hub cache.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt import PresetError, hub
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache
from tests.helpers.reference import hf_pvt_v2, images, to_torch
from tests.robustness.conftest import numpy

# Loads each `preset=output.npy` pair in turn, logging each conversion (the staging
# directory's name). With a hang file, converts and then hangs before the entry is complete
# (the staging directory holds the files; the manifest and rename are to come). With a ready
# file, waits after the imports for a go file, so that concurrent children race for the cache.
CHILD = """
import sys, time
from pathlib import Path
import numpy as np, keras, keras_pvt
from keras_pvt import hub

x_path, log_path, hang_file, ready_file, go_file, *loads = sys.argv[1:]
real = hub.convert_to_preset

def logged(source, output_dir, *args):
    with open(log_path, "a") as log:
        log.write(Path(output_dir).name + "\\n")
    result = real(source, output_dir, *args)
    if hang_file != "-":
        open(hang_file, "w").close()
        time.sleep(600)
    return result

hub.convert_to_preset = logged
x = np.load(x_path)
if ready_file != "-":
    open(ready_file, "w").close()
    deadline = time.monotonic() + 300
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
for load in loads:
    preset, out_path = load.split("=")
    model = keras_pvt.PVTv2Classifier.from_preset(preset)
    np.save(out_path, keras.ops.convert_to_numpy(model(x)))
"""

# Three presets, each served from its own tiny random checkpoint (seed and class count
# differ, so a mix-up shows), and eight concurrent loads of them.
PRESETS = {"pvt_v2_b0": None, "pvt_v2_b1": dict(seed=1, num_labels=5),
           "pvt_v2_b2": dict(seed=2, num_labels=6)}
LOADS = ["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b0",
         "pvt_v2_b1", "pvt_v2_b0", "pvt_v2_b2", "pvt_v2_b1"]


def _spawn(x_path, log, loads, env, hang="-", ready="-", go="-"):
    """A CHILD process; its stderr goes to a file (a full pipe could block a child while it
    holds a lock that the others wait for)."""
    args = [x_path, log, hang, ready, go, *(f"{preset}={out}" for preset, out in loads)]
    stderr = Path(f"{loads[0][1]}.stderr")
    with open(stderr, "w") as file:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env,
                                 cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=file)
    child.stderr_path = stderr
    return child


def _finish(child) -> tuple[int, str]:
    code = child.wait(timeout=600)
    return code, child.stderr_path.read_text()


def _conversions(log):
    # Staging directories are named .<preset>.tmp-<hex>.
    names = log.read_text().split() if log.exists() else []
    return Counter(name[1:].split(".tmp-")[0] for name in names)


@pytest.fixture(scope="module")
def killed_then_concurrent(hf_tiny, tmp_path_factory):
    """One process loading each preset into its own cache (the expected outputs); a
    conversion SIGKILLed mid-write; then 8 processes loading a mix of the presets into that
    same cache at once."""
    root = tmp_path_factory.mktemp("cache")
    references = {}
    for preset, options in PRESETS.items():
        if options is None:
            references[preset], checkpoint = hf_tiny
        else:
            references[preset] = hf_pvt_v2("tiny", **options)
            checkpoint = root / "checkpoints" / preset
            references[preset].save_pretrained(checkpoint)
        place_in_hf_cache(root / "hf", f"OpenGVLab/{preset}", checkpoint)
    env = offline_env(root / "hf", root / "keras")
    # JAX compiles every eager op once per process: a shared persistent cache lets the later
    # processes reuse what the first compiled (no effect on other backends).
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    x = images(2, 64, 64)
    np.save(root / "x.npy", x)
    cache = root / "keras" / "keras_pvt"

    # Expected: every preset loaded by a single process, into a cache of its own.
    single = root / "single"
    single.mkdir()
    code, stderr = _finish(_spawn(root / "x.npy", single / "conversions.log",
                                  [(preset, single / f"{preset}.npy") for preset in PRESETS],
                                  dict(env, KERAS_HOME=str(single / "keras"))))
    assert code == 0, f"the single-process load failed ({code}):\n{stderr[-3000:]}"
    expected = {preset: np.load(single / f"{preset}.npy") for preset in PRESETS}

    log = root / "conversions.log"
    hang = root / "hanging"
    child = _spawn(root / "x.npy", log, [("pvt_v2_b0", root / "never.npy")], env, hang=hang)
    deadline = time.monotonic() + 300
    while not hang.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            stderr = _finish(child)[1]
            raise AssertionError(f"the child did not reach the conversion:\n{stderr[-3000:]}")
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    after_kill = sorted(p.name for p in cache.iterdir())

    outputs = [root / f"out{i}.npy" for i in range(len(LOADS))]
    children = [_spawn(root / "x.npy", log, [(preset, out)], env, ready=root / f"ready{i}",
                       go=root / "go")
                for i, (preset, out) in enumerate(zip(LOADS, outputs))]
    deadline = time.monotonic() + 300
    while not all((root / f"ready{i}").exists() for i in range(len(LOADS))):
        if any(c.poll() is not None for c in children) or time.monotonic() > deadline:
            break  # reported below with the child's error
        time.sleep(0.1)
    (root / "go").touch()  # all imported: they reach the cache together
    results = [_finish(c) for c in children]
    with torch.no_grad():
        reference = {preset: model(to_torch(x)).logits.numpy()
                     for preset, model in references.items()}
    return dict(
        after_kill=after_kill,
        results=results,
        outputs=[np.load(out) if code == 0 else None for out, (code, _) in zip(outputs, results)],
        expected=expected,
        reference=reference,
        single_conversions=_conversions(single / "conversions.log"),
        conversions=_conversions(log),
        cache=cache,
    )


def test_killed_conversion_leaves_no_trusted_entry(killed_then_concurrent):
    after_kill = killed_then_concurrent["after_kill"]
    # Killed mid-write: a staging directory and the lock file, but no entry.
    assert "pvt_v2_b0" not in after_kill
    assert any(name.startswith(".pvt_v2_b0.tmp-") for name in after_kill), after_kill
    assert "pvt_v2_b0.lock" in after_kill


def test_concurrent_loads_of_several_presets_share_one_valid_entry_each(killed_then_concurrent):
    state = killed_then_concurrent
    for code, stderr in state["results"]:
        assert code == 0, stderr[-3000:]
    for preset, expected in state["expected"].items():
        # The single-process load is the checkpoint's model (and each preset its own).
        np.testing.assert_allclose(expected, state["reference"][preset], atol=1e-4)
    for preset, output in zip(LOADS, state["outputs"]):
        np.testing.assert_array_equal(output, state["expected"][preset])  # bit-identical
    assert state["single_conversions"] == Counter(list(PRESETS))
    # pvt_v2_b0: one conversion by the killed process, one by the first of its three loaders
    # to get the lock (the stale staging directory neither blocked nor was trusted); the
    # other presets once each.
    assert state["conversions"] == Counter(list(PRESETS)) + Counter(["pvt_v2_b0"])
    names = sorted(p.name for p in state["cache"].iterdir())
    assert names == sorted([*PRESETS, *(f"{preset}.lock" for preset in PRESETS)]), names
    for preset in PRESETS:
        assert hub.verify_entry(state["cache"] / preset) is None, preset


@pytest.fixture(scope="module")
def pristine_entry(hf_tiny, tmp_path_factory):
    """A valid `pvt_v2_b0` cache entry converted from the tiny checkpoint (once)."""
    entry = tmp_path_factory.mktemp("pristine") / "keras_pvt" / "pvt_v2_b0"
    return hub.cached_conversion(entry, lambda: hf_tiny[1], "test")


@pytest.fixture
def offline_preset(hf_tiny, pristine_entry, tmp_path, monkeypatch):
    """`pvt_v2_b0` cached under a fresh KERAS_HOME and served from the tiny checkpoint;
    `available[0] = False` makes the source unreachable, like being offline without a Hub
    cache."""
    available = [True]

    def download(repo_id, handle=None, revision=None):
        if not available[0]:
            raise PresetError(f"Could not get {handle!r}: offline")
        return hf_tiny[1]

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(hub, "download_checkpoint", download)
    entry = tmp_path / "keras" / "keras_pvt" / "pvt_v2_b0"
    shutil.copytree(pristine_entry, entry)
    return entry, available


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_entry_is_detected_and_rebuilt(offline_preset, hf_tiny):
    entry, _ = offline_preset
    _corrupt(entry / "model.weights.h5")
    assert hub.verify_entry(entry) == "model.weights.h5 does not match its recorded checksum"
    with pytest.warns(UserWarning, match=r"does not match its recorded checksum\); rebuilding"):
        model = keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    assert hub.verify_entry(entry) is None
    x = images(1, 64, 64)
    with torch.no_grad():
        expected = hf_tiny[0](to_torch(x)).logits.numpy()
    np.testing.assert_allclose(numpy(model(x)), expected, atol=1e-4)


def test_corrupted_entry_without_source_is_reported(offline_preset):
    entry, available = offline_preset
    _corrupt(entry / "task.weights.h5")
    available[0] = False
    with pytest.warns(UserWarning, match="rebuilding"), pytest.raises(PresetError, match=(
            r"Cached preset .*pvt_v2_b0 was invalid \(task\.weights\.h5 does not match its "
            r"recorded checksum\) and was removed; it could not be rebuilt: Could not get")):
        keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    assert not entry.exists()  # never served again


def test_files_added_to_an_entry_invalidate_it(offline_preset):
    entry, _ = offline_preset
    assert hub.verify_entry(entry) is None
    (entry / "extra.json").write_text("{}")
    assert hub.verify_entry(entry) == "unexpected files ['extra.json']"


def test_lock_held_too_long_is_a_clear_error(offline_preset, hf_tiny, monkeypatch):
    entry, _ = offline_preset
    shutil.rmtree(entry)  # uncached: from_preset needs the lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
         "time.sleep(120)", f"{entry}.lock"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(hub, "LOCK_TIMEOUT_S", 1.0)
        with pytest.raises(PresetError, match=r"Timed out after 1 s waiting for .*pvt_v2_b0\.lock"
                           r": another process is converting"):
            keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
    finally:
        holder.kill()
        holder.wait()
    # Once its holder is gone (here killed), the lock no longer blocks.
    hub.cached_conversion(entry, lambda: hf_tiny[1], "test")
    assert hub.verify_entry(entry) is None
