"""keras' core layers, computing through `keras_pvt.kernels`.

Same variables, names and checkpoints as keras' layers; only `call` goes through the
backend's fast path (fused bias, channels-last views, direct sublayer calls on PyTorch).
"""

import inspect
import weakref

import keras

from keras_pvt import kernels


@keras.saving.register_keras_serializable(package="keras_pvt")
class Layer(kernels.DirectCall, keras.layers.Layer):
    """Base of keras_pvt's layers: sublayers called directly on PyTorch, and a config that
    is the `__init__` arguments, stored by `_store_arguments(locals())`."""

    _config_names: tuple[str, ...] = ()

    def _store_arguments(self, values: dict) -> None:
        """Keeps each `__init__` argument (of this class and its bases) found in `values`
        (the caller's `locals()`) as an attribute of the same name, and in the config."""
        names = []
        for cls in type(self).__mro__:
            if "__init__" in vars(cls) and issubclass(cls, Layer):
                names += [name for name in inspect.signature(cls.__init__).parameters
                          if name in values and name not in ("self", "args", "kwargs")]
        for name in names:
            setattr(self, name, values[name])
        self._config_names = tuple(dict.fromkeys((*self._config_names, *names)))

    # Set by the backbone's `enable_gradient_checkpointing()` on its blocks (not saved).
    gradient_checkpointing = False

    def _checkpointed(self, forward, *inputs, training=None):
        """`forward(*inputs, training=training)`; while training with gradient checkpointing,
        its activations are recomputed in the backward pass instead of kept (`keras.remat`:
        `jax.checkpoint`, `tf.recompute_grad`, `torch.utils.checkpoint`). `None` inputs
        (an absent class token) stay out of the checkpointed arguments."""
        if not (self.gradient_checkpointing and training):
            return forward(*inputs, training=training)

        def run(*tensors):
            given = iter(tensors)
            return forward(*[None if x is None else next(given) for x in inputs], training=True)

        return keras.remat(run)(*[x for x in inputs if x is not None])

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._config_names})
        return config


def checkpointing_obstacle(block) -> str | None:
    """Why `block` cannot be checkpointed, or None. Recomputing a block must replay its
    forward pass exactly and change no state: a random mask (dropout, drop path) would be
    drawn again, and batch-norm statistics updated twice (and, on JAX, from inside
    `jax.checkpoint`, which cannot carry state out)."""
    for layer in block._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            return f"{block.name} has batch normalisation ({layer.name})"
        if (getattr(layer, "rate", 0) or 0) > 0:
            return f"{block.name} has {type(layer).__name__} {layer.name} with rate {layer.rate}"
    return None


def adopt_remat_scope(model) -> None:
    """Turns keras' per-layer rematerialisation (layers built inside `keras.RematScope`) into
    keras_pvt's per-block gradient checkpointing.

    keras would rematerialise every layer separately, passing non-tensor arguments
    (`training`) through `tf.recompute_grad` / `jax.checkpoint`, and also the preprocessing
    layers that run in the data pipeline; each backend failed one of those. An encoder block
    built inside the scope is checkpointed whole instead (if it can be: see
    `checkpointing_obstacle`), and no other layer is.
    """
    preprocessor = getattr(model, "preprocessor", None)
    if model in _ADOPTED and _ADOPTED[model] is preprocessor:
        return  # (called by every fit/predict/evaluate: walk the layers once)
    layers = list(model._flatten_layers())
    if preprocessor is not None:
        layers += list(preprocessor._flatten_layers())
    for layer in layers:
        # keras' record of the scope: None, or a RematMode whose `mode` may be None.
        if getattr(getattr(layer, "_remat_mode", None), "mode", None) is None:
            continue
        if hasattr(layer, "attention_probabilities"):  # an encoder block
            layer.gradient_checkpointing = checkpointing_obstacle(layer) is None
        layer._remat_mode = None
    _ADOPTED[model] = preprocessor


_ADOPTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its preprocessor


@keras.saving.register_keras_serializable(package="keras_pvt")
class Dense(kernels.DirectCall, keras.layers.Dense):
    """`keras.layers.Dense`; on PyTorch the bias is fused into the matmul."""

    def call(self, inputs, training=None):
        return kernels.dense(self, inputs)

    def quantize(self, mode=None, type_check=True, config=None):
        # keras quantizes only exact `Dense` instances; this subclass changes no weights.
        super().quantize(mode, type_check=False, config=config)


@keras.saving.register_keras_serializable(package="keras_pvt")
class Conv2D(kernels.DirectCall, keras.layers.Conv2D):
    """`keras.layers.Conv2D` (padding 'valid') with PyTorch-style symmetric zero padding.

    keras' 'same' padding is asymmetric for strides > 1, so references that pad k // 2 on
    both sides need explicit padding.

    Args:
        explicit_padding: zero padding added on every side before the convolution.
        **kwargs: `keras.layers.Conv2D` arguments.
    """

    def __init__(self, *args, explicit_padding: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.explicit_padding = explicit_padding

    def call(self, inputs):
        return kernels.conv2d(self, inputs)

    def compute_output_shape(self, input_shape):
        pad = 2 * self.explicit_padding
        padded = [input_shape[0]] + [None if d is None else d + pad for d in input_shape[1:3]]
        return super().compute_output_shape((*padded, input_shape[3]))

    def get_config(self):
        config = super().get_config()
        config["explicit_padding"] = self.explicit_padding
        return config


@keras.saving.register_keras_serializable(package="keras_pvt")
class DepthwiseConv2D(kernels.DirectCall, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D`, with the backend's fastest exact kernel for the
    stride-1 'same' case (see `keras_pvt.kernels`)."""

    def call(self, inputs):
        return kernels.depthwise_conv2d(self, inputs)


@keras.saving.register_keras_serializable(package="keras_pvt")
class LayerNormalization(kernels.DirectCall, keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (called directly inside blocks on PyTorch)."""


@keras.saving.register_keras_serializable(package="keras_pvt")
class BatchNormalization(kernels.DirectCall, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (called directly inside blocks on PyTorch)."""


@keras.saving.register_keras_serializable(package="keras_pvt")
class Dropout(kernels.DirectCall, keras.layers.Dropout):
    """`keras.layers.Dropout` (called directly inside blocks on PyTorch)."""
