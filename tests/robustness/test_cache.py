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

import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt import PresetError, hub
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache
from tests.helpers.reference import images, to_torch
from tests.robustness.conftest import numpy

# Logs each conversion; with a hang-file argument, converts and then hangs before the entry is
# complete (the staging directory holds the files, the manifest and rename are to come).
CHILD = """
import sys, time
import numpy as np, keras, keras_pvt
from keras_pvt import hub

x_path, out_path, log_path = sys.argv[1:4]
hang_file = sys.argv[4] if len(sys.argv) > 4 else None
real = hub.convert_to_preset

def logged(source, output_dir, *args):
    with open(log_path, "a") as log:
        log.write("convert\\n")
    result = real(source, output_dir, *args)
    if hang_file:
        open(hang_file, "w").close()
        time.sleep(600)
    return result

hub.convert_to_preset = logged
model = keras_pvt.PVTv2Classifier.from_preset("pvt_v2_b0")
np.save(out_path, keras.ops.convert_to_numpy(model(np.load(x_path))))
"""


def _spawn(args, env):
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def killed_then_concurrent(hf_tiny, tmp_path_factory):
    """A conversion SIGKILLed mid-write, then 4 processes loading the same preset at once."""
    reference, checkpoint = hf_tiny
    root = tmp_path_factory.mktemp("cache")
    place_in_hf_cache(root / "hf", "OpenGVLab/pvt_v2_b0", checkpoint)
    env = offline_env(root / "hf", root / "keras")
    # JAX compiles every eager op once per process: a shared persistent cache lets the later
    # processes reuse what the first compiled (no effect on other backends).
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    x = images(2, 64, 64)
    np.save(root / "x.npy", x)
    log = root / "conversions.log"
    cache = root / "keras" / "keras_pvt"

    hang = root / "hanging"
    child = _spawn([root / "x.npy", root / "never.npy", log, hang], env)
    deadline = time.monotonic() + 300
    while not hang.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"the child did not reach the conversion:\n{child.stderr.read()}")
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    after_kill = sorted(p.name for p in cache.iterdir())

    children = [_spawn([root / "x.npy", root / f"out{i}.npy", log], env) for i in range(4)]
    results = [(c.wait(timeout=600), c.stderr.read()) for c in children]
    with torch.no_grad():
        expected = reference(to_torch(x)).logits.numpy()
    return dict(
        after_kill=after_kill,
        results=results,
        outputs=[np.load(root / f"out{i}.npy") if code == 0 else None
                 for i, (code, _) in enumerate(results)],
        expected=expected,
        conversions=log.read_text().count("convert"),
        cache=cache,
    )


def test_killed_conversion_leaves_no_trusted_entry(killed_then_concurrent):
    after_kill = killed_then_concurrent["after_kill"]
    # Killed mid-write: a staging directory and the lock file, but no entry.
    assert "pvt_v2_b0" not in after_kill
    assert any(name.startswith(".pvt_v2_b0.tmp-") for name in after_kill), after_kill
    assert "pvt_v2_b0.lock" in after_kill


def test_concurrent_loads_after_a_kill_share_one_valid_entry(killed_then_concurrent):
    state = killed_then_concurrent
    for code, stderr in state["results"]:
        assert code == 0, stderr[-3000:]
    for output in state["outputs"]:
        np.testing.assert_allclose(output, state["expected"], atol=1e-4)
        np.testing.assert_array_equal(output, state["outputs"][0])  # deterministic
    # One conversion by the killed process, one by the first of the four to get the lock;
    # the stale staging directory and lock neither blocked nor were trusted.
    assert state["conversions"] == 2
    names = sorted(p.name for p in state["cache"].iterdir())
    assert names == ["pvt_v2_b0", "pvt_v2_b0.lock"], names
    assert hub.verify_entry(state["cache"] / "pvt_v2_b0") is None


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
