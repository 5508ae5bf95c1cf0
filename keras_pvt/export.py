"""Export keras_pvt models for inference: TensorFlow SavedModel, ONNX and LiteRT (TFLite).

`export(model, path, format=...)` is what every keras_pvt backbone's and classifier's
`model.export(...)` calls. It adds to `keras.Model.export`:

- dynamic shapes by default: any batch size, and any image size (at least the model's
  `minimum_image_size()`) where the format and backend allow it. On JAX the SavedModel's
  height and width are symbolic with that minimum as a constraint (keras' default leaves them
  unconstrained and the spatial-reduction shapes cannot be proven valid).
- ONNX from the PyTorch backend through `torch.onnx.export(dynamo=True)` with a dynamic batch
  (keras' route samples every unknown dimension as 1, too small for any image model); the
  graph must pass ONNX's shape inference, or an `ExportError` says to use TensorFlow.
- ONNX from TensorFlow through tf2onnx, which lacks TensorFlow's `Erfc` (exact GELU); it is
  mapped to ONNX `1 - Erf`.
- a clear `ExportError` naming the backend to use when a format cannot be produced on the
  current one, or the package that is missing.

| format | TensorFlow | JAX | PyTorch |
|---|---|---|---|
| `"tf_saved_model"` | any batch, any size | any batch, any size >= minimum | no (needs torch_xla) |
| `"onnx"` | any batch, any size | only with `jax2onnx` installed | any batch, fixed size |
| `"litert"` (`"tflite"`) | any batch, any size | no | only with `litert-torch` |

Exported graphs compute `model(images)` with `training=False`: classifiers return logits of an
already normalised NHWC float32 batch (the preprocessor is not part of the artifact), and
backbones their last feature map.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import keras

FORMAT_ALIASES = {"saved_model": "tf_saved_model", "tflite": "litert"}
FORMATS = ("tf_saved_model", "onnx", "litert")

# The smallest image side used when a model cannot tell its own minimum: every keras_pvt
# backbone down-samples by 32.
_DEFAULT_MINIMUM_SIZE = 32
_INSTALL_HINT = "pip install 'keras-pvt[export]'"


class ExportError(ValueError):
    """A format that cannot be exported on this backend, or a missing export package."""


def export(
    model: keras.Model,
    filepath: str | Path,
    format: str = "tf_saved_model",  # keras' own argument name
    *,
    image_size: int | Sequence[int] | None = None,
    input_signature=None,
    verbose: bool = False,
    **kwargs,
):
    """Exports `model` for inference.

    Args:
        model: a keras_pvt backbone or classifier (any single-image-input Keras model).
        filepath: output directory (SavedModel) or file (`.onnx`, `.tflite`).
        format: `"tf_saved_model"` (alias `"saved_model"`), `"onnx"`, `"litert"` (alias
            `"tflite"`); other `keras.Model.export` formats are passed to keras unchanged.
        image_size: `(height, width)` (or one int) to fix the exported image size; by
            default the size stays dynamic where the format and backend allow it. ONNX from
            PyTorch needs a fixed size and defaults to the model's `image_shape` or its
            preprocessor's image size.
        input_signature: as in `keras.Model.export`; overrides `image_size`.
        verbose: print keras' summary of the artifact (its endpoints and the ~200 captured
            variables of a SavedModel); quiet by default.
        **kwargs: passed to `keras.Model.export` (e.g. `opset_version`, LiteRT converter
            options, `jax2tf_kwargs`).

    Raises:
        ExportError: the format cannot be produced on the current backend (the message names
            the backend to use) or a package it needs is not installed.
    """
    format = FORMAT_ALIASES.get(format, format)
    backend = keras.backend.backend()
    filepath = str(filepath)
    if format not in FORMATS:
        return keras.Model.export(
            model, filepath, format=format, verbose=verbose,
            input_signature=input_signature, **kwargs,
        )
    _check_supported(format, backend)
    if not model.built:
        raise ExportError(f"{type(model).__name__} is not built; call it on a batch first.")
    if input_signature is None:
        input_signature = [_image_spec(model, image_size)]

    if format == "tf_saved_model":
        if backend == "jax":
            kwargs["jax2tf_kwargs"] = _jax2tf_kwargs(
                model, input_signature, kwargs.get("jax2tf_kwargs")
            )
    elif format == "onnx":
        if backend == "torch":
            return _export_onnx_torch(model, filepath, input_signature, verbose, **kwargs)
        if backend == "tensorflow":
            _register_tf2onnx_erfc()
    elif format == "litert" and not filepath.endswith(".tflite"):
        raise ExportError(f"A LiteRT (TFLite) file name must end in '.tflite'; got {filepath!r}.")
    return keras.Model.export(
        model, filepath, format=format, verbose=verbose, input_signature=input_signature,
        **kwargs,
    )


class ExportMixin:
    """`model.export(...)` through `keras_pvt.export.export` (dynamic shapes, clear errors)."""

    def export(self, filepath, format="tf_saved_model", verbose=False, input_signature=None,
               **kwargs):
        """Exports the model for inference; see `keras_pvt.export.export`.

        Args:
            filepath: output directory (SavedModel) or file (`.onnx`, `.tflite`).
            format: `"tf_saved_model"`, `"onnx"` or `"litert"` (alias `"tflite"`).
            verbose: print keras' summary of the artifact; quiet by default.
            input_signature: as in `keras.Model.export`; by default any batch size and,
                where the backend allows it, any image size.
            **kwargs: `image_size=(height, width)` to fix the size, and
                `keras.Model.export` options.
        """
        return export(self, filepath, format=format, verbose=verbose,
                      input_signature=input_signature, **kwargs)


# --- Backend support ------------------------------------------------------------------------

_BACKEND_HINT = (
    "Keras picks its backend once per process: save the model (`model.save_to_preset(dir)`), "
    "then export from a process started with KERAS_BACKEND={backend}, loading it with "
    "`from_preset(dir)`."
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _require(format: str, *modules: str) -> None:
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise ExportError(
            f"Exporting to {format} on the {keras.backend.backend()} backend needs "
            f"{', '.join(missing)}, which is not installed: {_INSTALL_HINT}."
        )


def _check_supported(format: str, backend: str) -> None:
    if format == "tf_saved_model":
        _require("a SavedModel", "tensorflow")
        if backend == "torch" and not _installed("torch_xla"):
            raise ExportError(
                "A TensorFlow SavedModel cannot be exported from the PyTorch backend (keras' "
                "route needs torch_xla, which is not installed): use the TensorFlow or JAX "
                "backend. " + _BACKEND_HINT.format(backend="tensorflow")
                + " From PyTorch, format='onnx' works."
            )
    elif format == "onnx":
        if backend == "jax" and not _installed("jax2onnx"):
            raise ExportError(
                "ONNX cannot be exported from the JAX backend here (keras' route needs "
                "jax2onnx, which is not installed): use the PyTorch or TensorFlow backend. "
                + _BACKEND_HINT.format(backend="torch")
            )
        if backend == "tensorflow":
            _require("ONNX", "onnx", "tf2onnx")
        elif backend == "torch":
            _require("ONNX", "onnx", "onnxscript")
    elif format == "litert":
        if backend == "jax" or (backend == "torch" and not _installed("litert_torch")):
            detail = "" if backend == "jax" else " (keras' route needs litert-torch, not installed)"
            raise ExportError(
                f"LiteRT (TFLite) cannot be exported from the {backend} backend{detail}: use "
                "the TensorFlow backend. " + _BACKEND_HINT.format(backend="tensorflow")
            )
        _require("LiteRT", "tensorflow")


# --- Input signatures -----------------------------------------------------------------------


def _model_image_shape(model) -> tuple:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ExportError(
            f"{type(model).__name__} does not have a single NHWC image input; pass "
            "`input_signature` explicitly."
        )
    return tuple(inputs[0].shape[1:])


def _image_spec(model, image_size) -> keras.InputSpec:
    height, width, channels = _model_image_shape(model)
    if image_size is not None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        height, width = (int(s) for s in image_size)
        minimum = _minimum_image_size(model)
        if min(height, width) < minimum:
            raise ExportError(
                f"image_size={image_size} is below this model's minimum of {minimum} pixels."
            )
    return keras.InputSpec(shape=(None, height, width, channels), dtype="float32", name="images")


def _minimum_image_size(model) -> int:
    minimum = getattr(model, "minimum_image_size", None)
    return int(minimum()) if callable(minimum) else _DEFAULT_MINIMUM_SIZE


def _spec_shape(spec) -> tuple:
    shape = getattr(spec, "shape", None)
    if shape is None:
        raise ExportError(f"Cannot read a shape from the input signature entry {spec!r}.")
    return tuple(None if d is None else int(d) for d in shape)


def _jax2tf_kwargs(model, input_signature, user_kwargs) -> dict:
    """Symbolic batch/height/width, constrained to the model's minimum image size, so that
    JAX can prove every intermediate shape valid; no gradients (serving only)."""
    kwargs = dict(user_kwargs or {})
    kwargs.setdefault("with_gradient", False)
    if "polymorphic_shapes" in kwargs:
        return kwargs
    shapes, constraints = [], []
    minimum = _minimum_image_size(model)
    for index, spec in enumerate(input_signature):
        dims = []
        for axis, dim in enumerate(_spec_shape(spec)):
            if dim is not None:
                dims.append(str(dim))
            elif axis == 0:
                dims.append("batch")
            else:
                name = f"{('height', 'width')[axis - 1] if axis < 3 else 'd'}{index}_{axis}"
                dims.append(name)
                if axis in (1, 2) and minimum > 1:
                    constraints.append(f"{name} >= {minimum}")
        shapes.append(f"({', '.join(dims)})")
    kwargs["polymorphic_shapes"] = shapes
    kwargs["polymorphic_constraints"] = tuple(kwargs.get("polymorphic_constraints", ())) + tuple(
        constraints
    )
    return kwargs


# --- ONNX -----------------------------------------------------------------------------------


def _torch_image_size(model, spec) -> tuple[int, int]:
    _, height, width, _ = _spec_shape(spec)
    if height is not None and width is not None:
        return height, width
    preprocessor = getattr(model, "preprocessor", None)
    converter = getattr(preprocessor, "image_converter", None)
    size = getattr(converter, "image_size", None)
    if size is not None and all(s is not None for s in size):
        return int(size[0]), int(size[1])
    raise ExportError(
        "ONNX export from the PyTorch backend needs a fixed image size (the batch stays "
        "dynamic): pass image_size=(height, width), or use the TensorFlow backend for an "
        "ONNX graph that accepts any image size."
    )


def _export_onnx_torch(model, filepath, input_signature, verbose, opset_version=None, **kwargs):
    import torch

    if kwargs:
        raise ExportError(f"Unexpected arguments for ONNX export on PyTorch: {sorted(kwargs)}.")
    if len(input_signature) != 1:
        raise ExportError("ONNX export on PyTorch supports one image input.")
    spec = input_signature[0]
    height, width = _torch_image_size(model, spec)
    channels = _spec_shape(spec)[-1]

    class Inference(torch.nn.Module):
        """`model(images, training=False)` with one named tensor argument."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images, training=False)

    sample = torch.zeros((2, height, width, channels), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    inference = Inference(model)
    was_training = inference.inner.training
    inference.eval()  # torch's flag only; keras layers follow `training=False`
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                inference, (sample,), dynamo=True, verbose=bool(verbose),
                opset_version=opset_version, input_names=["images"], output_names=["output"],
                dynamic_shapes={"images": {0: batch}},
            )
    finally:
        inference.train(was_training)
    program.optimize()
    batch_dim = program.model.graph.inputs[0].shape[0]
    if isinstance(batch_dim, int):
        # torch.onnx falls back to a specialised graph rather than failing.
        raise ExportError(
            "torch.onnx.export could not keep the batch dimension dynamic for "
            f"{type(model).__name__}; use the TensorFlow backend for ONNX export."
        )
    program.save(filepath)
    _check_onnx(filepath, model)
    if verbose:
        print(f"Saved artifact at '{filepath}'.")


def _check_onnx(filepath: str, model) -> None:
    """Rejects a graph that onnxruntime could not load (torch.onnx can emit ops whose shapes
    do not infer, e.g. for gather-based resizes), rather than leaving a broken file."""
    import onnx

    try:
        onnx.checker.check_model(filepath, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        Path(filepath).unlink(missing_ok=True)
        raise ExportError(
            f"torch.onnx produced an invalid ONNX graph for {type(model).__name__} "
            f"({str(error).splitlines()[0][:300]}); use the TensorFlow backend for ONNX "
            "export. " + _BACKEND_HINT.format(backend="tensorflow")
        ) from error


_ERFC_REGISTERED = False


def _register_tf2onnx_erfc() -> None:
    """Teaches tf2onnx TensorFlow's `Erfc` (exact GELU) as ONNX `1 - Erf(x)`."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output(
                "Sub", node.output[0], inputs=[one.output[0], node.output[0]]
            )

    _ERFC_REGISTERED = True
