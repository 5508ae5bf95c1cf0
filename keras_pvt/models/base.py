"""Behaviour shared by every backbone and task: input validation, presets, per-stage
configuration."""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
import inspect
import json
import typing
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
from keras_hub.models import FeaturePyramidBackbone, Task

from keras_pvt.catalog import PresetError
from keras_pvt.checkpoints.io import CheckpointError, check_keras_weights
from keras_pvt.export import ExportMixin
from keras_pvt.layers.core import checkpointing_obstacle


class classproperty:  # noqa: N801 - mirrors the builtin `property`
    """A read-only property on the class (keras-hub's own helper is private)."""

    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


# --- Input validation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Downsampling:
    """One spatial down-sampling step of a backbone, as the input-size check sees it.

    A convolution-like step `out = (size + 2 * padding - kernel) // stride + 1`, and the
    smallest feature map `min_output` that the layers after it accept (e.g. a spatial-
    reduction convolution with an r x r kernel needs maps of at least r pixels).

    Args:
        kernel: kernel size of the step.
        stride: its stride.
        padding: zero padding on each side.
        min_output: the smallest output size the following layers accept.
        reason: what needs `min_output`, for the error message.
    """

    kernel: int
    stride: int
    padding: int = 0
    min_output: int = 1
    reason: str = ""

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


def minimum_input_size(steps: Sequence[Downsampling]) -> int:
    """The smallest input size (per spatial axis) for which every step's output is at least
    its `min_output` (and at least 1 pixel)."""
    need = 1
    for step in reversed(steps):
        need = max(need, step.min_output, 1)
        # out >= need  <=>  size >= (need - 1) * stride + kernel - 2 * padding
        need = max((need - 1) * step.stride + step.kernel - 2 * step.padding, 1)
    return need


def _explain_too_small(steps: Sequence[Downsampling], size: int) -> str:
    for index, step in enumerate(steps):
        out = step.output_size(size)
        if out < max(step.min_output, 1):
            what = step.reason or f"down-sampling step {index + 1}"
            return f"a {size}-pixel side gives a {max(out, 0)}-pixel map where {what} needs " \
                f"at least {step.min_output}"
        size = out
    return ""


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _static_shape_and_dtype(inputs):
    """`(shape, dtype)` of an array-like input, with None for unknown dims; None if the input
    is not a single array-like (Keras then handles it)."""
    if isinstance(inputs, dict) and len(inputs) == 1:
        inputs = next(iter(inputs.values()))
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1 and hasattr(inputs[0], "shape"):
        inputs = inputs[0]  # Keras reads a 1-element structure as the single input
    if not (hasattr(inputs, "shape") and hasattr(inputs, "dtype")):
        return None
    try:
        dims = list(inputs.shape)
    except (TypeError, ValueError):  # a TensorFlow tensor of unknown rank
        return None
    # Symbolic dimensions (JAX shape polymorphism, torch SymInt) count as unknown: converting
    # them to int would raise or specialise the trace.
    shape = [int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else None
             for d in dims]
    try:
        dtype = keras.backend.standardize_dtype(inputs.dtype)
    except (TypeError, ValueError, AttributeError):
        dtype = str(inputs.dtype)
    return tuple(shape), dtype


def _rank_error(expects: str, shape: tuple, channels: int) -> ValueError:
    message = (
        f"{expects} (batch, height, width, {channels}); received a {len(shape)}-D input of "
        f"shape {shape}."
    )
    if len(shape) == 3:
        message += " For a single image, add a batch axis: `images[None]`."
        if shape[0] == channels and shape[-1] != channels:
            message += " It also looks channels-first (3, H, W): transpose to HWC."
    return ValueError(message)


def _channels_message(name: str, shape: tuple, channels: int) -> str:
    message = (
        f"{name} expects {channels} channels in the last axis of a channels-last batch "
        f"(batch, height, width, {channels}); received shape {shape}."
    )
    if len(shape) >= 3 and shape[-3] == channels:
        axes = "(0, 2, 3, 1)" if len(shape) == 4 else "(1, 2, 0)"
        message += (
            f" It looks like channels-first (N, {channels}, H, W); transpose to NHWC, e.g. "
            f"`np.transpose(images, {axes})`."
        )
    return message


class ImageInputMixin:
    """Checks every call's image batch against the model before any kernel runs.

    Raised errors name what was expected: a 4-D channels-last batch (`TypeError` for a
    non-float dtype; `ValueError` for a wrong rank, a wrong channel count -- with a hint when
    the batch looks channels-first --, an empty batch, a size other than a fixed
    `image_shape`, or images smaller than the architecture supports, with the minimum size
    computed from the configuration). The checks read only static shapes and dtypes, so they
    run unchanged on eager calls, `predict`/`fit` (traced or jit-compiled), symbolic
    (functional) use and SavedModel export, and cost nothing per step.

    Pixel values are not inspected: NaN or Inf pixels propagate, making that image's outputs
    non-finite, while the other images of the batch are unaffected. Check untrusted inputs
    with `np.isfinite` if that matters.

    Families describe their spatial down-sampling with `_input_geometry`; the minimum image
    size follows from it.
    """

    def _input_geometry(self) -> list[Downsampling]:
        """The backbone's down-sampling steps, in order (per family; none by default)."""
        backbone = getattr(self, "backbone", None)
        if backbone is not None and backbone is not self and hasattr(backbone, "_input_geometry"):
            return backbone._input_geometry()
        return []

    def minimum_image_size(self) -> int:
        """The smallest image height and width (pixels) that this configuration accepts."""
        return minimum_input_size(self._input_geometry())

    def _expected_image_shape(self) -> tuple:
        inputs = getattr(self, "inputs", None)
        if inputs and len(inputs) == 1:
            return tuple(inputs[0].shape[1:])
        return (None, None, 3)

    def _validate_images(self, inputs) -> None:
        found = _static_shape_and_dtype(inputs)
        if found is None:
            return
        shape, dtype = found
        name = type(self).__name__
        expected = self._expected_image_shape()
        channels = expected[-1]
        if "float" not in dtype:
            raise TypeError(
                f"{name} expects a floating-point image batch (normalised pixels, "
                f"channels last); received dtype {dtype} (shape {shape}). Raw images go "
                "through `predict()` or the preprocessor, which resize and normalise them; "
                "otherwise cast and normalise them first."
            )
        if len(shape) != 4:
            raise _rank_error(f"{name} expects a 4-D image batch", shape, channels)
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise ValueError(_channels_message(name, shape, channels))
        if shape[0] == 0:
            raise ValueError(f"{name} received an empty batch (shape {shape}); pass at least "
                             "one image.")
        for axis, label in ((1, "height"), (2, "width")):
            fixed = expected[axis - 1]
            if fixed is not None and shape[axis] is not None and shape[axis] != fixed:
                raise ValueError(
                    f"{name} was built for images of shape {expected} (`image_shape`); "
                    f"received {shape}, whose {label} differs. Resize the images, or build "
                    f"the model with `image_shape=(None, None, {channels})` for any size."
                )
        minimum = self.minimum_image_size()
        for axis, label in ((1, "height"), (2, "width")):
            if shape[axis] is not None and shape[axis] < minimum:
                explanation = _explain_too_small(self._input_geometry(), shape[axis])
                raise ValueError(
                    f"{name} needs images of at least {minimum}x{minimum} pixels with this "
                    f"configuration; received {label} {shape[axis]} (shape {shape}). "
                    + (f"{explanation[0].upper()}{explanation[1:]}. " if explanation else "")
                    + "Resize or pad the images (a classifier's `predict()` resizes raw "
                    "images to its preprocessor's size)."
                )

    def __call__(self, *args, **kwargs):
        if args:
            self._validate_images(args[0])
        elif "inputs" in kwargs:
            self._validate_images(kwargs["inputs"])
        return super().__call__(*args, **kwargs)

    # Also on `call`: JAX's `fit`/`predict` and `stateless_call` enter here, not `__call__`.
    def call(self, inputs, training=None, mask=None, **kwargs):
        self._validate_images(inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    # `predict`/`fit`/`evaluate` check their data up front: TensorFlow traces the steps with
    # relaxed (unknown) shapes, and a classifier's preprocessor resizes raw images first.
    def predict(self, x=None, *args, **kwargs):
        self._validate_data(x, "predict")
        return super().predict(x, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        self._validate_data(x, "fit")
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._validate_data(x, "evaluate")
        return super().evaluate(x, *args, **kwargs)

    def _validate_data(self, x, method: str) -> None:
        spec = getattr(x, "element_spec", None)  # a tf.data.Dataset: check its static spec
        if spec is not None:
            x = spec[0] if isinstance(spec, tuple) else spec
        if getattr(self, "preprocessor", None) is not None:
            self._validate_raw_images(x, method)
        else:
            self._validate_images(x)

    def _validate_raw_images(self, x, method: str) -> None:
        """Checks raw images given to `predict`/`fit`/`evaluate` before preprocessing."""
        found = _static_shape_and_dtype(x)
        if found is None:
            return
        shape, dtype = found
        name = f"{type(self).__name__}.{method}()"
        channels = self._expected_image_shape()[-1]
        if dtype == "bool" or not any(t in dtype for t in ("int", "float")):
            raise TypeError(
                f"{name} expects raw images as integers (e.g. uint8 in [0, 255]) or floats; "
                f"received dtype {dtype} (shape {shape})."
            )
        if len(shape) != 4:
            raise _rank_error(f"{name} expects a 4-D batch of images", shape, channels)
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise ValueError(_channels_message(name, shape, channels))
        if shape[0] == 0:
            raise ValueError(f"{name} received an empty batch (shape {shape}).")


# Preset names, hf:// handles and checkpoints are resolved by `keras_pvt.hub`, which sits
# above the models (it converts checkpoints into them); it registers itself here on import.
_preset_resolver = None


def set_preset_resolver(resolver) -> None:
    """Installs the object whose `resolve(handle, cls)` (a context manager yielding a
    keras-hub preset) and `presets_for(cls)` serve `from_preset` and `presets`."""
    global _preset_resolver
    _preset_resolver = resolver


def _resolver():
    if _preset_resolver is None:
        # A model module was imported without the package's `_load`: importing the hub
        # (above this layer, so by name) installs it.
        importlib.import_module("keras_pvt.hub")
    return _preset_resolver


class PresetMixin(ExportMixin, ImageInputMixin):
    """`from_preset` that also understands keras_pvt preset names, `hf://` repositories and
    transformers / timm / original checkpoints (directories or single files).

    Everything is converted once into keras-hub's preset format and then loaded by
    keras-hub, so `load_weights`, `num_classes`, `dtype`, `image_shape`... behave as in
    keras-hub. Every keras_pvt backbone and task derives from it, so all of them
    validate their inputs (`ImageInputMixin`) and export with dynamic shapes and clear
    per-backend errors (`keras_pvt.export.ExportMixin`).
    """

    @classproperty
    def presets(cls) -> dict:
        """The built-in presets this class can load, with description, size and source."""
        return _resolver().presets_for(cls)

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True, **kwargs):
        """Builds the model from a preset name, `hf://owner/repo`, or a local path.

        Args:
            preset: a keras_pvt preset name (see `presets`), `hf://owner/repo` (keras-hub,
                transformers or timm layout), a local directory (same layouts) or a single
                checkpoint file (`.safetensors`, `.bin`, `.pth`).
            load_weights: `False` builds the architecture with random weights.
            **kwargs: forwarded to keras-hub, e.g. `num_classes=N` for a new head,
                `dtype="mixed_bfloat16"`, `image_shape=(224, 224, 3)`.
        """
        if "num_classes" in kwargs and "class_names" in inspect.signature(cls.__init__).parameters:
            kwargs.setdefault("class_names", None)  # a new head: no names unless given
        with _resolver().resolve(preset, cls) as local_preset:
            _check_task_kind(cls, preset, local_preset, kwargs)
            return super().from_preset(local_preset, load_weights=load_weights, **kwargs)

    # --- PyTorch: a real `torch.nn.Module` -------------------------------------------------
    # keras makes a `ParameterDict` of the model's variables, but keras-hub sets attributes
    # with `object.__setattr__` while a model is built on PyTorch, so torch never saw it:
    # `parameters()` was empty, and torch optimizers, `state_dict()` and
    # `DistributedDataParallel` had nothing to work on. These register the current
    # variables (including LoRA's, added later) each time torch asks for them.

    def _track_variables(self):
        super()._track_variables()
        import torch

        torch.nn.Module.__setattr__(self, "_torch_params", self._torch_params)

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        self._track_variables()
        return super().named_parameters(prefix, recurse, remove_duplicate)

    def state_dict(self, *args, **kwargs):
        self._track_variables()
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self._track_variables()
        return super().load_state_dict(state_dict, *args, **kwargs)

    def quantize(self, mode=None, **kwargs):
        """`keras.Model.quantize` (e.g. `"int8"`: the Dense layers' weights, which hold most of
        the parameters, become int8 with per-channel scales), without keras' warning for each
        layer it leaves in float (norms, convolutions, pooling)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            return super().quantize(mode, **kwargs)

    # keras-hub loads presets through these two. Keras matches weights to layers by order and
    # ignores leftover tensors, so the file's structure is checked first, and load errors
    # name the file.
    def load_weights(self, filepath, *args, **kwargs):
        if str(filepath).endswith(".weights.h5") and not kwargs.get("skip_mismatch"):
            check_keras_weights(filepath, self.weights, type(self).__name__)
        with _naming_file(filepath, type(self).__name__):
            return super().load_weights(filepath, *args, **kwargs)

    def load_task_weights(self, filepath):
        backbone_ids = {id(v) for v in self.backbone.weights}
        head = [v for v in self.weights if id(v) not in backbone_ids]
        check_keras_weights(filepath, head, f"{type(self).__name__} head")
        with _naming_file(filepath, type(self).__name__):
            # (the optimizer state of presets saved before 0.2 is ignored, not restored)
            keras.saving.load_weights(self, filepath, objects_to_skip=self._not_head())

    def save_task_weights(self, filepath):
        """The head's weights only: not the backbone's (in its own file) nor the optimizer's
        state, which keras-hub saved after `fit` (doubling a preset's size and warning on
        every reload)."""
        keras.saving.save_weights(self, filepath, objects_to_skip=self._not_head())

    def _not_head(self) -> list:
        optimizer = [self.optimizer] if getattr(self, "optimizer", None) is not None else []
        return [*self.backbone._flatten_layers(), *optimizer]


def _check_task_kind(cls, handle, local_preset, kwargs) -> None:
    """A task class loading a preset that holds another kind of model (a segmenter as a
    classifier, a bare backbone...) needs `num_classes` for a new head: say so, instead of
    keras-hub's missing-argument error."""
    directory = Path(str(local_preset))
    if not issubclass(cls, Task) or "num_classes" in kwargs or not directory.is_dir():
        return  # backbones; a new head; keras-hub's remote handles
    saved = directory / "task.json"
    found = None
    if saved.is_file():
        with contextlib.suppress(ValueError, OSError):
            found = keras.saving.get_registered_object(
                json.loads(saved.read_text()).get("registered_name", ""))
    if isinstance(found, type) and issubclass(found, cls):
        return
    held = f"a {found.__name__}" if isinstance(found, type) else "a backbone without a head"
    if not _required_head_arguments(cls):  # e.g. a depth estimator: a new head needs nothing
        warnings.warn(f"{handle!s} holds {held}: {cls.__name__} puts a new, untrained head on "
                      "its backbone.", stacklevel=4)
        return
    raise PresetError(
        f"{handle!s} holds {held}, not a {cls.__name__}: load it with "
        f"{found.__name__ if isinstance(found, type) else 'its backbone class'}, or pass "
        f"num_classes=N to {cls.__name__}.from_preset to put a new head on its backbone."
    )


def _required_head_arguments(cls) -> list[str]:
    """`__init__` arguments of a task class without defaults, besides the backbone."""
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is p.empty and name not in ("self", "backbone")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@contextlib.contextmanager
def _naming_file(filepath, what: str):
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:  # h5py and keras raise many kinds on a damaged file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{filepath}: could not be loaded into {what}: {type(error).__name__}: {first}"
        ) from error


# --- Backbones -------------------------------------------------------------------------------


def per_stage(name: str, values, num_stages: int) -> list:
    """One value per stage; a single value (not a sequence) is used for every stage."""
    if isinstance(values, (str, bool, int, float)):
        return [values] * num_stages
    values = list(values)
    if len(values) != num_stages:
        raise ValueError(
            f"`{name}` needs one value per stage ({num_stages} stages, from `depths`); "
            f"received {values}."
        )
    return values


def spatial_reduction_steps(patch_sizes, strides, paddings, sr_ratios) -> list[Downsampling]:
    """PVT's stages as down-sampling steps: each patch embedding, after which an SRA
    convolution (kernel = stride = sr_ratio, no padding) needs a map of sr_ratio pixels."""
    return [
        Downsampling(kernel, stride, padding, ratio,
                     f"stage {stage + 1}'s {ratio}x{ratio} spatial-reduction convolution "
                     f"(sr_ratios[{stage}]={ratio})")
        for stage, (kernel, stride, padding, ratio)
        in enumerate(zip(patch_sizes, strides, paddings, sr_ratios))
    ]


class PyramidBackbone(PresetMixin, FeaturePyramidBackbone):
    """Base of the keras_pvt backbones: presets, input checks, and a config that is every
    `__init__` argument, those annotated `Sequence[...]` as one value per stage."""

    @classmethod
    def _arguments(cls, values: dict) -> SimpleNamespace:
        """The `__init__` arguments, taken from its `locals()`, the per-stage ones (annotated
        `Sequence[...]`) as lists of one value per stage: the config the graph is built from."""
        config = {}
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name in ("self", "dtype", "kwargs"):
                continue
            config[name] = values[name]
            if typing.get_origin(parameter.annotation) is collections.abc.Sequence:
                config[name] = per_stage(name, values[name], len(values["depths"]))
        config["image_shape"] = tuple(config["image_shape"])
        return SimpleNamespace(**config)

    def _set_config(self, config: SimpleNamespace) -> None:
        """Stores the config as attributes (after the functional model is initialised)."""
        for name, value in vars(config).items():
            setattr(self, name, value)
        self._config_names = tuple(vars(config))

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._config_names})
        return config

    def attention_blocks(self) -> list:
        """The encoder blocks (layers with `attention_probabilities`), in the order they run."""
        return [layer for layer in self.layers if hasattr(layer, "attention_probabilities")]

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recomputes each encoder block's activations in the backward pass instead of
        keeping them (transformers' `gradient_checkpointing_enable()`): training peak
        memory falls, a step costs about one more forward pass. Call it before `fit` (or
        before `compile` when `fit` already ran).

        Raises:
            ValueError: a block draws random masks in training (dropout or drop path above
                0: the recomputation would draw new ones) or has batch normalisation (CvT's
                projections: its statistics would be updated twice).
        """
        blocks = self.attention_blocks()
        if enabled:
            obstacle = next(filter(None, map(checkpointing_obstacle, blocks)), None)
            if obstacle is not None:
                raise ValueError(
                    f"Gradient checkpointing recomputes each encoder block exactly, but "
                    f"{obstacle}. Build the backbone with drop_path_rate=0.0 and dropout "
                    "rates 0; CvT's batch-normalised projections cannot be checkpointed.")
        for block in blocks:
            block.gradient_checkpointing = enabled

    def attention_maps(self, images, batch_size: int | None = None) -> list[np.ndarray]:
        """The softmax attention probabilities of every encoder block, in order.

        Args:
            images: a float batch `(batch, height, width, 3)` as the backbone takes it
                (normalised; any size the backbone accepts).
            batch_size: images per forward pass (all at once by default).

        Returns:
            one NumPy array per block, `(batch, heads, queries, keys)`, the values
            transformers returns as `attentions`. Queries are the block's tokens in row-major
            order, the class token first where the family has one (PVT v1's and CvT's last
            stage); keys are the tokens attended to: spatially reduced for SRA (an
            `H/r x W/r` grid), the 7x7 pooled grid for linear SRA, CvT's strided key
            projection. Every row sums to 1.

        A second graph computes them from each block's input, so the model's own forward
        pass neither slows down nor keeps them.

        Example:
        ```python
        maps = backbone.attention_maps(images)  # normalised float images, as `backbone(x)`
        print(len(maps) == sum(backbone.depths), maps[-1].shape)  # True (batch, heads, q, k)
        ```
        """
        model = _attention_model(self)
        self._validate_images(images)
        images = np.asarray(images)
        step = batch_size or len(images)
        parts = [model.predict_on_batch(images[i:i + step]) for i in range(0, len(images), step)]
        return [np.concatenate([np.asarray(part[block]) for part in parts])
                for block in range(len(parts[0]))]


_ATTENTION_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _AttentionProbabilities(keras.layers.Layer):
    """A block's attention probabilities, computed from the block's own inputs."""

    def __init__(self, block, **kwargs):
        super().__init__(name=f"{block.name}_attention", dtype=block.dtype_policy, **kwargs)
        self.block = block

    def call(self, inputs, *extra):
        return self.block.attention_probabilities(inputs, *extra)


def _attention_model(backbone) -> keras.Model:
    """A model from the backbone's images to every block's attention probabilities (built
    once per backbone; it shares the backbone's layers and weights)."""
    model = _ATTENTION_MODELS.get(backbone)
    if model is None:
        blocks = backbone.attention_blocks()
        if not blocks:
            raise TypeError(f"{type(backbone).__name__} has no attention blocks.")
        outputs = []
        for block in blocks:
            inputs = block.input if isinstance(block.input, list) else [block.input]
            outputs.append(_AttentionProbabilities(block)(*inputs))
        model = keras.Model(backbone.input, outputs, name=f"{backbone.name}_attention")
        _ATTENTION_MODELS[backbone] = model
    return model


class FamilyTaskMixin:
    """A task for any keras_pvt backbone whose instances take their family's subclass.

    keras-hub's `from_preset` finds a task class from its backbone's class, so each family
    declares a subclass with its `backbone_cls` (`PVTv2SegFormerSegmenter`...), and
    `SegFormerSegmenter(backbone=cvt, ...)` builds a `CvTSegFormerSegmenter`: what a saved
    preset names, and what reloads through keras-hub.
    """

    backbone_cls = None  # any keras_pvt backbone; each family's subclass sets its own

    def __new__(cls, *args, **kwargs):
        backbone = kwargs.get("backbone", args[0] if args else None)
        if backbone is not None:
            cls = _family_subclass(cls, type(backbone))
        return super().__new__(cls, *args, **kwargs)


def _family_subclass(cls: type, backbone_type: type) -> type:
    """The most specific registered subclass of `cls` made for `backbone_type`."""
    best = cls
    stack = list(cls.__subclasses__())
    while stack:
        sub = stack.pop()
        stack.extend(sub.__subclasses__())
        wanted = getattr(sub, "backbone_cls", None)
        if wanted is None or not issubclass(backbone_type, wanted):
            continue
        current = getattr(best, "backbone_cls", None)
        if current is None or issubclass(wanted, current):
            best = sub
    return best
