"""Unit tests of the shared layers against PyTorch, and their configs."""

import keras
import numpy as np
import pytest
import torch

from keras_pvt import layers


@pytest.mark.parametrize("size", [(4, 5), (7, 7), (13, 19), (25, 38), (56, 56), (50, 58)])
def test_adaptive_pooling_matches_torch(size):
    x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype("float32")
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), 7
    ).numpy().transpose(0, 2, 3, 1)
    pool = layers.AdaptiveAveragePooling2D(7)
    got = keras.ops.convert_to_numpy(pool(x))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Inside a compiled graph with unknown spatial size too (tf.function / jax.jit / torch).
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, pool(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-6)


def test_drop_path_is_identity_at_inference_and_drops_samples_in_training():
    x = np.ones((64, 3, 3, 4), "float32")
    drop = layers.DropPath(0.5, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(drop(x)), x)
    y = keras.ops.convert_to_numpy(drop(x, training=True))
    per_sample = y.reshape(64, -1)
    # Each sample is either dropped whole or kept and scaled by 1 / (1 - rate).
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 10 < (per_sample[:, 0] == 0).sum() < 54
    with pytest.raises(ValueError, match="rate"):
        layers.DropPath(1.0)


def test_gelu_is_exact():
    x = np.linspace(-12, 12, 2001).astype("float32")
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layers.gelu(x)), want, atol=2e-6)


def _mix_ffn_reference(layer, x):
    """Mix-FFN in plain PyTorch with the layer's weights."""
    (w1, b1), (dw, db), (w2, b2) = (
        (layer.dense1.kernel, layer.dense1.bias),
        (layer.dwconv.kernel, layer.dwconv.bias),
        (layer.dense2.kernel, layer.dense2.bias),
    )
    as_torch = lambda w: torch.from_numpy(keras.ops.convert_to_numpy(w))  # noqa: E731
    with torch.no_grad():
        h = torch.from_numpy(x) @ as_torch(w1) + as_torch(b1)
        if layer.linear:
            h = torch.relu(h)
        h = torch.nn.functional.conv2d(
            h.permute(0, 3, 1, 2), as_torch(dw).permute(2, 3, 0, 1), as_torch(db),
            padding=1, groups=h.shape[-1],
        ).permute(0, 2, 3, 1)
        return (torch.nn.functional.gelu(h) @ as_torch(w2) + as_torch(b2)).numpy()


@pytest.mark.parametrize("batch", [5, 6])
@pytest.mark.parametrize("linear", [False, True])
def test_mix_ffn_in_image_chunks_matches_reference(monkeypatch, batch, linear):
    from keras_pvt.kernels import generic as ffn

    x = np.random.default_rng(4).standard_normal((batch, 7, 9, 8)).astype("float32")
    layer = layers.MixFFN(8, 24, linear=linear)
    layer.build(x.shape)
    rng = np.random.default_rng(5)
    for weight in layer.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.3)
    want = _mix_ffn_reference(layer, x)
    # Whole batch, then pieces of 1 image (batch 5) or 2-3 images (batch 6), eagerly, in a
    # compiled predict (PyTorch: the fused no-grad path) and, on PyTorch, with autograd.
    for chunk_bytes in (2**40, 7 * 9 * 24 * 4, 2 * 7 * 9 * 24 * 4):
        monkeypatch.setattr(ffn, "CHUNK_BYTES", chunk_bytes)
        assert ffn.images_per_chunk(batch, 7 * 9 * 24 * 4, divisor=True) in (1, 2, 3, batch)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), want, atol=2e-5)
        inputs = keras.Input((7, 9, 8), batch_size=batch)
        model = keras.Model(inputs, layer(inputs))
        np.testing.assert_allclose(model.predict_on_batch(x), want, atol=2e-5)
    if keras.backend.backend() == "torch":
        tensor = torch.from_numpy(x).requires_grad_()
        out = layer(tensor)
        out.sum().backward()
        np.testing.assert_allclose(out.detach().numpy(), want, atol=2e-5)
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize(
    "kernel, stride, padding, channels, size",
    [
        (7, 4, 3, 3, (224, 224)),  # PVT v2 stem
        (7, 4, 3, 3, (197, 231)),
        (7, 4, 2, 3, (101, 64)),  # CvT stem
        (8, 8, 0, 16, (56, 56)),  # spatial reduction
        (4, 4, 0, 16, (30, 17)),  # PVT v1 patches, sizes not multiples of the stride
        (3, 2, 1, 16, (15, 9)),
    ],
)
def test_strided_conv_matches_torch(kernel, stride, padding, channels, size):
    x = np.random.default_rng(6).standard_normal((2, *size, channels)).astype("float32")
    layer = layers.Conv2D(8, kernel, strides=stride, explicit_padding=padding)
    layer.build(x.shape)
    layer.bias.assign(np.random.default_rng(7).standard_normal(8).astype("float32"))
    got = keras.ops.convert_to_numpy(layer(x))
    want = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(keras.ops.convert_to_numpy(layer.kernel).transpose(3, 2, 0, 1)),
        torch.from_numpy(keras.ops.convert_to_numpy(layer.bias)),
        stride=stride, padding=padding,
    ).numpy().transpose(0, 2, 3, 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_patch_embedding_pads_like_torch():
    x = np.random.default_rng(1).standard_normal((1, 31, 30, 3)).astype("float32")
    layer = layers.OverlapPatchEmbedding(8, patch_size=7, stride=4)
    out = keras.ops.convert_to_numpy(layer(x))
    conv = torch.nn.Conv2d(3, 8, 7, stride=4, padding=3)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(
            keras.ops.convert_to_numpy(layer.proj.kernel).transpose(3, 2, 0, 1)))
        conv.bias.copy_(torch.from_numpy(keras.ops.convert_to_numpy(layer.proj.bias)))
        ref = conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
        ref = torch.nn.functional.layer_norm(ref, (8,), eps=1e-6).numpy()
    assert out.shape == ref.shape == (1, 8, 8, 8)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert layer.compute_output_shape((1, 31, 30, 3)) == (1, 8, 8, 8)


@pytest.mark.parametrize(
    "layer",
    [
        layers.OverlapPatchEmbedding(16, 3, 2, epsilon=1e-5),
        layers.SpatialReductionAttention(16, 2, sr_ratio=2, epsilon=1e-5),
        layers.SpatialReductionAttention(16, 2, linear=True, qkv_bias=False),
        layers.MixFFN(16, 32, linear=True),
        layers.MLP(16, 32),
        layers.DropPath(0.1, seed=3),
        layers.AdaptiveAveragePooling2D((3, 5)),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(2).standard_normal((2, 14, 10, 16 if "Patch" not in
                                                  type(layer).__name__ else 3)).astype("float32")
    y = layer(x)
    clone(x)
    if layer.weights:
        clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(y), atol=1e-6
    )


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        layers.SpatialReductionAttention(10, 3)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_depthwise_conv_fast_path_matches_torch(kernel_size):
    x = np.random.default_rng(3).standard_normal((2, 9, 12, 6)).astype("float32")
    layer = layers.DepthwiseConv2D(kernel_size, padding="same")
    layer.build(x.shape)
    kernel = keras.ops.convert_to_numpy(layer.kernel).transpose(2, 3, 0, 1)
    bias = keras.ops.convert_to_numpy(layer.bias) + 0.5
    layer.bias.assign(bias)
    out = keras.ops.convert_to_numpy(layer(x))
    want = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(kernel),
        torch.from_numpy(bias), padding=kernel_size // 2, groups=6,
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, want, atol=1e-5)
    # Inside a compiled function with unknown spatial size as well.
    inputs = keras.Input((None, None, 6))
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)


def _input_and_kernel_gradients(layer, x, upstream):
    """d(sum(layer(x) * upstream)) / d(x, kernel) with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def objective(x, kernel):
            values = [kernel if v is layer.kernel else v.value for v in layer.trainable_variables]
            out, _ = layer.stateless_call(values, [], x)
            return (out * upstream).sum()

        grads = jax.grad(objective, argnums=(0, 1))(x, layer.kernel.value)
    elif backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        grads = tape.gradient(loss, [x, layer.kernel.value])
    else:
        x = torch.from_numpy(x).requires_grad_()
        (layer(x) * torch.from_numpy(upstream)).sum().backward()
        grads = x.grad, layer.kernel.value.grad
    return [keras.ops.convert_to_numpy(g) for g in grads]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_depthwise_conv_gradients_match_torch(kernel_size):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 9, 12, 6)).astype("float32")
    upstream = rng.standard_normal((2, 9, 12, 6)).astype("float32")
    layer = layers.DepthwiseConv2D(kernel_size, padding="same")
    layer.build(x.shape)
    grad_x, grad_kernel = _input_and_kernel_gradients(layer, x, upstream)

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    tk = torch.from_numpy(
        keras.ops.convert_to_numpy(layer.kernel).transpose(2, 3, 0, 1).copy()
    ).requires_grad_()
    out = torch.nn.functional.conv2d(tx, tk, padding=kernel_size // 2, groups=6)
    (out.permute(0, 2, 3, 1) * torch.from_numpy(upstream)).sum().backward()
    np.testing.assert_allclose(grad_x, tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(grad_kernel, tk.grad.numpy().transpose(2, 3, 0, 1), atol=1e-4)


def test_kernels_dispatch_to_the_backend_module():
    from keras_pvt import kernels
    from keras_pvt.kernels import generic

    backend = keras.backend.backend()
    fast = {"torch": ("dense", "conv2d", "depthwise_conv2d", "mix_ffn", "residual", "gather"),
            "jax": ("depthwise_conv2d", "mix_ffn"), "tensorflow": ("mix_ffn",)}[backend]
    for name in ("dense", "conv2d", "depthwise_conv2d", "mix_ffn", "residual", "gather"):
        chosen = getattr(kernels, name)
        assert (chosen is not getattr(generic, name)) == (name in fast), name
        assert chosen.__module__ == ("keras_pvt.kernels." + backend if name in fast
                                     else "keras_pvt.kernels.generic")


def test_sublayers_run_directly_inside_a_block_on_torch(monkeypatch):
    """On PyTorch a block's sublayers skip keras' `Layer.__call__` (the same numbers);
    elsewhere every call goes through it (the graph is traced once)."""
    block = layers.PVTv2Block(16, 2, 2, 2)
    x = np.random.default_rng(8).standard_normal((2, 8, 8, 16)).astype("float32")
    want = keras.ops.convert_to_numpy(block(x))
    entered = []
    real_call = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        entered.append(type(self).__name__)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    got = keras.ops.convert_to_numpy(block(x))
    np.testing.assert_array_equal(got, want)
    if keras.backend.backend() == "torch":
        assert entered == ["PVTv2Block"]
    else:
        assert "LayerNormalization" in entered and "SpatialReductionAttention" in entered
