"""Helpers of the training and export tests: tiny models, a learnable synthetic task, and
processes that cannot import keras_pvt.

torch (behind the reference models) is imported lazily: subprocesses that import this module
after TensorFlow must not load it (the other order can abort, see tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import keras
import numpy as np

import keras_pvt


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def colour_task(n: int, size: int = 32, num_classes: int = 3, seed: int = 0):
    """Noisy uint8 images whose class (up to 3) is the colour channel that is brightened:
    learnable in a few epochs by any working classifier, even from random weights."""
    if not 1 < num_classes <= 3:
        raise ValueError("The colour task has 2 or 3 classes.")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 100, (n, size, size, 3))
    images[np.arange(n), ..., labels] += 140
    return images.astype("uint8"), labels.astype("int32")


def tiny_checkpoint(path: Path, num_labels: int = 4, **overrides) -> Path:
    """A random-weight transformers PVT v2 ("tiny" config) saved in its own format."""
    from tests.helpers.reference import hf_pvt_v2

    hf_pvt_v2("tiny", num_labels=num_labels, **overrides).save_pretrained(path)
    return path


def tiny_backbone(config: str = "tiny", **kwargs) -> keras_pvt.PVTv2Backbone:
    """A small PVT v2 backbone from `tests.helpers.reference.PVT_V2_CONFIGS`."""
    from tests.helpers.reference import PVT_V2_CONFIGS

    c = PVT_V2_CONFIGS[config]
    return keras_pvt.PVTv2Backbone(
        hidden_sizes=c["hidden_sizes"], depths=c["depths"], num_heads=c["num_attention_heads"],
        mlp_ratios=c["mlp_ratios"], linear_attention=c.get("linear_attention", False), **kwargs,
    )


def family_backbone(family: str):
    """A tiny seeded backbone of each family (widths 8-32, one block per stage), for task
    heads on every family."""
    keras.utils.set_random_seed(0)
    if family == "pvt_v2":
        return keras_pvt.PVTv2Backbone(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                       num_heads=[1, 2, 3, 4], mlp_ratios=4)
    if family == "pvt":
        return keras_pvt.PVTBackbone(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                     num_heads=[1, 2, 3, 4], mlp_ratios=4)
    return keras_pvt.CvTBackbone(hidden_sizes=[8, 16, 24], depths=[1, 1, 1], num_heads=[1, 2, 3])


def randomize_keras_norms(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random LayerNorm scales and offsets, so that an export that drops them shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.split("/")[-1]
        if name in ("gamma", "beta"):
            base = 1.0 if name == "gamma" else 0.0
            value = base + 0.2 * rng.standard_normal(variable.shape)
            variable.assign(value.astype(variable.dtype))
    return model


def compile_for_classification(model, learning_rate: float = 1e-3, **kwargs):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def site_packages_only_python(code: str, cwd: Path, env: dict | None = None,
                              timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `code` in an isolated interpreter (`-I -S`) that sees this environment's
    site-packages but none of its `.pth` files -- so not keras_pvt's editable install -- and
    neither the repository nor the current directory."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    prologue = f"import sys\nsys.path.extend({paths!r})\n"
    full_env = {
        key: value for key, value in (env or os.environ).items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prologue + code], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"isolated process failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-6000:]}"
        )
    return result
