"""Input validation: every misuse raises a clear error before any backend kernel runs, on
direct calls, `predict`, and symbolic (functional) use; valid inputs still jit, fit, export
and run in mixed precision."""

import os
import re

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt.convert.pvt_v2 import backbone_kwargs_from_transformers
from tests.helpers.reference import images
from tests.robustness.conftest import numpy, tiny_backbone

F32 = "float32"
NCHW_HINT = re.escape("looks like channels-first (N, 3, H, W); transpose to NHWC")

# (id, array, error type, regex of the message's first line)
BAD_CALL_INPUTS = [
    ("3-D single image", np.zeros((64, 64, 3), F32), ValueError,
     r"expects a 4-D image batch .*received a 3-D input of shape \(64, 64, 3\)"),
    ("5-D video-like", np.zeros((1, 2, 64, 64, 3), F32), ValueError,
     r"expects a 4-D image batch .*received a 5-D input"),
    ("1 channel", np.zeros((2, 64, 64, 1), F32), ValueError,
     r"expects 3 channels in the last axis .*received shape \(2, 64, 64, 1\)"),
    ("4 channels (RGBA)", np.zeros((2, 64, 64, 4), F32), ValueError,
     r"expects 3 channels in the last axis .*received shape \(2, 64, 64, 4\)"),
    ("channels-first", np.zeros((2, 3, 64, 64), F32), ValueError, NCHW_HINT),
    ("uint8 raw pixels", np.zeros((2, 64, 64, 3), "uint8"), TypeError,
     r"expects a floating-point image batch .*received dtype uint8"),
    ("int32", np.zeros((2, 64, 64, 3), "int32"), TypeError, r"received dtype int32"),
    ("bool", np.zeros((2, 64, 64, 3), bool), TypeError, r"received dtype bool"),
    ("strings", np.full((1, 64, 64, 3), "a"), TypeError, r"floating-point image batch"),
    ("empty batch", np.zeros((0, 64, 64, 3), F32), ValueError,
     r"received an empty batch \(shape \(0, 64, 64, 3\)\)"),
    ("height below minimum", np.zeros((1, 28, 64, 3), F32), ValueError,
     r"needs images of at least 29x29 pixels .*received height 28"),
    ("width below minimum", np.zeros((1, 64, 28, 3), F32), ValueError,
     r"needs images of at least 29x29 pixels .*received width 28"),
    ("zero height", np.zeros((1, 0, 64, 3), F32), ValueError, r"received height 0"),
]
IDS = [case[0] for case in BAD_CALL_INPUTS]


def _first_line(error) -> str:
    return str(error).splitlines()[0]


@pytest.mark.parametrize("name,x,error,pattern", BAD_CALL_INPUTS, ids=IDS)
def test_bad_inputs_on_call(backbone, classifier, name, x, error, pattern):
    for model in (backbone, classifier):
        with pytest.raises(error) as info:
            model(x)
        assert type(info.value) is error  # not a backend error subclassing it
        assert type(model).__name__ in _first_line(info.value)
        assert info.match(pattern)


def test_small_image_error_names_the_binding_layer(backbone):
    with pytest.raises(ValueError) as info:
        backbone(np.zeros((1, 28, 64, 3), F32))
    assert "A 28-pixel side gives a 7-pixel map where stage 1's 8x8 spatial-reduction " \
        "convolution (sr_ratios[0]=8) needs at least 8" in str(info.value)


@pytest.mark.parametrize("name,x,error,pattern", [
    ("2-D", np.zeros((64, 64), "uint8"), ValueError,
     r"predict\(\) expects a 4-D batch .*received a 2-D input of shape \(64, 64\)"),
    ("5-D", np.zeros((1, 1, 64, 64, 3), "uint8"), ValueError, r"received a 5-D input"),
    ("channels-first", np.zeros((2, 3, 64, 64), "uint8"), ValueError, NCHW_HINT),
    ("bool", np.zeros((2, 64, 64, 3), bool), TypeError, r"received dtype bool"),
    ("empty batch", np.zeros((0, 64, 64, 3), "uint8"), ValueError, r"empty batch"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_raw_images_on_predict(classifier, name, x, error, pattern):
    with pytest.raises(error, match=pattern):
        classifier.predict(x, verbose=0)


def test_a_single_image_is_a_batch_of_one(classifier):
    image = np.zeros((64, 64, 3), "uint8")
    np.testing.assert_array_equal(classifier.predict(image, verbose=0),
                                  classifier.predict(image[None], verbose=0))


def test_predict_resizes_small_raw_images(classifier):
    # Raw images go through the preprocessor (resize to 64x64 here) first: any size works.
    assert classifier.predict(np.zeros((2, 16, 20, 3), "uint8"), verbose=0).shape == (2, 3)


def test_predict_and_fit_on_preprocessed_data_are_checked(backbone, classifier):
    # TensorFlow traces `predict` with relaxed (unknown) shapes: the data is checked first.
    with pytest.raises(ValueError, match="at least 29x29"):
        backbone.predict(np.zeros((2, 28, 64, 3), F32), verbose=0)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 3, 64, 64), "uint8"), np.zeros((2,), "int32"))
    ).batch(2)
    with pytest.raises(ValueError, match=NCHW_HINT):
        classifier.fit(dataset, verbose=0)


def test_symbolic_use_checks_static_shapes(backbone):
    with pytest.raises(ValueError, match="at least 29x29"):
        backbone(keras.Input((28, None, 3)))
    with pytest.raises(ValueError, match="channels-first"):
        backbone(keras.Input((3, 64, 64)))
    with pytest.raises(TypeError, match="dtype int32"):
        backbone(keras.Input((64, 64, 3), dtype="int32"))
    outputs = backbone(keras.Input((None, None, 3)))  # unknown sizes are accepted
    assert tuple(outputs.shape) == (None, None, None, 32)


def test_fixed_image_shape_mismatch():
    model = tiny_backbone(image_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"built for images of shape \(64, 64, 3\)"):
        model(np.zeros((1, 96, 64, 3), F32))


def _reference_runs(config, size) -> bool:
    from transformers import PvtV2Config, PvtV2Model

    model = PvtV2Model(PvtV2Config(**config)).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size)).last_hidden_state
        return bool(torch.isfinite(out).all())
    except RuntimeError:  # "Kernel size can't be greater than actual input size"
        return False


SMALL = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
             num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])


@pytest.mark.parametrize("overrides,expected,run_keras", [
    ({}, 29, True),  # b0's geometry
    ({"sr_ratios": [4, 2, 1, 1]}, 13, False),
    ({"patch_sizes": [3, 3, 3, 3], "strides": [2, 2, 2, 2]}, 15, False),
    ({"linear_attention": True}, 1, True),
])
def test_minimum_image_size_is_the_reference_models_minimum(overrides, expected, run_keras):
    """The minimum is computed from the config, and the transformers model agrees: it runs
    at the minimum and (with SRA) fails one pixel below."""
    config = {**SMALL, **overrides}
    model = keras_pvt.PVTv2Backbone(**backbone_kwargs_from_transformers(config))
    minimum = model.minimum_image_size()
    assert minimum == expected
    assert _reference_runs(config, minimum)
    model._validate_images(images(1, minimum, minimum))  # accepted
    if run_keras:  # (each new model and size costs JAX a round of op compilation)
        assert np.all(np.isfinite(numpy(model(images(1, minimum, minimum)))))
    if minimum > 1:
        assert not _reference_runs(config, minimum - 1)
        with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
            model(images(1, minimum - 1, minimum))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_propagate_to_their_image_only(backbone, classifier, bad):
    """Documented behaviour: pixel values are not checked; a NaN/Inf pixel makes that
    image's outputs non-finite and leaves the rest of the batch unchanged."""
    x = images(2, 64, 64)
    clean = numpy(backbone(x))
    x[0, 10, 20, 1] = bad
    out = numpy(backbone(x))
    assert not np.isfinite(out[0]).any()
    np.testing.assert_allclose(out[1], clean[1], atol=1e-5)
    raw = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(F32)
    raw[1, 5, 5, 0] = bad
    predictions = classifier.predict(raw, verbose=0)
    assert np.isfinite(predictions[0]).all() and not np.isfinite(predictions[1]).any()


def test_valid_dtypes_and_mixed_precision_pass(backbone):
    for dtype in ("float32", "float16", "bfloat16", "float64"):
        backbone._validate_images(keras.KerasTensor((None, 64, 64, 3), dtype=dtype))
    model = tiny_backbone(dtype="mixed_bfloat16")
    out = model(images(2, 64, 64))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    with pytest.raises(ValueError, match="at least 29x29"):
        model(images(1, 28, 28))


def test_checks_do_not_break_fit(classifier):
    model = keras_pvt.PVTv2Classifier.from_config(classifier.get_config())
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    raw = np.random.default_rng(0).integers(0, 256, (2, 40, 48, 3)).astype("uint8")
    history = model.fit(raw, np.array([0, 2]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_checks_do_not_break_jit_and_export(backbone, tmp_path):
    """Compiled/traced execution of the validated model on each backend."""
    x = images(2, 64, 64)
    expected = numpy(backbone(x))
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, inputs):
            return backbone.stateless_call(trainable, non_trainable, inputs)[0]

        got = forward([v.value for v in backbone.trainable_variables],
                      [v.value for v in backbone.non_trainable_variables], x)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
        # A symbolic batch dimension (jax2tf shape polymorphism) reaches the checks; symbolic
        # image sizes need the export constraints of keras_pvt.export, tested there.
        signature = [keras.InputSpec(shape=(None, 64, 64, 3), dtype=F32)]
    elif backend == "tensorflow":
        import tensorflow as tf

        forward = tf.function(backbone, jit_compile=True, reduce_retracing=True)
        np.testing.assert_allclose(forward(x).numpy(), expected, atol=1e-5)
        signature = None  # (None, None, None, 3): all dims unknown in the trace
    else:  # torch.export traces with a symbolic (SymInt) batch size
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(backbone, (torch.from_numpy(x),),
                                      dynamic_shapes=(({0: batch},),))
        got = program.module()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        return
    import tensorflow as tf

    path = os.fspath(tmp_path / "saved_model")
    backbone.export(path, format="tf_saved_model", verbose=False, input_signature=signature)
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.serve(x).numpy(), expected, atol=1e-5)

