"""Data-parallel training on each backend's own engine, two devices on CPU (issue 18):
`examples/distributed.py` in a subprocess, on an offline tiny preset.

- JAX: `keras.distribution.DataParallel` over two virtual XLA CPU devices;
- TensorFlow: `tf.distribute.MirroredStrategy` over two logical CPU devices, `fit` on
  `tf.data`;
- PyTorch: `DistributedDataParallel` (gloo) in two processes, a custom loop; spawned by the
  script, and under `torchrun`.

Each run checks that the loss falls, that every replica ends with the same weights, and that
a single-device copy trained from the same initial weights on the same global batches ends
where the data-parallel model does (every epoch's loss and every weight).
"""

from __future__ import annotations

import json
import math
import sys

import keras
import pytest

from tests.helpers.hub_cache import offline_env, run

BACKEND = keras.backend.backend()
ENGINE = {"jax": "DataParallel", "tensorflow": "MirroredStrategy",
          "torch": "DistributedDataParallel"}[BACKEND]
# Two devices, 32-pixel images, 4 global batches of 16 per epoch: about 10-40 s a run.
FLAGS = ["--devices", "2", "--image-size", "32", "--samples", "64", "--batch-size", "16",
         "--epochs", "3", "--learning-rate", "1e-2"]


@pytest.fixture
def preset(tiny_classifier_preset):
    """A random-weight transformers checkpoint (4 labels) converted to a preset (conftest)."""
    return tiny_classifier_preset


def distributed(preset: str, tmp_path, *extra: str, launcher: list[str] | None = None) -> dict:
    """Runs examples/distributed.py on this backend; returns the figures it reports."""
    report = tmp_path / f"report_{len(list(tmp_path.glob('report_*')))}.json"
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    env.pop("XLA_FLAGS", None)  # the script asks for the virtual devices itself
    command = (launcher or [sys.executable]) + [
        "examples/distributed.py", "--backend", BACKEND, "--preset", preset, *FLAGS,
        "--report", str(report), *extra]
    result = run(command, env)
    # Printed once (by one process): the epochs' losses and the replicas' agreement.
    assert result.stdout.count("epoch 3/3: loss") == 1, result.stdout
    assert result.stdout.count("replicas: max |Δ|") == 1, result.stdout
    return json.loads(report.read_text())


def check_training(figures: dict, record_delta, name: str = ENGINE) -> None:
    """The loss falls and the two replicas hold the same weights."""
    losses = figures["losses"]
    record_delta(f"{name} (2 devices): first epoch loss", losses[0])
    record_delta(f"{name} (2 devices): last epoch loss", losses[-1])
    record_delta(f"{name}: max |Δ| between the replicas' weights",
                 figures["replica_max_abs_diff"])
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 1.4-1.8 down to 0.1-0.2
    assert figures["replicas"] == 2, figures
    assert figures["replica_max_abs_diff"] <= 1e-7, figures  # measured: 0


def check_single_device(figures: dict, record_delta) -> None:
    """A single-device run on the same global batches ends at the same place."""
    record_delta(f"{ENGINE} vs single device: max |Δ| of the epoch losses",
                 figures["single_losses_max_abs_diff"])
    record_delta(f"{ENGINE} vs single device: max |Δ| of the weights",
                 figures["single_weights_max_abs_diff"])
    # Only the order of the floating-point sums differs (measured: about 1e-7).
    assert figures["single_losses_max_abs_diff"] < 1e-5, figures
    assert figures["single_weights_max_abs_diff"] < 1e-5, figures


if BACKEND == "jax":

    def test_jax_data_parallel_on_two_virtual_devices(preset, tmp_path, record_delta):
        figures = distributed(preset, tmp_path, "--compare-single")
        check_training(figures, record_delta)
        check_single_device(figures, record_delta)
        # Every variable is replicated whole on both devices.
        assert figures["fully_replicated"], figures
        assert len(figures["replica_devices"]) == 2, figures


if BACKEND == "tensorflow":

    def test_tensorflow_mirrored_strategy_on_two_logical_devices(preset, tmp_path,
                                                                  record_delta):
        figures = distributed(preset, tmp_path, "--compare-single")
        check_training(figures, record_delta)
        check_single_device(figures, record_delta)
        # The variables are MirroredVariables, with copies on the two logical CPU devices.
        assert figures["variable_type"] == "MirroredVariable", figures
        devices = figures["replica_devices"]
        assert len(devices) == 2 and devices[0].endswith("CPU:0") and \
            devices[1].endswith("CPU:1"), devices


if BACKEND == "torch":

    def test_torch_distributed_data_parallel_in_two_processes(preset, tmp_path, record_delta):
        spawned = distributed(preset, tmp_path, "--compare-single")
        check_training(spawned, record_delta)
        check_single_device(spawned, record_delta)
        # The same recipe with the processes started by torchrun (RANK, WORLD_SIZE, ...).
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2"]
        launched = distributed(preset, tmp_path, launcher=torchrun)
        check_training(launched, record_delta, "DDP under torchrun")
        difference = max(abs(a - b) for a, b in zip(launched["losses"], spawned["losses"]))
        record_delta("DDP under torchrun vs spawned: max |Δ| of the epoch losses",
                     difference)
        assert difference < 1e-5, (launched["losses"], spawned["losses"])
