# ruff: noqa: I001  (import order matters: transformers before TensorFlow)
"""Test configuration.

transformers (and torch) must be imported before TensorFlow (which keras-hub imports):
the other order can abort with an LLVM "option registered more than once" error.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
from transformers import PvtV2Model  # noqa: E402,F401

import keras  # noqa: E402
import pytest  # noqa: E402

torch.set_num_threads(2)

_PARITY = []


@pytest.fixture(scope="session")
def tiny_classifier_preset(tmp_path_factory):
    """A random-weight transformers PVT v2 checkpoint (4 labels) converted once to a preset,
    shared by the training tests (the conversion takes seconds on JAX)."""
    import keras_pvt
    from tests.helpers.deploy import tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_pvt_v2")
    checkpoint = tiny_checkpoint(root / "transformers", num_labels=4)
    return str(keras_pvt.convert_to_preset(checkpoint, root / "preset"))


@pytest.fixture
def record_delta():
    """Records a measured max |Δ| for the end-of-run parity table."""

    def record(name: str, value: float):
        _PARITY.append((name, float(value)))

    return record


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_terminal_summary(terminalreporter):
    if _PARITY:
        terminalreporter.section(f"max |Δ| against the references ({keras.backend.backend()})")
        for name, value in _PARITY:
            terminalreporter.write_line(f"{name:70s} {value:.3e}")
