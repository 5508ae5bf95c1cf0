"""Backend fast paths, all in one place, with one dispatch.

Layers compute with these functions; each is exact (same result as keras' generic layer, up
to float rounding) and only changes *how* a backend computes:

- `dense`: PyTorch fuses the bias into `F.linear`.
- `conv2d` (symmetric padding): PyTorch puts padding and bias into `F.conv2d` on a
  channels-last view; elsewhere pad, then keras' convolution.
- `depthwise_conv2d` (stride 1, 'same'): JAX a fused shifted sum with an explicit gradient;
  PyTorch a channels-last view; TensorFlow keras' own (already the fastest).
- `mix_ffn`: pieces of ~8 MiB of activation: TensorFlow splits, JAX `lax.map` (inference
  only); PyTorch fused pieces (training too).
- `residual`: PyTorch inference adds in place into the branch.
- `gather`: PyTorch `index_select` (keras' `take` adds a squeeze ONNX rejects).
- `score_gradient`: the gradient of a score with respect to an input (Grad-CAM): a tape on
  TensorFlow, one jit-compiled `value_and_grad` on JAX, `torch.autograd.grad` on PyTorch.
- `DirectCall`: on PyTorch, sublayers skip keras' per-call bookkeeping.

`generic` holds the portable versions; a backend module overrides what it speeds up.
"""

import keras

from keras_pvt.kernels import generic

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    from keras_pvt.kernels import torch as _backend
elif BACKEND == "jax":
    from keras_pvt.kernels import jax as _backend
elif BACKEND == "tensorflow":
    from keras_pvt.kernels import tensorflow as _backend
else:  # other keras backends: the portable versions
    _backend = generic


def _kernel(name: str):
    """The backend's version of `name`, else the portable one."""
    return getattr(_backend, name, getattr(generic, name))


DirectCall = _kernel("DirectCall")
conv2d = _kernel("conv2d")
dense = _kernel("dense")
depthwise_conv2d = _kernel("depthwise_conv2d")
gather = _kernel("gather")
mix_ffn = _kernel("mix_ffn")
residual = _kernel("residual")
score_gradient = _kernel("score_gradient")

__all__ = [
    "BACKEND",
    "DirectCall",
    "conv2d",
    "dense",
    "depthwise_conv2d",
    "gather",
    "mix_ffn",
    "residual",
    "score_gradient",
]
