"""examples/depth_shapes.py run as a user would (a subprocess on the current backend): it
learns depth well beyond the baselines, saves a preset that reloads and draws its picture."""

import importlib.util
import sys

import numpy as np
from PIL import Image

import keras_pvt
from tests.helpers.hub_cache import REPO_ROOT, offline_env, run

EXAMPLE = REPO_ROOT / "examples" / "depth_shapes.py"
# Reduced settings, at the default image size (64): 256 training images, 64 held out.
SAMPLES, EPOCHS, IMAGE_SIZE = 320, 6, 64


def load_example():
    spec = importlib.util.spec_from_file_location("depth_shapes", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed(stdout: str, prefix: str) -> float:
    """The figure after `prefix` on the one line that starts with it."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stdout
    return float(lines[0][len(prefix):].split()[0])


def test_depth_shapes_example(tmp_path, record_delta):
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    # One OpenMP thread: on a busy 2-core machine PyTorch's spinning OpenMP threads can make
    # the training steps 10-20x slower (no effect on TensorFlow's or XLA's thread pools).
    env.setdefault("OMP_NUM_THREADS", "1")
    output, picture = tmp_path / "depth_estimator", tmp_path / "depth.png"
    result = run(
        [sys.executable, "examples/depth_shapes.py", "--samples", str(SAMPLES),
         "--epochs", str(EPOCHS), "--image-size", str(IMAGE_SIZE),
         "--output", str(output), "--picture", str(picture)],
        env,
    )
    abs_rel = printed(result.stdout, "held-out abs-rel:")
    delta = printed(result.stdout, "held-out delta<1.25:")
    baseline = printed(result.stdout, "baseline abs-rel:")
    row_baseline = printed(result.stdout, "row baseline abs-rel:")
    record_delta("examples/depth_shapes.py held-out abs-rel (reduced settings)", abs_rel)
    record_delta("examples/depth_shapes.py held-out δ<1.25 (reduced settings)", delta)
    # The data are the same on every backend: the training median everywhere scores abs-rel
    # 0.390 (δ<1.25 0.314), each row's median 0.225 (0.614). Measured: abs-rel 0.140, 0.194,
    # 0.163 and δ<1.25 0.800, 0.659, 0.778 (TensorFlow, JAX, PyTorch).
    assert abs(baseline - 0.390) < 0.005 and abs(row_baseline - 0.225) < 0.005, result.stdout
    assert abs_rel < 0.24, result.stdout
    assert delta > 0.55, result.stdout

    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 300

    # The saved model reloads and scores the same on the held-out images (the example's
    # split: the last 20%), at the images' size.
    example = load_example()
    model = keras_pvt.GLPNDepthEstimator.from_preset(str(output))
    assert isinstance(model, keras_pvt.PVTv2GLPNDepthEstimator)
    assert model.max_depth == example.MAX_DEPTH and model.decoder_hidden_size == 32
    images, depths = example.depth_dataset(SAMPLES, IMAGE_SIZE, seed=0)
    split = int(0.8 * SAMPLES)
    predicted = model.predict_depth(images[split:], batch_size=32)
    assert predicted.shape == depths[split:].shape and predicted.dtype == np.float32
    reloaded_abs_rel, reloaded_delta = example.depth_errors(depths[split:], predicted)
    assert abs(reloaded_abs_rel - abs_rel) < 0.01
    assert abs(reloaded_delta - delta) < 0.01

    # `--preset`: the backbone of any keras_pvt preset, with its weights.
    backbone = example.load_backbone(str(output))
    assert isinstance(backbone, keras_pvt.PVTv2Backbone)
    for loaded, saved in zip(backbone.weights, model.backbone.weights, strict=True):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
