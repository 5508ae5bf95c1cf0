"""Turning a transformers / timm / original checkpoint into a Keras model or preset."""

from __future__ import annotations

import json
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


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    return data


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads a checkpoint directory (config.json + weights) or a single weights file."""
    path = Path(path)
    if path.is_dir():
        weights = find_weights_file(path)
        return Checkpoint(
            path=path,
            weights_path=weights,
            state_dict=read_state_dict(weights),
            config=_read_json(path / "config.json"),
            preprocessor_config=_read_json(path / "preprocessor_config.json"),
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
    sample = ", ".join(sorted(checkpoint.state_dict)[:5])
    raise CheckpointError(
        f"{checkpoint.weights_path}: the weights are not {what} in any known layout "
        f"(transformers, timm, original). First keys: {sample}."
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
    return converter_cls(**kwargs)


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


def build_from_checkpoint(checkpoint: Checkpoint, model_cls=None):
    """`(model, preprocessor)`: the Keras task model whose head the checkpoint holds (a
    classifier...), else a backbone, with the checkpoint's weights.

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
        else:
            kwargs = family.kwargs_from_weights(state_dict, layout)
        backbone = family.backbone_cls(**kwargs)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(
            f"{where}: cannot build a {family.name} model from it: "
            f"{type(error).__name__}: {error}"
        ) from error
    preprocessor_cls = task.preprocessor_cls if task is not None else family.preprocessor_cls
    try:
        converter = _image_converter(family, task, preprocessor_cls.image_converter_cls,
                                     checkpoint)
        extra = {}
        if task is not None and task.preprocessor_kwargs is not None:
            extra = task.preprocessor_kwargs(checkpoint.preprocessor_config or {})
        preprocessor = preprocessor_cls(image_converter=converter, **extra)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"{checkpoint.path / 'preprocessor_config.json'}: unusable preprocessing "
            f"settings: {type(error).__name__}: {error}"
        ) from error
    architecture = f", architecture from {where}" if from_config else ""
    source = f"checkpoint {checkpoint.weights_path} ({layout} layout{architecture})"
    # Errors name keys as they are in the file (identify stripped a task model's prefix).
    prefix = next((p for p in family.backbone_prefixes
                   if any(k.startswith(p) for k in checkpoint.state_dict)), "")
    head = family.head_prefixes(layout)

    def file_key(key: str) -> str:
        return key if not prefix or key.startswith(head) else prefix + key

    model = backbone
    if task is not None:
        model = task.build(backbone, preprocessor, state_dict, table, checkpoint.config)
    load_state_dict_into(model, state_dict, table, source=source, file_key=file_key)
    return model, preprocessor


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
