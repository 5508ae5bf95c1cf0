"""Dense predictions on raw images of any sizes, each returned at its own image's size
(`SegFormerSegmenter.segment`, `GLPNDepthEstimator.predict_depth`)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from keras_pvt.data import image_items


def predict_per_image(task, images, method: str, batch_size: int,
                      finish: Callable[[object, list[tuple[int, int]]], list[np.ndarray]],
                      check: Callable[[np.ndarray], None] | None = None):
    """Runs `task` on raw images and returns one result per image.

    Each image is preprocessed alone (`task.preprocessor`, if any); images whose
    preprocessed shapes agree go through keras' compiled predict step together, `batch_size`
    at a time (one trace per shape, and without the preprocessing keras-hub's
    `predict_on_batch` would run again). `finish(outputs, sizes)` turns a batch of outputs
    and the images' original `(height, width)` into a list of per-image NumPy results.

    Args:
        images: one image (a path, a PIL image or a `(height, width, channels)` array), a
            batch array, or a list of images of any sizes.
        method: the public method's name, for errors.
        check: called on each image before anything runs (clear errors up front).

    Returns:
        one result for one image, the stacked results for a batch array, a list for a list.
    """
    single, items = image_items(images, method)
    for item in items:
        if item.ndim != 3:
            raise ValueError(
                f"{method}() takes images of shape (height, width, channels); received an "
                f"array of shape {item.shape}."
            )
        if check is not None:
            check(item)
    inputs = [_preprocess(task, item) for item in items]
    results = [None] * len(items)
    by_shape = {}
    for index, x in enumerate(inputs):
        by_shape.setdefault(x.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            outputs = keras.Model.predict_on_batch(task, np.stack([inputs[i] for i in chunk]))
            sizes = [tuple(items[i].shape[:2]) for i in chunk]
            for index, result in zip(chunk, finish(outputs, sizes)):
                results[index] = result
    if single:
        return results[0]
    if isinstance(images, np.ndarray):
        return np.stack(results)
    return results


def _preprocess(task, image: np.ndarray) -> np.ndarray:
    if task.preprocessor is None:
        return image.astype("float32")
    x = task.preprocessor(image[None].astype("float32"))
    return np.asarray(ops.convert_to_numpy(x))[0]
