"""Export on every backend: TF SavedModel (any batch, any image size; reloaded where
keras_pvt cannot be imported), ONNX (onnxruntime) and LiteRT/TFLite (the TFLite
interpreter), for a b0-structured (small widths) and a b2-linear (adaptive pooling)
classifier, a SegFormer segmenter and a GLPN depth estimator (dynamic-size bilinear
resizes); a clear error naming
the backend to use where a format cannot be produced."""

import contextlib
import importlib.util
import io
import json
import sys
import time

import keras
import numpy as np
import pytest

import keras_pvt
from keras_pvt.export import ExportError
from tests.helpers.deploy import (
    numpy,
    randomize_keras_norms,
    site_packages_only_python,
    tiny_backbone,
    tiny_checkpoint,
)
from tests.helpers.hub_cache import offline_env, run

BACKEND = keras.backend.backend()
# "tiny" has b0's structure (SRA with ratios 8/4/2/1, 7/3/3/3 patches) with small widths.
CONFIGS = {"b0_structured": "tiny", "b2_linear": "b2_linear_small"}
# Two batch sizes at one image size, and a second image size (non-square, then square).
CASES = [(1, 64, 96), (3, 64, 96), (2, 128, 128)]

SAVED_MODEL_BACKENDS = ("tensorflow", "jax")
ONNX_BACKENDS = ("tensorflow", "torch") + (("jax",) if importlib.util.find_spec("jax2onnx")
                                          else ())
LITERT_BACKENDS = ("tensorflow",) + (("torch",) if importlib.util.find_spec("litert_torch")
                                     else ())


@pytest.fixture(scope="module", params=[*sorted(CONFIGS), "segformer", "glpn"])
def classifier(request):
    """A classifier per config, a SegFormer segmenter (stride-4 logits) and a GLPN depth
    estimator (depth at the input size)."""
    keras.utils.set_random_seed(0)
    if request.param == "glpn":
        model = keras_pvt.GLPNDepthEstimator(backbone=tiny_backbone("tiny"),
                                             decoder_hidden_size=16)
    elif request.param == "segformer":
        model = keras_pvt.SegFormerSegmenter(backbone=tiny_backbone("tiny"), num_classes=5,
                                             decoder_hidden_size=16)
    else:
        model = keras_pvt.PVTv2Classifier(backbone=tiny_backbone(CONFIGS[request.param]),
                                          num_classes=5)
    return request.param, randomize_keras_norms(model)


def keras_outputs(model, x):
    """The Keras reference, compiled (on JAX much faster than an eager call per shape)."""
    return numpy(model.predict_on_batch(x))


def inputs(batch, height, width, seed=0):
    rng = np.random.default_rng(seed + 7 * batch + height)
    return rng.standard_normal((batch, height, width, 3)).astype("float32")


def timed_export(model, path, record_delta, label, **kwargs):
    """Exports with the default verbosity, which prints at most a few lines (keras printed
    ~200 lines of `Captures:` for a SavedModel)."""
    start = time.perf_counter()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        model.export(str(path), **kwargs)
    record_delta(f"{label}: export wall time (s)", time.perf_counter() - start)
    lines = printed.getvalue().splitlines()
    assert len(lines) <= 3, "\n".join(lines[:20])


RELOAD = """
import json, pathlib, sys
try:
    import keras_pvt
except ImportError:
    pass
else:
    raise SystemExit("keras_pvt is importable in the isolated process")
import numpy as np
import tensorflow as tf

here = pathlib.Path.cwd()
loaded = tf.saved_model.load(str(here / "saved_model"))
spec = loaded.serve.concrete_functions[0].structured_input_signature[0][0]
for path in sorted(here.glob("x_*.npy")):
    np.save(here / path.name.replace("x_", "y_"), loaded.serve(np.load(path)).numpy())
print(json.dumps({"input_shape": [None if d is None else int(d) for d in spec.shape]}))
"""


def test_saved_model_any_batch_any_size_reloads_without_keras_pvt(classifier, tmp_path,
                                                                  record_delta):
    name, model = classifier
    if BACKEND not in SAVED_MODEL_BACKENDS:
        with pytest.raises(ExportError, match="TensorFlow or JAX backend"):
            model.export(str(tmp_path / "saved_model"))
        assert not (tmp_path / "saved_model").exists()
        return
    timed_export(model, tmp_path / "saved_model", record_delta, f"SavedModel {name}")
    expected = {}
    for case in CASES:
        x = inputs(*case)
        np.save(tmp_path / "x_{}_{}_{}.npy".format(*case), x)
        expected[case] = keras_outputs(model, x)
    result = site_packages_only_python(RELOAD, cwd=tmp_path)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "input_shape": [None, None, None, 3]
    }
    delta = max(
        float(np.abs(np.load(tmp_path / "y_{}_{}_{}.npy".format(*case)) - y).max())
        for case, y in expected.items()
    )
    record_delta(f"SavedModel {name} vs Keras (2 batch sizes, 2 image sizes)", delta)
    assert delta < 1e-5


def run_onnx(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    return session.run(None, {image_input.name: x})[0], image_input.shape


def test_onnx_matches_keras(classifier, tmp_path, record_delta):
    name, model = classifier
    path = tmp_path / "model.onnx"
    if BACKEND not in ONNX_BACKENDS:
        with pytest.raises(ExportError, match="PyTorch or TensorFlow backend"):
            model.export(str(path), format="onnx")
        return
    if BACKEND == "torch":  # a dynamic batch; the image size is fixed at export
        timed_export(model, path, record_delta, f"ONNX {name}", format="onnx",
                     image_size=(64, 96))
        cases = [case for case in CASES if case[1:] == (64, 96)]
    else:
        timed_export(model, path, record_delta, f"ONNX {name}", format="onnx")
        cases = CASES
    delta = 0.0
    for case in cases:
        x = inputs(*case)
        y, shape = run_onnx(path, x)
        delta = max(delta, float(np.abs(y - keras_outputs(model, x)).max()))
    assert isinstance(shape[0], str)  # symbolic batch
    if BACKEND == "torch":
        assert shape[1:] == [64, 96, 3]
    else:
        assert all(isinstance(d, str) for d in shape[1:3])
    record_delta(f"ONNX {name} vs Keras ({len(cases)} batch/size cases)", delta)
    assert delta < 1e-4


def tflite_interpreter(path):
    if importlib.util.find_spec("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter
    else:  # TensorFlow 2.21 still ships it (deprecated)
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path))


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_litert_matches_keras(classifier, tmp_path, record_delta):
    name, model = classifier
    path = tmp_path / "model.tflite"
    if BACKEND not in LITERT_BACKENDS:
        with pytest.raises(ExportError, match="use the TensorFlow backend"):
            model.export(str(path), format="tflite")
        return
    timed_export(model, path, record_delta, f"LiteRT {name}", format="litert")
    interpreter = tflite_interpreter(path)
    (image_input,) = interpreter.get_input_details()
    assert list(image_input["shape_signature"]) == [-1, -1, -1, 3]
    delta = 0.0
    for case in CASES:
        x = inputs(*case)
        interpreter.resize_tensor_input(image_input["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(image_input["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        delta = max(delta, float(np.abs(y - keras_outputs(model, x)).max()))
    record_delta(f"LiteRT {name} vs Keras (2 batch sizes, 2 image sizes)", delta)
    assert delta < 1e-4


def test_export_argument_errors(tmp_path):
    model = keras_pvt.PVTv2Classifier(backbone=tiny_backbone(), num_classes=2)
    supported = {"tensorflow": "litert", "jax": "tf_saved_model", "torch": "onnx"}[BACKEND]
    with pytest.raises(ExportError, match="below this model's minimum"):
        model.export(str(tmp_path / "m.tflite"), format=supported, image_size=8)
    with pytest.raises(ValueError, match="Unrecognized format"):
        model.export(str(tmp_path / "m"), format="caffe")
    if BACKEND == "tensorflow":
        with pytest.raises(ExportError, match=r"must end in '\.tflite'"):
            model.export(str(tmp_path / "m.bin"), format="litert")
    if BACKEND == "torch":
        backbone = tiny_backbone()  # no preprocessor: the size must be given
        with pytest.raises(ExportError, match="needs a fixed image size"):
            backbone.export(str(tmp_path / "b.onnx"), format="onnx")


if BACKEND == "tensorflow":  # the one backend that writes all three formats

    def test_export_example_offline(tmp_path, record_delta):
        checkpoint = tiny_checkpoint(tmp_path / "ckpt", num_labels=4)
        env = offline_env(tmp_path / "hf", tmp_path / "keras")
        result = run([sys.executable, "examples/export.py", "--preset", str(checkpoint),
                      "--output", str(tmp_path / "exported")], env)
        lines = {line.split()[0]: line for line in result.stdout.splitlines()
                 if line.split() and line.split()[0] in ("tf_saved_model", "onnx", "litert")}
        assert sorted(lines) == ["litert", "onnx", "tf_saved_model"], result.stdout
        for format, line in lines.items():
            delta = float(line.rsplit(" ", 1)[-1])
            record_delta(f"examples/export.py {format} vs Keras", delta)
            assert delta < 1e-4, line
        assert "top-1 for grace_hopper.jpg: label_" in result.stdout


def test_other_families_export_through_the_same_path(tmp_path, record_delta):
    """PVT v1 (position embeddings resized to each input) takes the same export path."""
    backbone = keras_pvt.PVTBackbone(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                     num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
    model = randomize_keras_norms(keras_pvt.PVTClassifier(backbone=backbone, num_classes=3))
    cases = [(1, 64, 96), (3, 64, 96)]
    if BACKEND == "torch":
        path = tmp_path / "pvt.onnx"
        try:
            model.export(str(path), format="onnx", image_size=(64, 96), verbose=False)
        except ExportError as error:  # torch.onnx mistranslates the gather-based resize
            assert "use the TensorFlow backend" in str(error)
            assert not path.exists()
            return
        run = lambda x: run_onnx(path, x)[0]  # noqa: E731
    else:
        import tensorflow as tf

        path = tmp_path / "saved_model"
        model.export(str(path), verbose=False)
        loaded = tf.saved_model.load(str(path))
        run = lambda x: loaded.serve(x).numpy()  # noqa: E731
        cases.append((2, 128, 128))
    delta = max(float(np.abs(run(inputs(*c)) - keras_outputs(model, inputs(*c))).max())
                for c in cases)
    record_delta("PVT v1 export vs Keras", delta)
    assert delta < 1e-5
