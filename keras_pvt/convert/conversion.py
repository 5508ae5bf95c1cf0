"""Turning a transformers / timm / original checkpoint into a Keras model or preset."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from keras_pvt.checkpoints.io import CheckpointError, find_weights_file, read_state_dict
from keras_pvt.checkpoints.keymap import load_state_dict_into
from keras_pvt.convert.registry import FAMILIES, Family, Task
from keras_pvt.tasks.preprocessing import imagenet_scale_offset

_INTERPOLATIONS = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}
_IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# What transformers' image processor for each `model_type` does when a checkpoint has no
# preprocessor_config.json (its constructor's defaults, transformers 5): Pvt-, ConvNext-
# (whose mean and std are 0.5, unlike CvT's published configs), Segformer- and
# GLPNImageProcessor. Resample codes are PIL's (2 bilinear, 3 bicubic).
PROCESSOR_DEFAULTS = {
    "pvt_v2": {"size": {"height": 224, "width": 224}, "resample": 3, **_IMAGENET},
    "pvt": {"size": {"height": 224, "width": 224}, "resample": 3, **_IMAGENET},
    "cvt": {"size": {"shortest_edge": 384}, "crop_pct": 224 / 256, "resample": 3,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "segformer": {"size": {"height": 512, "width": 512}, "resample": 2, **_IMAGENET},
    "glpn": {"size_divisor": 32, "resample": 2},
}


@dataclass
class Checkpoint:
    """A checkpoint read from disk: its tensors and, for directories, its configs."""

    path: Path
    weights_path: Path
    state_dict: dict
    config: dict | None = None
    preprocessor_config: dict | None = None
    shards: dict[str, Path] | None = None  # a sharded checkpoint's key -> shard file


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    return data


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads a checkpoint directory (config.json + weights) or a single weights file."""
    path = Path(path)
    if path.is_dir():
        weights = find_weights_file(path)
        state_dict = read_state_dict(weights)
        shards = None
        if weights.name.endswith(".index.json"):  # (read_state_dict checked the index)
            weight_map = json.loads(weights.read_bytes())["weight_map"]
            shards = {key: weights.parent / shard for key, shard in weight_map.items()}
        return Checkpoint(
            path=path,
            weights_path=weights,
            state_dict=state_dict,
            config=_read_json(path / "config.json"),
            preprocessor_config=_read_json(path / "preprocessor_config.json"),
            shards=shards,
        )
    if path.is_file():
        return Checkpoint(path=path, weights_path=path, state_dict=read_state_dict(path))
    raise CheckpointError(f"{path} does not exist.")


def _strip_prefix(state_dict: dict, prefixes: tuple[str, ...]) -> dict:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            return {(k[len(prefix):] if k.startswith(prefix) else k): v
                    for k, v in state_dict.items()}
    return state_dict


def identify(checkpoint: Checkpoint) -> tuple[Family, str, dict]:
    """The family, key layout and (prefix-stripped) state dict of a checkpoint."""
    config = checkpoint.config or {}
    if checkpoint.config is not None and not {"model_type", "architecture"} & set(config):
        raise CheckpointError(
            f"{checkpoint.path / 'config.json'}: neither a transformers config (no "
            "model_type) nor a timm one (no architecture); is the file damaged?"
        )
    supported = sorted({t for f in FAMILIES for t in f.model_types})
    candidates = FAMILIES
    if "model_type" in config:
        candidates = [f for f in FAMILIES if config["model_type"] in f.model_types]
        if not candidates:
            raise CheckpointError(
                f"{checkpoint.path / 'config.json'}: unknown model_type "
                f"{config['model_type']!r}; keras_pvt reads {', '.join(supported)}."
            )
    elif "architecture" in config:
        arch = config["architecture"]
        candidates = [f for f in FAMILIES if str(arch).startswith(f.timm_prefixes)]
        if not candidates:
            raise CheckpointError(
                f"{checkpoint.path / 'config.json'}: timm architecture {arch!r} is not "
                "supported by keras_pvt."
            )
    for family in candidates:
        state_dict = _strip_prefix(checkpoint.state_dict, family.backbone_prefixes)
        layout = family.detect_layout(state_dict)
        if layout is not None:
            return family, layout, state_dict
    narrowed = candidates is not FAMILIES  # by config.json's model_type / architecture
    what = f"a {candidates[0].name} checkpoint" if narrowed else "a keras_pvt model"
    claim = f", which {checkpoint.path / 'config.json'} says they are" if narrowed else ""
    sample = ", ".join(sorted(checkpoint.state_dict)[:5])
    raise CheckpointError(
        f"{checkpoint.weights_path}: the weights are not {what} in any known layout "
        f"(transformers, timm, original){claim}. First keys: {sample}."
    )


def _image_converter(family: Family, task: Task | None, converter_cls: type,
                     checkpoint: Checkpoint):
    config = checkpoint.preprocessor_config
    if not config:
        config = PROCESSOR_DEFAULTS.get((checkpoint.config or {}).get("model_type"))
    if not config:  # timm or original checkpoints: the converter's defaults
        return converter_cls()
    kwargs = {}
    size = config.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        kwargs["image_size"] = (size["height"], size["width"])
    elif isinstance(size, int):
        kwargs["image_size"] = (size, size)
    if "image_mean" in config and "image_std" in config:
        std = config["image_std"]
        if not isinstance(std, list) or not all(_finite(v) and v != 0 for v in std):
            raise ValueError(f"image_std {std!r} is not a list of non-zero numbers")
        rescale = config.get("rescale_factor", 1 / 255) * 255
        scale, offset = imagenet_scale_offset(config["image_mean"], config["image_std"])
        kwargs["scale"] = [s * rescale for s in scale]
        kwargs["offset"] = offset
    if config.get("resample") in _INTERPOLATIONS:
        kwargs["interpolation"] = _INTERPOLATIONS[config["resample"]]
    if family.image_converter_kwargs is not None and converter_cls is family.image_converter_cls:
        kwargs.update(family.image_converter_kwargs(config))
    if task is not None and task.image_converter_kwargs is not None:
        kwargs.update(task.image_converter_kwargs(config))
    _check_preprocessing(kwargs)
    return converter_cls(**kwargs)


MAX_IMAGE_SIDE = 8192


def _finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_preprocessing(kwargs: dict) -> None:
    """Raises `ValueError` for settings that would fail (or allocate without bound) only
    once images arrive: sizes, scales and crops outside any sensible range."""
    size = kwargs.get("image_size")
    if size is not None and not (
        len(size) == 2 and all(type(s) is int and 1 <= s <= MAX_IMAGE_SIDE for s in size)
    ):
        raise ValueError(f"image size {size!r} is not two integers from 1 to {MAX_IMAGE_SIDE}")
    for name in ("scale", "offset"):
        values = kwargs.get(name)
        values = values if isinstance(values, (list, tuple)) else [values]
        if kwargs.get(name) is not None and not all(_finite(v) for v in values):
            raise ValueError(f"{name} {kwargs[name]!r} (from rescale_factor, image_mean and "
                             "image_std) is not finite")
    crop = kwargs.get("crop_pct")
    if crop is not None and not (_finite(crop) and 0 < crop <= 1):
        raise ValueError(f"crop_pct {crop!r} is not in (0, 1]")
    divisor = kwargs.get("size_divisor")
    if divisor is not None and not (type(divisor) is int and 1 <= divisor <= MAX_IMAGE_SIDE):
        raise ValueError(f"size_divisor {divisor!r} is not an integer from 1 to "
                         f"{MAX_IMAGE_SIDE}")


def _check_hyperparameters(kwargs: dict) -> None:
    """Raises `ValueError` for config.json values no model can train or run with."""
    for name, values in kwargs.items():
        values = values if isinstance(values, (list, tuple)) else [values]
        if name.endswith("epsilon") and not all(_finite(v) and 0 < v < 1 for v in values):
            raise ValueError(f"{name} {kwargs[name]!r} is not in (0, 1)")
        if ((name.endswith("dropout") or name == "drop_path_rate")
                and not all(_finite(v) and 0 <= v < 1 for v in values)):
            raise ValueError(f"{name} {kwargs[name]!r} is not in [0, 1)")


def check_family(family: Family, model_cls, what) -> None:
    """Raises `CheckpointError` if `model_cls` (a backbone or task class) cannot hold a
    `family` model, before anything is converted."""
    if model_cls is None:
        return
    target = getattr(model_cls, "backbone_cls", model_cls)  # a task: its backbone's class
    if target is None:
        return  # a task for any backbone
    if not issubclass(family.backbone_cls, target):
        classes = [task.model_cls.__name__ for task in family.tasks]
        classes.append(family.backbone_cls.__name__)
        raise CheckpointError(
            f"{what} is a {family.name} checkpoint; load it with "
            f"{', '.join(classes[:-1])} or {classes[-1]}, not {model_cls.__name__}."
        )


def detect_task(family: Family, layout: str, state_dict: dict) -> Task | None:
    """The task whose head the checkpoint holds, or None for a bare backbone."""
    for task in family.tasks:
        if family.table(layout, task).tensor(state_dict, task.marker) is not None:
            return task
    return None


def _same_size(declared, found) -> bool:
    if isinstance(found, (list, tuple)):
        return (isinstance(declared, (list, tuple)) and len(declared) == len(found)
                and all(f is None or _same_size(d, f) for d, f in zip(declared, found)))
    if isinstance(found, float) or isinstance(declared, float):
        return (isinstance(declared, (int, float)) and not isinstance(declared, bool)
                and abs(declared - found) <= 1e-6 * abs(found))
    return type(declared) is type(found) and declared == found


@dataclass
class Conversion:
    """A checkpoint checked and translated, before any model is built: the family, key
    layout, task and backbone arguments, and the preprocessor.

    The sizes in config.json are checked against the weights' shapes here, so a damaged or
    mismatched config.json is reported before it can make a model of any size.
    """

    family: Family
    layout: str
    task: Task | None
    table: object
    state_dict: dict
    backbone_kwargs: dict
    preprocessor: object
    checkpoint: Checkpoint
    where: Path  # the file the architecture was read from

    def build(self):
        """`(model, preprocessor)`: the Keras model, with the checkpoint's weights."""
        try:
            backbone = self.family.backbone_cls(**self.backbone_kwargs)
        except Exception as error:  # any value config.json gives can fail here
            raise CheckpointError(
                f"{self.where}: cannot build a {self.family.name} model from it: "
                f"{type(error).__name__}: {error}"
            ) from error
        model = backbone
        if self.task is not None:
            model = self.task.build(backbone, self.preprocessor, self.state_dict, self.table,
                                    self.checkpoint.config)
        self.load_into(model)
        return model, self.preprocessor

    def load_into(self, model) -> None:
        """Assigns the checkpoint's weights to `model` (built from this conversion)."""
        checkpoint, family = self.checkpoint, self.family
        from_config = self.where != checkpoint.weights_path
        architecture = f", architecture from {self.where}" if from_config else ""
        source = f"checkpoint {checkpoint.weights_path} ({self.layout} layout{architecture})"
        # Errors name keys as they are in the file (identify stripped a task model's prefix).
        prefix = next((p for p in family.backbone_prefixes
                       if any(k.startswith(p) for k in checkpoint.state_dict)), "")
        head = family.head_prefixes(self.layout)

        def file_key(key: str) -> str:
            return key if not prefix or key.startswith(head) else prefix + key

        file_of = checkpoint.shards.get if checkpoint.shards else None
        load_state_dict_into(model, self.state_dict, self.table, source=source,
                             file_key=file_key, file_of=file_of)


def plan_conversion(checkpoint: Checkpoint, model_cls=None) -> Conversion:
    """Checks and translates a checkpoint (see `Conversion`); builds nothing.

    Args:
        checkpoint: the checkpoint read by `read_checkpoint`.
        model_cls: the class that will load the result, if known: a checkpoint of another
            family is refused before it is converted.
    """
    family, layout, state_dict = identify(checkpoint)
    check_family(family, model_cls, checkpoint.path)
    task = detect_task(family, layout, state_dict)
    table = family.table(layout, task)
    # (a transformers config.json names its model_type; timm's names its architecture)
    from_config = "model_type" in (checkpoint.config or {})
    # The architecture comes from config.json when there is one, else from the weights'
    # shapes; either way a bad value is reported against the file it came from.
    where = checkpoint.path / "config.json" if from_config else checkpoint.weights_path
    try:
        if from_config:
            kwargs = family.kwargs_from_transformers(checkpoint.config)
            _check_hyperparameters(kwargs)
        else:
            kwargs = family.kwargs_from_weights(state_dict, layout)
    except Exception as error:  # any value config.json gives, or a tensor missing
        raise CheckpointError(
            f"{where}: cannot build a {family.name} model from it: "
            f"{type(error).__name__}: {error}"
        ) from error
    pairs = {}
    if from_config and family.sizes_against_weights is not None:
        try:
            pairs = family.sizes_against_weights(kwargs, state_dict, layout)
        except Exception as error:  # a tensor missing or of an impossible rank
            raise CheckpointError(
                f"{checkpoint.weights_path}: damaged or incomplete {family.name} weights: "
                f"{type(error).__name__}: {error}"
            ) from error
    for name, (declared, found) in pairs.items():
        if not _same_size(declared, found):
            raise CheckpointError(
                f"{where}: {name} is {declared!r}, but the weights in "
                f"{checkpoint.weights_path} have {found!r} (is config.json from another "
                "checkpoint?); nothing was built."
            )
    preprocessor_cls = task.preprocessor_cls if task is not None else family.preprocessor_cls
    try:
        converter = _image_converter(family, task, preprocessor_cls.image_converter_cls,
                                     checkpoint)
        extra = {}
        if task is not None and task.preprocessor_kwargs is not None:
            extra = task.preprocessor_kwargs(checkpoint.preprocessor_config or {})
        preprocessor = preprocessor_cls(image_converter=converter, **extra)
    except Exception as error:  # any value preprocessor_config.json gives
        raise CheckpointError(
            f"{checkpoint.path / 'preprocessor_config.json'}: unusable preprocessing "
            f"settings: {type(error).__name__}: {error}"
        ) from error
    return Conversion(family, layout, task, table, state_dict, kwargs, preprocessor,
                      checkpoint, where)


def build_from_checkpoint(checkpoint: Checkpoint, model_cls=None):
    """`(model, preprocessor)`: the Keras task model whose head the checkpoint holds (a
    classifier...), else a backbone, with the checkpoint's weights (see `plan_conversion`
    for the arguments)."""
    return plan_conversion(checkpoint, model_cls).build()


def convert_to_preset(
    source: str | os.PathLike, output_dir: str | os.PathLike, model_cls=None
) -> Path:
    """Converts a checkpoint directory or file into a keras-hub preset directory.

    A task checkpoint (e.g. a classifier) gives a task preset (backbone, head,
    preprocessor); a backbone checkpoint gives a backbone preset with its preprocessor.
    `model_cls`, if given, is the class that will load it (a checkpoint of another family
    is refused).
    """
    model, preprocessor = build_from_checkpoint(read_checkpoint(source), model_cls)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_to_preset(str(output_dir))
    if not hasattr(model, "backbone"):
        preprocessor.save_to_preset(str(output_dir))
    return output_dir
