"""Portable kernels (keras ops), and the rules the backend versions share."""

import keras
from keras import ops

# Largest expanded hidden activation (bytes) that Mix-FFN materialises at once.
CHUNK_BYTES = 8 * 2**20


def images_per_chunk(batch: int, bytes_per_image: int, divisor: bool = False) -> int:
    """How many images to process at once so that one piece's activation is <= ~8 MiB.

    A whole batch's expanded FFN activation is tens of MB: it streams through memory
    between every step (dense, depthwise conv, GELU, dense) and, on PyTorch, glibc serves
    each such block with fresh `mmap`s whose page faults cost more than the arithmetic on a
    small CPU. Pieces of a few MB stay in cache from one step to the next. Measured on a
    2-core CPU, PVT v2 b0's stage-1 Mix-FFN at batch 16 on PyTorch: 68 ms whole, 19 ms in
    pieces of 2 images; the whole b0 forward pass: +16% on JAX, +10% on TensorFlow. Exact:
    each image is computed independently. `divisor` makes the piece size divide `batch`
    (for equal pieces on JAX and TensorFlow).
    """
    per_chunk = max(1, min(batch, CHUNK_BYTES // max(1, bytes_per_image)))
    while divisor and batch % per_chunk:
        per_chunk -= 1
    return per_chunk


def inference_pieces(layer, inputs, training) -> int | None:
    """Images per piece for Mix-FFN on JAX / TensorFlow, or None to run the whole batch.

    Inference only, with a static batch: in training, XLA restacks the pieces' saved
    activations for the backward pass, which measured slower. Counted in float32 bytes.
    """
    batch = inputs.shape[0]
    if training or len(inputs.shape) != 4:
        return None
    if not all(isinstance(d, int) for d in inputs.shape[:3]):
        return None  # unknown (TensorFlow's relaxed traces) or symbolic (JAX export) sizes
    per_image = inputs.shape[1] * inputs.shape[2] * layer.intermediate_size * 4
    per_chunk = images_per_chunk(batch, per_image, divisor=True)
    return per_chunk if per_chunk < batch else None


def plain(layer) -> bool:
    """No LoRA or quantization: keras' own call handles those."""
    return not getattr(layer, "lora_enabled", False) and not getattr(
        layer, "quantization_mode", None
    )


def depthwise_same(layer) -> bool:
    """A stride-1, 'same', odd-kernel, channels-last depthwise convolution (the fast case)."""
    return (
        layer.padding == "same"
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.depth_multiplier == 1
        and layer.data_format == "channels_last"
        and all(k % 2 == 1 for k in layer.kernel_size)
    )


def shifted_sum(inputs, kernel):
    """Stride-1 'same' depthwise convolution of NHWC `inputs` with a `(kh, kw, C)` kernel."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    padded = ops.pad(inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
    outputs = None
    for i in range(kh):
        for j in range(kw):
            term = padded[:, i : i + height, j : j + width, :] * kernel[i, j]
            outputs = term if outputs is None else outputs + term
    return outputs


def dense(layer, inputs):
    return keras.layers.Dense.call(layer, inputs)


def conv2d(layer, inputs):
    """Convolution after `layer.explicit_padding` zeros on every side (torch's padding)."""
    pad = layer.explicit_padding
    if pad:
        inputs = ops.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return keras.layers.Conv2D.call(layer, inputs)


def depthwise_conv2d(layer, inputs):
    return keras.layers.DepthwiseConv2D.call(layer, inputs)


def mix_ffn(layer, inputs, training=None):
    return layer.mix(inputs, training=training)


def residual(shortcut, branch):
    return shortcut + branch


def gather(x, indices, axis: int):
    return ops.take(x, indices, axis=axis)


class DirectCall:
    """Nothing to skip outside PyTorch: keras traces the graph once."""


def score_gradient(forward, x, model):
    """`forward(x, state) -> (score, aux)`: returns `(aux, d score / d x)`. Needs a backend
    with automatic differentiation (TensorFlow, JAX, PyTorch)."""
    raise NotImplementedError(
        f"Gradients are not available on the {keras.backend.backend()} backend; use "
        "TensorFlow, JAX or PyTorch."
    )
