"""What a model looks at: attention rollout through spatial-reduction attention, Grad-CAM,
and heat-map overlays.

    heat = keras_pvt.explain.attention_rollout(classifier, images)   # (batch, H, W) in [0, 1]
    heat = keras_pvt.explain.grad_cam(classifier, images)            # predicted class
    keras_pvt.explain.save_overlay("cat.png", image, heat[0])

**Rollout** (Abnar & Zuidema, 2020) multiplies the blocks' head-averaged attention, each
mixed half and half with the identity for the residual, from the last block back to the
pixels. In these models a query attends to a *reduced* key grid, so every block's keys are
first mapped back onto its query grid, each key's weight spread evenly over the cells it
summarises: the r x r cells of SRA's strided convolution, linear SRA's adaptive-pooling
bins, the 3 x 3 windows of CvT's strided key projection. Patch embeddings are followed
through their convolution windows too (each cell takes the mean of the tokens whose window
covers it), down to the input pixels, so the map needs no resizing. It starts from the
class token where the prediction reads it (PVT v1, CvT classifiers), else from all tokens
of the last stage.

**Grad-CAM** (Selvaraju et al., 2017) weights the channels of a stage's feature map (the
last stage's by default: its last block's output, or that block's input where the
prediction reads the class token, which the block computes alongside the map) by the mean
gradient of the score (a classifier's logit; for a segmenter, the class's logits summed over
the pixels predicted as that class) and keeps the positive part, resized bilinearly to the
input.

Both take a task with a preprocessor (raw images, as `predict` takes them) or, for rollout,
a backbone (normalised float batches) and return maps at the model's input size, scaled to
[0, 1].
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from keras import ops
from PIL import Image

from keras_pvt import kernels
from keras_pvt.layers.attention import SpatialReductionAttention
from keras_pvt.layers.conv_attention import ConvAttention, _ceil_mode_size
from keras_pvt.layers.patch_embedding import OverlapPatchEmbedding
from keras_pvt.layers.pooling import adaptive_pool_matrix
from keras_pvt.visualize import heat_map_colors

METHODS = ("rollout", "gradcam")
HEAD_FUSIONS = ("mean", "max", "min")

__all__ = ["METHODS", "attention_rollout", "explain", "grad_cam", "overlay", "save_overlay"]


# === Geometry: which query cells each key (or token) summarises ===


def _window_matrix(size: int, kernel: int, stride: int, padding: int, out: int,
                   normalise: str = "windows") -> np.ndarray:
    """`(out, size)`: which inputs window i of a convolution covers.

    `normalise="windows"`: each window's weight spreads evenly over its inputs (rows sum
    to 1: attention to a key becomes attention to the cells it summarises). `"inputs"`:
    each input takes the mean of the windows covering it (columns sum to 1: a token map
    brought to its input grid without the overlaps' doubled weight, which draws a lattice).
    """
    matrix = np.zeros((out, size), np.float64)
    for i in range(out):
        start = i * stride - padding
        matrix[i, max(start, 0):min(start + kernel, size)] = 1.0
    axis = 1 if normalise == "windows" else 0
    return matrix / np.maximum(matrix.sum(axis=axis, keepdims=True), 1.0)


def _bin_matrix(size: int, bins: int) -> np.ndarray:
    """`(bins, size)`: linear SRA's adaptive-pooling bins (torch's), each row averaging."""
    return ops.convert_to_numpy(adaptive_pool_matrix(size, bins)).astype(np.float64)


def _convolution_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _key_matrices(attention, height: int, width: int):
    """Per axis, how the block's key grid covers its query grid (None: keys are queries)."""
    if isinstance(attention, SpatialReductionAttention):
        if attention.linear:
            return _bin_matrix(height, attention.pool_size), _bin_matrix(width, attention.pool_size)
        if attention.sr_ratio > 1:
            r = attention.sr_ratio
            return tuple(_window_matrix(s, r, r, 0, s // r) for s in (height, width))
        return None
    if isinstance(attention, ConvAttention):
        if attention.method == "linear":
            return None
        k, s, p = attention.kernel_size, attention.stride_kv, attention.padding_kv
        size = _ceil_mode_size if attention.method == "avg" else _convolution_size
        return tuple(_window_matrix(n, k, s, p, size(n, k, s, p)) for n in (height, width))
    raise TypeError(f"No key geometry for {type(attention).__name__}.")


def _structure(backbone):
    """The backbone's patch embeddings and attention blocks, in the order they run."""
    blocks = backbone.attention_blocks() if hasattr(backbone, "attention_blocks") else []
    if not blocks:
        raise TypeError(
            f"{type(backbone).__name__} has no attention blocks to explain; explanations need a "
            "keras_pvt backbone (PVT v2, PVT v1 or CvT) or a task built on one."
        )
    steps = [layer for layer in backbone.layers
             if isinstance(layer, OverlapPatchEmbedding) or layer in blocks]
    return steps


def _grids(steps, height: int, width: int) -> list[tuple[int, int]]:
    """The token grid each step works on (an embedding: the grid it reads)."""
    grids = []
    for step in steps:
        grids.append((height, width))
        if isinstance(step, OverlapPatchEmbedding):
            height, width = (_convolution_size(n, step.patch_size, step.stride, step.padding)
                             for n in (height, width))
    return grids


# === Inputs ===


def _backbone(model):
    backbone = getattr(model, "backbone", model)
    _structure(backbone)  # fails early, naming what is missing
    return backbone


def _model_inputs(model, images) -> np.ndarray:
    """The float batch the model's graph takes: a task's preprocessor runs on raw images."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(
            f"Expected an image (height, width, 3) or a batch (batch, height, width, 3); "
            f"received an array of shape {images.shape}."
        )
    preprocessor = getattr(model, "preprocessor", None)  # tasks have one, backbones none
    if preprocessor is not None:
        images = ops.convert_to_numpy(preprocessor(images.astype("float32")))
    return np.asarray(images, "float32")


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] by its maximum (all zeros stays zeros)."""
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return (maps / np.where(peak > 0, peak, 1.0)).astype("float32")


# === Attention rollout ===


def _reads_class_token(model) -> bool:
    """Whether the prediction is read from the class token (else from every token)."""
    if getattr(model, "backbone", None) is not None and model is not model.backbone:
        return getattr(model, "pooling", None) == "token"
    return getattr(model, "cls_token_output", None) is not None


def attention_rollout(
    model, images, head_fusion: str = "mean", batch_size: int | None = None
) -> np.ndarray:
    """Attention rollout through spatial-reduction attention, one map per image.

    Args:
        model: a keras_pvt task (classifier, segmenter, depth estimator: images are raw, as
            `predict` takes them) or backbone (normalised float images).
        images: an image `(height, width, 3)` or a batch `(batch, height, width, 3)`.
        head_fusion: how the heads' attention is combined: `"mean"` (the paper's), `"max"`
            or `"min"`.
        batch_size: images per forward pass (all at once by default).

    Returns:
        `(batch, height, width)` float32 maps in [0, 1] at the model's input size (after the
        preprocessor's resizing).

    Example:
    ```python
    heat = keras_pvt.explain.attention_rollout(classifier, image)
    keras_pvt.explain.save_overlay("rollout.png", image, heat[0])
    ```
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head_fusion {head_fusion!r}; use one of {HEAD_FUSIONS}.")
    backbone = _backbone(model)
    inputs = _model_inputs(model, images)
    steps = _structure(backbone)
    batch, height, width = inputs.shape[:3]
    grids = _grids(steps, height, width)
    attention = iter(reversed(backbone.attention_maps(inputs, batch_size=batch_size)))
    fuse = getattr(np, head_fusion)

    # The flow of the prediction back through the blocks, as a row vector per image over
    # the current tokens (class token first where there is one).
    flow = None
    rows_out, cols_out = grids[-1]  # the grid of the tokens `flow` is over
    for step, (rows, cols) in zip(reversed(steps), reversed(grids)):
        if isinstance(step, OverlapPatchEmbedding):
            tokens = flow[:, flow.shape[1] - rows_out * cols_out:]  # the class token's
            # weight stops here: it is a parameter, not made from the image
            grid = tokens.reshape(batch, rows_out, cols_out)
            row_matrix, col_matrix = (
                _window_matrix(n, step.patch_size, step.stride, step.padding, m, "inputs")
                for n, m in ((rows, rows_out), (cols, cols_out))
            )
            flow = np.einsum("bij,ih,jw->bhw", grid, row_matrix, col_matrix)
            flow = flow.reshape(batch, rows * cols)
            rows_out, cols_out = rows, cols
            continue
        probabilities = fuse(next(attention).astype(np.float64), axis=1)  # (b, q, k)
        queries = probabilities.shape[1]
        num_cls = queries - rows * cols
        if flow is None:  # the last block's output: where the prediction reads
            flow = np.zeros((batch, queries))
            if num_cls and _reads_class_token(model):
                flow[:, 0] = 1.0
            else:
                flow[:, num_cls:] = 1.0 / (rows * cols)
        to_keys = np.einsum("bq,bqk->bk", flow, probabilities)
        matrices = _key_matrices(step.attention, rows, cols)
        if matrices is not None:
            row_matrix, col_matrix = matrices
            grid = to_keys[:, num_cls:].reshape(batch, len(row_matrix), len(col_matrix))
            spread = np.einsum("bij,ih,jw->bhw", grid, row_matrix, col_matrix)
            to_keys = np.concatenate([to_keys[:, :num_cls], spread.reshape(batch, -1)], axis=1)
        flow = 0.5 * to_keys + 0.5 * flow  # the residual: attention mixed with the identity
    return _scaled(flow.reshape(batch, height, width))


# === Grad-CAM ===


@contextlib.contextmanager
def _shifted(block, shift, seen: list, at_output: bool):
    """Adds `shift` (zeros) to the block's map (its first input, or its output) while its
    model runs, so that the map's gradient is the shift's, and records the map."""
    original = block.call

    def shifted_input(inputs, *args, **kwargs):
        inputs = inputs + ops.cast(shift, inputs.dtype)
        seen.append(inputs)
        return original(inputs, *args, **kwargs)

    def shifted_output(*args, **kwargs):
        outputs = original(*args, **kwargs)
        first = outputs[0] if isinstance(outputs, tuple) else outputs
        first = first + ops.cast(shift, first.dtype)
        seen.append(first)
        return (first, *outputs[1:]) if isinstance(outputs, tuple) else first

    block.call = shifted_output if at_output else shifted_input
    try:
        yield
    finally:
        del block.call


def _scores(outputs, class_ids: np.ndarray, pixels: np.ndarray | None):
    """The summed scores of the chosen classes: logits, or a segmenter's logits summed over
    `pixels` (the pixels predicted as the class)."""
    chosen = ops.cast(ops.one_hot(class_ids, outputs.shape[-1]), outputs.dtype)
    if pixels is None:
        return ops.sum(outputs * chosen)
    chosen = ops.reshape(chosen, (len(class_ids), 1, 1, outputs.shape[-1]))
    weights = ops.expand_dims(ops.cast(pixels, outputs.dtype), -1) * chosen
    return ops.sum(outputs * weights)


def _check_class_ids(model, class_id, predicted: np.ndarray) -> np.ndarray:
    num_classes = predicted.shape[-1]
    if class_id is None:
        if predicted.ndim == 2:
            return predicted.argmax(-1)
        # A segmenter: the most frequent predicted class other than the background.
        masks = predicted.argmax(-1)
        ids = []
        for mask in masks:
            counts = np.bincount(mask.ravel(), minlength=num_classes)
            if counts[1:].any():
                counts[0] = 0
            ids.append(int(counts.argmax()))
        return np.array(ids)
    ids = np.broadcast_to(np.asarray(class_id), (len(predicted),))
    if not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any() or (ids >= num_classes).any():
        raise ValueError(
            f"class_id {class_id!r} is out of range: {type(model).__name__} has "
            f"{num_classes} classes (ids 0 to {num_classes - 1})."
        )
    return ids.astype("int64")


def grad_cam(
    model, images, class_id: int | Sequence[int] | None = None, stage: int = -1
) -> np.ndarray:
    """Grad-CAM on a stage's feature map (the last stage's by default), one map per image.

    Args:
        model: a keras_pvt classifier or segmenter (raw images, as `predict` takes them).
        images: an image `(height, width, 3)` or a batch `(batch, height, width, 3)`.
        class_id: the class to explain, one for all images or one per image; the predicted
            class by default (for a segmenter, the class covering most pixels apart from
            class 0, the background).
        stage: the stage whose map is weighted (0-based; negative counts from the end). An
            earlier, finer stage can localise better where the last stage's tokens have all
            mixed globally, as in `examples/explain.py`'s small model.

    Returns:
        `(batch, height, width)` float32 maps in [0, 1] at the model's input size.

    Example:
    ```python
    heat = keras_pvt.explain.grad_cam(classifier, image)           # the predicted class
    heat = keras_pvt.explain.grad_cam(classifier, image, class_id=3)
    ```
    """
    backbone = _backbone(model)
    if backbone is model:
        raise TypeError(
            f"Grad-CAM explains a prediction: pass a classifier or segmenter, not the "
            f"{type(model).__name__} alone."
        )
    inputs = _model_inputs(model, images)
    predicted = np.asarray(model.predict_on_batch(inputs), "float32")
    if predicted.ndim not in (2, 4):
        raise TypeError(
            f"Grad-CAM needs class scores (a classifier or a segmenter); {type(model).__name__}"
            f" outputs shape {predicted.shape}."
        )
    class_ids = _check_class_ids(model, class_id, predicted)
    pixels = None
    if predicted.ndim == 4:
        masks = predicted.argmax(-1) == class_ids[:, None, None]
        # A class predicted nowhere: its logits over the whole image.
        pixels = np.where(masks.any(axis=(1, 2), keepdims=True), masks, True).astype("float32")

    activation, gradient = _stage_gradient(model, inputs, class_ids, pixels, stage)
    weights = gradient.mean(axis=(1, 2))  # (batch, channels)
    cams = np.maximum(np.einsum("bhwc,bc->bhw", activation, weights), 0.0).astype("float32")
    batch, height, width = inputs.shape[:3]
    resized = np.stack([
        np.asarray(Image.fromarray(cam, "F").resize((width, height), Image.BILINEAR))
        for cam in cams
    ])
    return _scaled(resized)


def _stages(backbone) -> list[list]:
    """The attention blocks of each stage (a stage starts at a patch embedding)."""
    stages = []
    for step in _structure(backbone):
        if isinstance(step, OverlapPatchEmbedding):
            stages.append([])
        else:
            stages[-1].append(step)
    return [blocks for blocks in stages if blocks]


def _stage_gradient(model, inputs, class_ids, pixels, stage: int = -1):
    """A stage's feature map and the score's gradient there, both `(batch, rows, cols,
    channels)`: the output of the stage's last block or, where the prediction reads the
    class token, the last stage's last block's input (that block computes the class token
    alongside the map, not from its output). A class token in the sequence is dropped."""
    steps = _structure(model.backbone)
    stages = _stages(model.backbone)
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage {stage} is out of range: {type(model.backbone).__name__} "
                         f"has {len(stages)} stages (0 to {len(stages) - 1}).")
    block = stages[stage][-1]
    at_output = block is not steps[-1] or not _reads_class_token(model)
    batch, height, width = inputs.shape[:3]
    rows, cols = _grids(steps, height, width)[steps.index(block)]
    map_input = block.input[0] if isinstance(block.input, list) else block.input
    if len(map_input.shape) == 3:  # a token sequence: the class token, then the map
        shape = (batch, 1 + rows * cols, map_input.shape[-1])
    else:
        shape = (batch, rows, cols, map_input.shape[-1])

    def forward(shift, state):
        seen = []
        with _shifted(block, shift, seen, at_output):
            if state is None:
                outputs = model(inputs, training=False)
            else:
                outputs, _ = model.stateless_call(*state, inputs, training=False)
        return _scores(outputs, class_ids, pixels), seen[0]

    activation, gradient = kernels.score_gradient(forward, np.zeros(shape, "float32"), model)
    activation = ops.convert_to_numpy(activation).astype(np.float64)
    gradient = ops.convert_to_numpy(gradient).astype(np.float64)
    if activation.ndim == 3:
        return tuple(x[:, 1:].reshape(batch, rows, cols, -1) for x in (activation, gradient))
    return activation, gradient


# === Pictures ===


def explain(model, images, method: str = "rollout", class_id=None, stage: int = -1
            ) -> np.ndarray:
    """`attention_rollout` or `grad_cam` by name (`method`, one of `METHODS`)."""
    if method == "rollout":
        if class_id is not None:
            raise ValueError("Attention rollout does not depend on a class; use "
                             "method='gradcam' to explain a class.")
        return attention_rollout(model, images)
    if method == "gradcam":
        return grad_cam(model, images, class_id, stage)
    raise ValueError(f"Unknown explanation method {method!r}; use one of {METHODS}.")


def overlay(image, heat_map, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """The image with a heat map over it: `(height, width, 3)` uint8.

    Args:
        image: `(height, width, 3)` pixels in [0, 255].
        heat_map: `(h, w)` values in [0, 1], at any size (resized bilinearly to the image).
        colormap: a matplotlib colour map name (`"magma"` also works without matplotlib).
        alpha: the heat map's opacity.
    """
    image = np.asarray(image, np.float32)
    heat = np.asarray(heat_map, np.float32)
    if heat.ndim != 2 or image.ndim != 3:
        raise ValueError(
            f"overlay takes one image (height, width, 3) and one heat map (height, width); "
            f"received shapes {image.shape} and {heat.shape}."
        )
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat, "F").resize(
            (image.shape[1], image.shape[0]), Image.BILINEAR))
    colours = heat_map_colors(heat, colormap).astype(np.float32)
    mixed = (1 - alpha) * image[..., :3] + alpha * colours
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def save_overlay(path, image, heat_map, colormap: str = "jet", alpha: float = 0.5) -> None:
    """Saves `overlay(image, heat_map, colormap, alpha)` as a PNG file at `path`."""
    Image.fromarray(overlay(image, heat_map, colormap, alpha), "RGB").save(path, format="PNG")

