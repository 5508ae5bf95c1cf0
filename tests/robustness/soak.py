"""Soak: many `predict` calls cycling through input shapes, with resident memory (and the
compiled steps' counts) recorded after every cycle; on JAX, also what bounds its caches.

Run it on its own, in a fresh process, for a longer soak than the suite's 300 calls:
    KERAS_BACKEND=jax python -m tests.robustness.soak --calls 5000
It prints one JSON line of figures (`tests/robustness/test_soak.py` checks them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import weakref
from pathlib import Path

SIZES = (32, 40, 48, 64)  # the tiny SRA config needs at least 29 px
BATCHES = (2, 3)
SHAPES = [(batch, size) for size in SIZES for batch in BATCHES]


def rss_mb() -> float:
    """Resident memory (VmRSS) of this process, after a garbage collection."""
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tiny_classifier(image_size):
    """A seeded tiny PVT v2 classifier; `image_size=None`: the preprocessor keeps each
    image's size, so every input size reaches the model."""
    import keras

    import keras_pvt
    from tests.helpers.reference import PVT_V2_CONFIGS

    keras.utils.set_random_seed(0)
    c = PVT_V2_CONFIGS["tiny"]
    backbone = keras_pvt.PVTv2Backbone(
        hidden_sizes=c["hidden_sizes"], depths=c["depths"], num_heads=c["num_attention_heads"],
        mlp_ratios=c["mlp_ratios"],
    )
    converter = keras_pvt.PVTv2ImageConverter(image_size=image_size)
    return keras_pvt.PVTv2Classifier(
        backbone=backbone, num_classes=3,
        preprocessor=keras_pvt.PVTv2ImageClassifierPreprocessor(image_converter=converter),
    )


def images(batch: int, size: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype="uint8")


# --- What is cached, per backend ---------------------------------------------------------------


def jitted_predict(model):
    """The `jax.jit` function behind a JAX model's `predict_function` (keras keeps it in the
    closures), or None."""
    seen, todo = set(), [model.predict_function]
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if hasattr(fn, "_cache_size"):
            return fn
        for cell in getattr(fn, "__closure__", None) or ():
            if callable(cell.cell_contents):
                todo.append(cell.cell_contents)
    return None


def executables(model) -> int:
    """How many compiled executables the JAX model's jitted predict step holds."""
    return jitted_predict(model)._cache_size()


class Compilations:
    """Counts JAX's XLA compilations in this process (jitted steps and eager ops)."""

    def __init__(self):
        import jax

        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


def disk_entries() -> int | None:
    """Executables in JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR)."""
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory or not Path(directory).is_dir():
        return None
    return len(list(Path(directory).glob("*-cache")))


# --- The soak --------------------------------------------------------------------------------


def soak(calls: int) -> dict:
    """`calls` predict calls of uint8 images cycling through SHAPES, one batch per call, with
    the preprocessor keeping each size (so the model sees all 8 shapes). Figures are taken
    when the model is built and after every cycle; the first cycle is the warm-up."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        # The tiny model gains nothing from intra-op threads; on a busy 2-core machine they
        # spin against tf.data's and made each call 5x slower.
        torch.set_num_threads(1)
    compilations = Compilations() if backend == "jax" else None
    start = time.monotonic()
    model = tiny_classifier(None)
    build_seconds = round(time.monotonic() - start, 1)
    inputs = [images(batch, size) for batch, size in SHAPES]
    built = dict(compilations=compilations and compilations.count, disk=disk_entries())
    figures = {key: [] for key in ("rss_mb", "compilations", "executables", "disk", "traces")}
    start = time.monotonic()
    for call in range(calls):
        i = call % len(SHAPES)
        out = model.predict(inputs[i], batch_size=len(inputs[i]), verbose=0)
        assert out.shape == (len(inputs[i]), 3), out.shape
        if i == len(SHAPES) - 1 or call == calls - 1:  # a cycle, or the run, ends
            figures["rss_mb"].append(round(rss_mb(), 1))
            if backend == "jax":
                figures["compilations"].append(compilations.count - built["compilations"])
                figures["executables"].append(executables(model))
                if built["disk"] is not None:
                    figures["disk"].append(disk_entries() - built["disk"])
            if backend == "tensorflow":
                figures["traces"].append(model.predict_function.experimental_get_tracing_count())
    rss = figures["rss_mb"]
    result = dict(
        backend=backend, calls=calls, shapes=len(SHAPES), build_seconds=build_seconds,
        seconds=round(time.monotonic() - start, 1), growth=rss[-1] / rss[0] - 1,
        # keras' JAX `predict` adds an uncompiled forward pass to every call while any layer
        # of the model is unbuilt
        unbuilt=[layer.name for layer in model._flatten_layers() if not layer.built],
        **{key: values for key, values in figures.items() if values},
    )
    if backend == "jax":
        start = time.monotonic()
        result["bounds"] = jax_bounds(model)
        result["bounds_seconds"] = round(time.monotonic() - start, 1)
    return result


def jax_bounds(model) -> dict:
    """What bounds the JAX predict step's executables, measured on the soaked model."""
    import jax

    figures = {}
    # make_predict_function(force=True) replaces the step; the old one (with its
    # executables) is freed.
    old = weakref.ref(jitted_predict(model))
    model.make_predict_function(force=True)
    gc.collect()
    figures["old_step_freed"] = old() is None
    figures["after_force"] = executables(model)
    # A fixed preprocessing size: inputs of every size reach the model at one size, so only
    # the batch size makes a new shape; a short last batch is one more.
    model.preprocessor.image_converter.image_size = (48, 48)
    for batch, size in SHAPES * 2:
        model.predict(images(batch, size), batch_size=batch, verbose=0)
    figures["fixed_size"] = executables(model)
    model.predict(images(7, 40), batch_size=3, verbose=0)  # batches of 3, 3 and 1
    figures["fixed_size_short_batch"] = executables(model)
    # jax.clear_caches() empties the step's cache; the next call compiles again.
    jax.clear_caches()
    figures["after_clear_caches"] = executables(model)
    model.predict(images(2, 32), batch_size=2, verbose=0)
    figures["after_clear_caches_and_a_call"] = executables(model)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    print(json.dumps(soak(parser.parse_args(argv).calls)))


if __name__ == "__main__":
    main()
