"""examples/segment_shapes.py run as a user would (a subprocess on the current backend):
it learns to segment, saves a preset that reloads and draws its overlay picture."""

import importlib.util
import sys

import numpy as np
from PIL import Image

import keras_pvt
from tests.helpers.hub_cache import REPO_ROOT, offline_env, run

EXAMPLE = REPO_ROOT / "examples" / "segment_shapes.py"
# Reduced settings, at the default image size (64): 256 training images, 64 held out.
SAMPLES, EPOCHS, IMAGE_SIZE = 320, 10, 64


def load_example():
    spec = importlib.util.spec_from_file_location("segment_shapes", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segment_shapes_example(tmp_path, record_delta):
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    # One OpenMP thread: on a busy 2-core machine PyTorch's spinning OpenMP threads can make
    # the training steps 10-20x slower (no effect on TensorFlow's or XLA's thread pools).
    env.setdefault("OMP_NUM_THREADS", "1")
    output, overlay = tmp_path / "segmenter", tmp_path / "overlay.png"
    result = run(
        [sys.executable, "examples/segment_shapes.py", "--samples", str(SAMPLES),
         "--epochs", str(EPOCHS), "--image-size", str(IMAGE_SIZE),
         "--output", str(output), "--overlay", str(overlay)],
        env,
    )
    lines = [line for line in result.stdout.splitlines()
             if line.startswith("held-out mean IoU:")]
    assert len(lines) == 1, result.stdout
    mean_iou = float(lines[0].split(":")[1])
    record_delta("examples/segment_shapes.py held-out mean IoU (reduced settings)", mean_iou)
    # Everything background scores ~0.18; measured 0.50 (JAX), 0.54 (TF), 0.57 (PyTorch).
    assert mean_iou > 0.35, result.stdout
    assert "per-class IoU: background" in result.stdout

    with Image.open(overlay) as picture:
        assert picture.format == "PNG" and picture.width > 200 and picture.height > 200

    # The saved segmenter reloads with its class names and scores the same on the held-out
    # images (the example's split: the last 20%).
    example = load_example()
    model = keras_pvt.SegFormerSegmenter.from_preset(str(output))
    assert isinstance(model, keras_pvt.PVTv2SegFormerSegmenter)
    assert model.num_classes == 5 and model.class_names == list(example.CLASSES)
    images, masks = example.shapes_dataset(SAMPLES, IMAGE_SIZE, seed=0)
    split = int(0.8 * SAMPLES)
    predicted = model.segment(images[split:])
    assert predicted.shape == masks[split:].shape and predicted.dtype == np.int32
    iou = example.per_class_iou(example.confusion_matrix(masks[split:], predicted, 5))
    assert abs(np.nanmean(iou) - mean_iou) < 0.01

    # `--preset`: a new 5-class head on the preset's backbone, with its weights.
    fine_tune = example.build_model(str(output), IMAGE_SIZE, decoder_hidden_size=32)
    assert fine_tune.num_classes == 5 and fine_tune.decoder_hidden_size == 32
    for loaded, saved in zip(fine_tune.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
