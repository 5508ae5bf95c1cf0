"""PyTorch kernels: fused biases, channels-last views instead of layout copies, Mix-FFN in
fused pieces, in-place residuals and direct sublayer calls.

keras runs PyTorch eagerly, so every keras-level cost is paid per call: an NHWC <-> NCHW
copy around each convolution, a separate bias pass after each matmul, fresh activations
(page faults on a small CPU) and about 0.15 ms of bookkeeping per sublayer call.
"""

import functools
import inspect
import threading

import keras
import torch
import torch.nn.functional as F
from keras import ops

from keras_pvt.kernels import generic
from keras_pvt.kernels.generic import images_per_chunk, plain


def tracing() -> bool:
    """Whether PyTorch is tracing (torch.export, torch.compile) rather than running eagerly."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _channels_last_conv(inputs, weight, bias=None, **kwargs):
    # An NHWC tensor viewed as NCHW is channels-last: no layout copies.
    return F.conv2d(inputs.permute(0, 3, 1, 2), weight, bias, **kwargs).permute(0, 2, 3, 1)


def dense(layer, inputs):
    """Bias fused into the matmul: keras' separate bias pass was 26% of a b0 forward pass."""
    if not plain(layer):
        return generic.dense(layer, inputs)
    kernel = ops.cast(layer.kernel, inputs.dtype)
    bias = ops.cast(layer.bias, inputs.dtype) if layer.use_bias else None
    outputs = F.linear(inputs, kernel.T, bias)
    return layer.activation(outputs) if layer.activation is not None else outputs


def conv2d(layer, inputs):
    if not (layer.padding == "valid" and layer.groups == 1
            and layer.data_format == "channels_last" and plain(layer)):
        return generic.conv2d(layer, inputs)
    pad = layer.explicit_padding
    weight = ops.cast(layer.kernel, inputs.dtype).permute(3, 2, 0, 1)  # HWIO -> OIHW
    bias = ops.cast(layer.bias, inputs.dtype) if layer.use_bias else None
    outputs = _channels_last_conv(
        inputs, weight, bias, stride=layer.strides, padding=(pad, pad),
        dilation=layer.dilation_rate,
    )
    return layer.activation(outputs) if layer.activation is not None else outputs


def depthwise_conv2d(layer, inputs):
    """69 ms instead of keras' 177 ms for a (16, 56, 56, 256) map and a 3x3 kernel."""
    if not generic.depthwise_same(layer):
        return generic.depthwise_conv2d(layer, inputs)
    kh, kw = layer.kernel_size
    weight = ops.cast(layer.kernel, inputs.dtype).permute(2, 3, 0, 1)  # -> (C, 1, kh, kw)
    outputs = _channels_last_conv(
        inputs, weight, padding=(kh // 2, kw // 2), groups=inputs.shape[-1]
    )
    if layer.use_bias:
        outputs = outputs + ops.cast(layer.bias, outputs.dtype)
    return layer.activation(outputs) if layer.activation is not None else outputs


def mix_ffn(layer, inputs, training=None):
    """Mix-FFN in image pieces with the biases fused into the kernels.

    Also used in training (autograd follows the pieces): eager PyTorch keeps no restacked
    copies, and fresh whole-batch activations would cost page faults.
    """
    if not (len(inputs.shape) == 4 and (layer.dropout == 0.0 or not training)
            and all(plain(sub) for sub in (layer.dense1, layer.dwconv, layer.dense2))
            and generic.depthwise_same(layer.dwconv)):
        return layer.mix(inputs, training=training)
    dtype = inputs.dtype
    w1, b1 = ops.cast(layer.dense1.kernel, dtype).T, ops.cast(layer.dense1.bias, dtype)
    w2, b2 = ops.cast(layer.dense2.kernel, dtype).T, ops.cast(layer.dense2.bias, dtype)
    depthwise = ops.cast(layer.dwconv.kernel, dtype).permute(2, 3, 0, 1)  # -> (C, 1, kh, kw)
    depthwise_bias = ops.cast(layer.dwconv.bias, dtype)
    kh, kw = layer.dwconv.kernel_size
    per_chunk = inputs.shape[0]
    # Traced for export / torch.compile: one piece (sizes may be symbolic, and data-
    # dependent piece counts would add shape guards).
    if not tracing() and all(isinstance(d, int) for d in inputs.shape[:3]):
        per_image = inputs.shape[1] * inputs.shape[2] * layer.intermediate_size * inputs.itemsize
        per_chunk = images_per_chunk(inputs.shape[0], per_image)
    outputs = []
    inference = not torch.is_grad_enabled()
    for chunk in inputs.split(per_chunk) if per_chunk < inputs.shape[0] else [inputs]:
        hidden = F.linear(chunk, w1, b1)
        if layer.linear:
            hidden = F.relu_(hidden) if inference else F.relu(hidden)
        x = _channels_last_conv(
            hidden, depthwise, depthwise_bias, padding=(kh // 2, kw // 2),
            groups=layer.intermediate_size,
        )
        outputs.append(F.linear(F.gelu(x), w2, b2))
    return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=0)


def residual(shortcut, branch):
    """`shortcut + branch`; in inference written into `branch`, a fresh tensor that nothing
    else holds: a new activation per residual (12.8 MB per block in b2's first stage at
    batch 16) costs page faults on a small CPU."""
    if (not keras.backend.is_keras_tensor(branch) and not torch.is_grad_enabled()
            and not tracing() and branch.shape == shortcut.shape):
        return branch.add_(shortcut)
    return shortcut + branch


def score_gradient(forward, x, model):
    x = ops.convert_to_tensor(x).requires_grad_(True)
    score, aux = forward(x, None)
    (grad,) = torch.autograd.grad(score, x)  # not `backward()`: no `.grad` on the weights
    return aux, grad


def gather(x, indices, axis: int):
    """`index_select`: keras' `take` adds a `squeeze` that torch ignores but ONNX rejects."""
    return torch.index_select(x, axis, indices.long())


_calls = threading.local()


@functools.cache
def _takes_training(cls) -> bool:
    return "training" in inspect.signature(cls.call).parameters


class DirectCall:
    """Mixin for keras layers: inside another layer's call, run `call` directly.

    `Layer.__call__` (argument binding, autocast and name scopes, input conversion, tree
    traversals) costs about 0.15 ms per call on a small CPU; PVT v2 b0 makes ~130 sublayer
    calls per forward pass, 23 ms of fixed cost. Inside an enclosing layer's `__call__` all
    of that is already in place (dtype policy, autocast scope, a resolved `training` flag,
    which callers pass explicitly), so a built sublayer called on a tensor skips it. The
    outermost call, and symbolic (functional-construction) calls, take keras' path.
    """

    def __call__(self, *args, **kwargs):
        if (getattr(_calls, "depth", 0) and self.built and args and torch.is_tensor(args[0])
                and plain(self)):  # (keras' __call__ dispatches quantized calls)
            if "training" in kwargs and not _takes_training(type(self)):
                del kwargs["training"]
            return self.call(*args, **kwargs)
        _calls.depth = getattr(_calls, "depth", 0) + 1
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _calls.depth -= 1
