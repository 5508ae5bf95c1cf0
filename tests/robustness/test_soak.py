"""Soak: 300 `predict` calls over 4 image sizes x 2 batch sizes, in a fresh process (so that
no other test's state shows in its memory): resident memory and compiled steps stay flat
after the warm-up cycle. A longer run: `python -m tests.robustness.soak --calls 5000`."""

import json
import sys

import keras
import pytest

import keras_pvt
from tests.helpers.hub_cache import REPO_ROOT, offline_env, run
from tests.robustness.soak import SHAPES

CALLS = 300
backend = keras.backend.backend()


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    env = offline_env(root / "hf", root / "keras")
    # A fresh persistent cache, to count what JAX writes to disk per shape (and thresholds
    # of 0, so that every compilation is written).
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
               # XLA's cheapest optimisation level halves the compile time (14 of the ~60 s
               # here); what is compiled per shape, and kept, is the same.
               XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0")
    result = run([sys.executable, "-m", "tests.robustness.soak", "--calls", str(CALLS)], env,
                 cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_resident_memory_is_flat_after_warm_up(soaked):
    rss = soaked["rss_mb"]
    assert len(rss) == -(-CALLS // len(SHAPES))  # one reading per cycle
    # rss[0]: after the first cycle, which compiled or traced every shape.
    assert soaked["growth"] <= 0.05, f"RSS (MB) per cycle of {len(SHAPES)} calls: {rss}"


def test_no_layer_is_left_unbuilt(soaked):
    # An unbuilt layer (keras-hub's unused Resizing, with image_size=None) made keras' JAX
    # predict run an extra uncompiled forward pass, compiling ~170 eager ops per new shape.
    assert soaked["unbuilt"] == []


@pytest.mark.parametrize("converter", [
    lambda: keras_pvt.PVTv2ImageConverter(image_size=None),
    lambda: keras_pvt.SegFormerImageConverter(image_size=None),
    lambda: keras_pvt.CvTImageConverter(),  # its crop path does not call the Resizing layer
    lambda: keras_pvt.GLPNImageConverter(),
], ids=["pvt_v2", "segformer", "cvt_crop", "glpn"])
def test_image_converters_have_no_unbuilt_layer(converter):
    converter = converter()
    assert all(layer.built for layer in converter._flatten_layers())


# Checks of one backend's own caches exist on that backend only.
if backend == "jax":

    def test_jax_compiles_each_shape_once(soaked):
        shapes = len(SHAPES)
        # One compilation per shape in the warm-up cycle, none after; the jitted predict step
        # holds exactly one executable per shape, and the persistent cache one file per shape.
        assert set(soaked["compilations"]) == {shapes}, soaked["compilations"]
        assert set(soaked["executables"]) == {shapes}, soaked["executables"]
        assert set(soaked["disk"]) == {shapes}, soaked["disk"]

    def test_what_bounds_jax_predict_caches(soaked):
        # The claims of README's "Deploy" section about bounding them.
        assert soaked["bounds"] == dict(
            old_step_freed=True, after_force=0,  # make_predict_function(force=True)
            fixed_size=len({batch for batch, _ in SHAPES}),  # one image_size: batch sizes only
            fixed_size_short_batch=len({batch for batch, _ in SHAPES}) + 1,  # a short last batch
            after_clear_caches=0, after_clear_caches_and_a_call=1,  # jax.clear_caches()
        )


if backend == "tensorflow":

    def test_tensorflow_traces_nothing_after_warm_up(soaked):
        traces = soaked["traces"]
        assert traces[-1] == traces[0] <= len(SHAPES), traces
