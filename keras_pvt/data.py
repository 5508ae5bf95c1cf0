"""What a task's `fit`/`evaluate`/`predict` accept beyond keras-hub's arrays and `tf.data`.

- Python pipelines (`keras.utils.PyDataset`, torch `DataLoader`), which keras-hub rejects:
  each batch goes through the task's preprocessor (as with arrays), then to `keras.Model`'s
  own loop, which already reads these pipelines on every backend.
- Arrays in `fit` are shuffled every epoch (keras-hub batches them into a dataset, which
  keras cannot shuffle: it warned that `shuffle=True` was ignored, and the order never
  changed).
- Raw images in `predict`: a file path, a PIL image, a single `(height, width, channels)`
  array, or a list of any of these at different sizes, one output row per image.
"""

from __future__ import annotations

import copy
import os
import warnings

import keras
import numpy as np

from keras_pvt.layers.core import adopt_remat_scope
from keras_pvt.visualize import read_image


def _is_torch_data_loader(data) -> bool:
    torch_data = getattr(type(data), "__module__", "").startswith("torch.utils.data")
    if not torch_data:
        return False
    from torch.utils.data import DataLoader

    return isinstance(data, DataLoader)


def is_python_data(data) -> bool:
    """Whether `data` is a `keras.utils.PyDataset` or a torch `DataLoader`."""
    return isinstance(data, keras.utils.PyDataset) or _is_torch_data_loader(data)


def _as_batch(batch) -> tuple:
    if isinstance(batch, dict):
        return (batch,)  # the inputs alone
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    return (batch,)


class PreprocessedPyDataset(keras.utils.PyDataset):
    """A `PyDataset` whose batches go through `preprocess(x, y=None, sample_weight=None)`.

    Keeps the wrapped dataset's workers, multiprocessing and queue settings and its
    `on_epoch_end`; keras may shuffle the batch order, as it does for any `PyDataset`.
    """

    def __init__(self, dataset: keras.utils.PyDataset, preprocess):
        super().__init__(  # (a PyDataset that skipped super().__init__ has keras' defaults)
            workers=getattr(dataset, "workers", 1),
            use_multiprocessing=getattr(dataset, "use_multiprocessing", False),
            max_queue_size=getattr(dataset, "max_queue_size", 10),
        )
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return self.preprocess(*_as_batch(self.dataset[index]))

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _preprocessed_data_loader(loader, preprocess):
    """A copy of the torch `DataLoader` whose batches also go through `preprocess`.

    Sampling, shuffling and workers are the loader's own; only `collate_fn` is extended
    (the one attribute a `DataLoader` lets change after construction).
    """
    collate = loader.collate_fn
    convert = None
    if keras.backend.backend() != "torch":
        # keras' image layers need arrays of the running backend, not torch tensors.
        def convert(batch):
            return keras.tree.map_structure(
                lambda t: t.numpy() if hasattr(t, "numpy") else t, batch
            )

    def collate_and_preprocess(samples):
        batch = collate(samples)
        if convert is not None:
            batch = convert(batch)
        return preprocess(*_as_batch(batch))

    wrapped = copy.copy(loader)
    wrapped.collate_fn = collate_and_preprocess
    return wrapped


def preprocessed(data, preprocess):
    """`data` (a `PyDataset` or torch `DataLoader`) with `preprocess` applied per batch."""
    if isinstance(data, keras.utils.PyDataset):
        return PreprocessedPyDataset(data, preprocess)
    return _preprocessed_data_loader(data, preprocess)


class ShuffledArrays(keras.utils.PyDataset):
    """`(x, y, sample_weight)` arrays in batches, in a new random order every epoch (NumPy's
    global generator, which `keras.utils.set_random_seed` seeds)."""

    def __init__(self, arrays: tuple, batch_size: int, shuffle: bool = True):
        super().__init__()
        self.arrays = tuple(None if a is None else keras.tree.map_structure(np.asarray, a)
                            for a in arrays)
        self.count = len(keras.tree.flatten(self.arrays[0])[0])
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.order = np.arange(self.count)
        self.on_epoch_end()

    def __len__(self):
        return -(-self.count // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        batch = tuple(None if a is None else keras.tree.map_structure(lambda v: v[rows], a)
                      for a in self.arrays)
        return keras.utils.pack_x_y_sample_weight(*batch)

    def on_epoch_end(self):
        if self.shuffle:
            self.order = np.random.permutation(self.count)


def _is_array_data(x) -> bool:
    """NumPy (or backend) arrays, or a dict of them: what keras-hub would batch itself."""
    leaves = keras.tree.flatten(x) if isinstance(x, dict) else [x]
    return bool(leaves) and all(hasattr(v, "shape") and hasattr(v, "__array__") and
                                len(v.shape) > 0 for v in leaves)


class PythonDataMixin:
    """Lets a keras-hub task's `fit`/`evaluate`/`predict` take a `keras.utils.PyDataset` or a
    torch `DataLoader` (its preprocessor runs on each batch), shuffles arrays in `fit` every
    epoch, and lets `predict` take raw images (see the module's docstring); other inputs go
    to keras-hub."""

    def _python_data_preprocess(self, x, y=None, sample_weight=None):
        return self.preprocess_samples(x, y, sample_weight)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, **kwargs):
        """`keras.Model.fit`; also accepts a `PyDataset` or a torch `DataLoader`, and shuffles
        arrays every epoch (unless `shuffle=False`). A model built inside
        `keras.RematScope` trains with its encoder blocks checkpointed."""
        adopt_remat_scope(self)
        if _is_array_data(x) and kwargs.get("steps_per_epoch") is None:
            split = kwargs.pop("validation_split", None)
            sample_weight = kwargs.pop("sample_weight", None)
            arrays = (x, y, sample_weight)
            if split and validation_data is None:
                count = len(keras.tree.flatten(x)[0])
                cut = count - int(count * split)  # the last samples, as keras does
                validation_data = tuple(None if a is None else keras.tree.map_structure(
                    lambda v: np.asarray(v)[cut:], a) for a in arrays)
                arrays = tuple(None if a is None else keras.tree.map_structure(
                    lambda v: np.asarray(v)[:cut], a) for a in arrays)
            batch_size = batch_size or 32
            x = ShuffledArrays(arrays, batch_size, shuffle=kwargs.pop("shuffle", True))
            y = batch_size = None
            if validation_data is not None and not is_python_data(validation_data):
                validation = keras.utils.unpack_x_y_sample_weight(validation_data)
                validation_data = ShuffledArrays(
                    validation, kwargs.pop("validation_batch_size", None) or x.batch_size,
                    shuffle=False)
            kwargs["shuffle"] = False  # the dataset shuffles its samples itself
        python_x = is_python_data(x)
        python_validation = is_python_data(validation_data)
        if not python_x and not python_validation:
            return super().fit(
                x, y, batch_size=batch_size, validation_data=validation_data, **kwargs
            )
        if not python_x or (validation_data is not None and not python_validation):
            raise ValueError(
                "Pass training and validation data of the same kind: both Python pipelines "
                "(keras.utils.PyDataset / torch DataLoader) or both arrays / tf.data. "
                f"Received x={type(x).__name__}, "
                f"validation_data={type(validation_data).__name__}."
            )
        _no_targets_with_pipeline(y, batch_size, "fit")
        if validation_data is not None:
            validation_data = preprocessed(validation_data, self._python_data_preprocess)
        return keras.Model.fit(
            self, preprocessed(x, self._python_data_preprocess),
            validation_data=validation_data, **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate`; also accepts a `PyDataset` or a torch `DataLoader`."""
        adopt_remat_scope(self)
        if not is_python_data(x):
            return super().evaluate(x, y, batch_size=batch_size, **kwargs)
        _no_targets_with_pipeline(y, batch_size, "evaluate")
        return keras.Model.evaluate(self, preprocessed(x, self._python_data_preprocess), **kwargs)

    def predict(self, x=None, batch_size=None, **kwargs):
        """`keras.Model.predict`; also accepts a `PyDataset` or a torch `DataLoader`, and
        raw images: a path, a PIL image, one `(height, width, channels)` array, or a list of
        these (any sizes). One output row per image, in order."""
        adopt_remat_scope(self)
        if is_python_data(x):
            _no_targets_with_pipeline(None, batch_size, "predict")
            return keras.Model.predict(self, preprocessed(x, self._python_data_preprocess),
                                       **kwargs)
        images = as_images(x, "predict")
        if not isinstance(images, list):
            return super().predict(images, batch_size=batch_size, **kwargs)
        # Images of several sizes: one batch array per size, rows put back in order.
        rows = [None] * len(images)
        by_shape = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            outputs = super().predict(np.stack([images[i] for i in indices]),
                                      batch_size=batch_size, **kwargs)
            for row, index in enumerate(indices):
                rows[index] = keras.tree.map_structure(lambda o, r=row: o[r], outputs)
        shapes = {np.shape(keras.tree.flatten(r)[0]) for r in rows}
        if len(shapes) > 1:
            return rows  # outputs at each image's own size (e.g. depth maps)
        return keras.tree.map_structure(lambda *r: np.stack(r), *rows)


def _no_targets_with_pipeline(y, batch_size, method: str) -> None:
    if y is not None or batch_size is not None:
        raise ValueError(
            f"`{method}` on a PyDataset / DataLoader takes the targets and the batch size from "
            "it; do not pass `y` or `batch_size`."
        )


_WARNED_UNIT_RANGE = False


def _as_image(item) -> np.ndarray | None:
    """An `(height, width, channels)` array from a path, a PIL image or an array; None for
    anything else."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    if type(item).__module__.startswith("PIL.") and hasattr(item, "convert"):
        return np.asarray(item.convert("RGB"))
    if hasattr(item, "shape") and hasattr(item, "__array__") and len(item.shape) == 3:
        return np.asarray(keras.ops.convert_to_numpy(item))
    return None


def check_unit_range(images) -> None:
    """Warns once per process when float images look scaled to [0, 1]: keras_pvt's
    preprocessors expect pixel values in [0, 255], as transformers' processors do."""
    global _WARNED_UNIT_RANGE
    if _WARNED_UNIT_RANGE:
        return
    for image in images:
        if np.issubdtype(image.dtype, np.floating) and image.size and 0 < image.max() <= 1:
            _WARNED_UNIT_RANGE = True
            warnings.warn(
                f"These float images have values in [0, {image.max():.3g}]; keras_pvt expects "
                "pixel values in [0, 255] (it rescales and normalises them itself). Multiply "
                "them by 255 if they were scaled to [0, 1].", UserWarning, stacklevel=4)
            return


def as_images(x, method: str):
    """Raw images for `method`: a batch array for one image or a batch of one size, a list
    of `(height, width, channels)` arrays for images of several sizes; anything that is not
    images (a tensor dataset, a dict...) is returned as it is."""
    if isinstance(x, (list, tuple)) and x:
        items = [_as_image(item) for item in x]
        bad = next((given for given, item in zip(x, items) if item is None), None)
        if bad is not None and hasattr(bad, "shape"):
            raise ValueError(f"{method}() takes images of shape (height, width, channels); "
                             f"received an array of shape {tuple(bad.shape)} in the list.")
        if bad is not None:
            raise ValueError(
                f"{method}() takes images as paths, PIL images or (height, width, channels) "
                f"arrays, or a batch array; the list holds a {type(bad).__name__}.")
        check_unit_range(items)
        if len({item.shape for item in items}) == 1:
            return np.stack(items)
        return items
    single = _as_image(x)
    if single is not None:
        check_unit_range([single])
        return single[None]
    if hasattr(x, "shape") and hasattr(x, "dtype") and len(x.shape) == 4:
        if "float" in str(x.dtype) and isinstance(x, np.ndarray):
            check_unit_range([x])
    return x


def image_items(images, method: str) -> tuple[bool, list[np.ndarray]]:
    """`(single, items)`: whether `images` is one image (a path, a PIL image or an
    `(height, width, channels)` array), and the images as arrays (a batch array's rows)."""
    single = _as_image(images)
    if single is not None:
        check_unit_range([single])
        return True, [single]
    if isinstance(images, (list, tuple)) and images:
        converted = as_images(images, method)
        return False, list(converted)
    items = [np.asarray(image) for image in images]
    check_unit_range(items)
    return False, items
