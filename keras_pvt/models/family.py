"""What the generic conversion and preset code needs to know about a model family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from keras_pvt.checkpoints.keymap import KeyTable


@dataclass(frozen=True)
class Preset:
    """A built-in preset: where its official checkpoint lives and what it is."""

    hf_repo: str
    description: str
    params: int
    source: str = "transformers"

    def metadata(self) -> dict:
        return {
            "description": self.description,
            "params": self.params,
            "source": f"{self.source}: https://huggingface.co/{self.hf_repo}",
            "hf_repo": self.hf_repo,
        }


@dataclass(frozen=True)
class Family:
    """A model family: its Keras classes, checkpoint tables and presets."""

    name: str
    backbone_cls: type
    classifier_cls: type
    preprocessor_cls: type
    image_converter_cls: type
    model_types: tuple[str, ...]  # transformers `model_type` values
    timm_prefixes: tuple[str, ...]  # timm architecture name prefixes
    tables: dict[str, KeyTable]  # layout -> key table
    head_keys: dict[str, tuple[str, ...]]  # layout -> prefixes of the classifier head
    backbone_prefixes: tuple[str, ...]  # stripped from transformers task checkpoints
    detect_layout: Callable[[dict], str | None]
    kwargs_from_transformers: Callable[[dict], dict]
    kwargs_from_weights: Callable[[dict, str], dict]
    presets: dict[str, Preset] = field(default_factory=dict)
    # Extra image-converter arguments read from preprocessor_config.json (e.g. crop_pct).
    image_converter_kwargs: Callable[[dict], dict] | None = None
