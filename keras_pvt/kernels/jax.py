"""JAX kernels: the depthwise convolution as a fused shifted sum with an explicit gradient,
and Mix-FFN in pieces through `lax.map`."""

import jax
from keras import ops

from keras_pvt.kernels import generic
from keras_pvt.kernels.generic import inference_pieces, shifted_sum


@jax.custom_vjp
def _depthwise_same(inputs, kernel):
    return shifted_sum(inputs, kernel)


def _depthwise_forward(inputs, kernel):
    return shifted_sum(inputs, kernel), (inputs, kernel)


def _depthwise_backward(residuals, grad):
    # The input gradient is the same shifted sum with the kernel flipped; autodiff's
    # transposed slices and pads made a b0 training step 2.3x slower.
    inputs, kernel = residuals
    kh, kw = kernel.shape[0], kernel.shape[1]
    grad_inputs = shifted_sum(grad, kernel[::-1, ::-1])
    padded = ops.pad(inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
    taps = [
        ops.sum(padded[:, i : i + height, j : j + width, :] * grad, axis=(0, 1, 2))
        for i in range(kh)
        for j in range(kw)
    ]
    return grad_inputs, ops.reshape(ops.stack(taps), kernel.shape)


_depthwise_same.defvjp(_depthwise_forward, _depthwise_backward)


def depthwise_conv2d(layer, inputs):
    """XLA's grouped convolution is slow on CPU (460 ms for a (16, 56, 56, 256) map, 3x3);
    the k*k shifted, per-channel scaled slices fuse into one loop (124 ms)."""
    if not generic.depthwise_same(layer):
        return generic.depthwise_conv2d(layer, inputs)
    outputs = _depthwise_same(inputs, ops.cast(layer.kernel, inputs.dtype)[:, :, :, 0])
    if layer.use_bias:
        outputs = outputs + ops.cast(layer.bias, outputs.dtype)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def mix_ffn(layer, inputs, training=None):
    per_chunk = inference_pieces(layer, inputs, training)
    if per_chunk is None:
        return layer.mix(inputs, training=training)
    # A loop (not unrolled) lets XLA reuse one piece-sized buffer.
    batch = inputs.shape[0]
    pieces = ops.reshape(inputs, (batch // per_chunk, per_chunk, *inputs.shape[1:]))
    outputs = jax.lax.map(lambda piece: layer.mix(piece, training=False), pieces)
    return ops.reshape(outputs, (batch, *inputs.shape[1:-1], layer.hidden_size))


def score_gradient(forward, x, model):
    # One compiled forward and backward pass (op-by-op autodiff compiles every op); the
    # weights are arguments, not constants baked into the program.
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables])
    (_, aux), grad = jax.jit(jax.value_and_grad(forward, has_aux=True))(x, state)
    return aux, grad
