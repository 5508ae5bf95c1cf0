"""Python data pipelines (`keras.utils.PyDataset`, torch `DataLoader`) for keras_pvt tasks.

keras-hub's tasks batch and preprocess NumPy arrays and `tf.data` datasets themselves, but
reject Python pipelines. `PythonDataMixin` gives a task's `fit`/`evaluate`/`predict` both:
each batch goes through the task's preprocessor (as with arrays), then to `keras.Model`'s
own loop, which already reads these pipelines on every backend.
"""

from __future__ import annotations

import copy

import keras


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


class PythonDataMixin:
    """Lets a keras-hub task's `fit`/`evaluate`/`predict` take a `keras.utils.PyDataset` or a
    torch `DataLoader` (its preprocessor runs on each batch); other inputs go to keras-hub."""

    def _python_data_preprocess(self, x, y=None, sample_weight=None):
        return self.preprocess_samples(x, y, sample_weight)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, **kwargs):
        """`keras.Model.fit`; also accepts a `PyDataset` or a torch `DataLoader`."""
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
        if not is_python_data(x):
            return super().evaluate(x, y, batch_size=batch_size, **kwargs)
        _no_targets_with_pipeline(y, batch_size, "evaluate")
        return keras.Model.evaluate(self, preprocessed(x, self._python_data_preprocess), **kwargs)

    def predict(self, x=None, batch_size=None, **kwargs):
        """`keras.Model.predict`; also accepts a `PyDataset` or a torch `DataLoader`."""
        if not is_python_data(x):
            return super().predict(x, batch_size=batch_size, **kwargs)
        _no_targets_with_pipeline(None, batch_size, "predict")
        return keras.Model.predict(self, preprocessed(x, self._python_data_preprocess), **kwargs)


def _no_targets_with_pipeline(y, batch_size, method: str) -> None:
    if y is not None or batch_size is not None:
        raise ValueError(
            f"`{method}` on a PyDataset / DataLoader takes the targets and the batch size from "
            "it; do not pass `y` or `batch_size`."
        )
