"""The registry of families and tasks: what conversion, presets and the CLI iterate.

A *family* is a backbone with its checkpoint layouts (one key table per source), config
translation and presets; a *task* is a head on that backbone (its Keras class, its head's
checkpoint keys per source, its preprocessor). Each family module in this package builds its
`Family` and calls `register`; a task module calls `register_task` for each family it
supports (the classifier is declared with each family).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from keras_pvt.catalog import License, Preset  # noqa: F401 (re-exported)
from keras_pvt.checkpoints.keymap import KeyTable


@dataclass(frozen=True)
class Task:
    """A head on a family's backbone, as conversion sees it.

    `head_rows[layout]` maps the head's Keras modules to the source's (the rows are added
    to the backbone's table); a checkpoint holds the task when the source key of `marker`
    (a Keras variable path of the head) is in it. `build(backbone, preprocessor,
    state_dict, table, config)` makes the Keras task model (unloaded) for this task.
    """

    name: str
    model_cls: type
    preprocessor_cls: type
    head_rows: dict[str, dict]
    marker: str
    build: Callable
    # Preprocessor arguments (besides the image converter) from preprocessor_config.json.
    preprocessor_kwargs: Callable[[dict], dict] | None = None
    # Image-converter arguments from preprocessor_config.json beyond size and mean/std.
    image_converter_kwargs: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class Family:
    """A model family: its backbone, checkpoint layouts, tasks and presets."""

    name: str
    backbone_cls: type
    preprocessor_cls: type  # saved with backbone presets; its image converter is the family's
    model_types: tuple[str, ...]  # transformers `model_type` values
    timm_prefixes: tuple[str, ...]  # timm architecture name prefixes
    backbone_rows: dict[str, dict]  # layout -> key-table rows of the backbone
    backbone_prefixes: tuple[str, ...]  # stripped from transformers task checkpoints
    detect_layout: Callable[[dict], str | None]
    kwargs_from_transformers: Callable[[dict], dict]
    kwargs_from_weights: Callable[[dict, str], dict]
    # `(kwargs, state_dict, layout) -> {argument: (declared, found in the weights)}`: the
    # sizes config.json declares are checked against the weights before a model is built.
    sizes_against_weights: Callable[[dict, dict, str], dict] | None = None
    tasks: list[Task] = field(default_factory=list)
    presets: dict[str, Preset] = field(default_factory=dict)
    # Extra image-converter arguments read from preprocessor_config.json (e.g. crop_pct).
    image_converter_kwargs: Callable[[dict], dict] | None = None

    @property
    def image_converter_cls(self) -> type:
        return self.preprocessor_cls.image_converter_cls

    def table(self, layout: str, task: Task | None = None) -> KeyTable:
        """The key table of `layout` for the backbone, plus `task`'s head."""
        head = task.head_rows.get(layout, {}) if task is not None else {}
        return KeyTable({**self.backbone_rows[layout], **head})

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"The {self.name} family has no {name!r} task.")

    def head_prefixes(self, layout: str) -> tuple[str, ...]:
        """Source-key prefixes of every task head in `layout` (kept unprefixed in errors)."""
        return tuple(
            f"{source if isinstance(source, str) else source.key}.".split("{")[0]
            for task in self.tasks for source in task.head_rows.get(layout, {}).values()
        )


FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    """Adds a family (and its tasks and presets) to the registry."""
    taken = {name for known in FAMILIES for name in known.presets}
    clash = taken & set(family.presets)
    if clash:
        raise ValueError(f"Preset names registered twice: {sorted(clash)}.")
    FAMILIES.append(family)
    return family


def register_task(family_name: str, task: Task) -> Task:
    """Adds a task to a registered family (from the task's own module)."""
    family = next((f for f in FAMILIES if f.name == family_name), None)
    if family is None:
        raise KeyError(f"No registered family {family_name!r}.")
    if any(known.name == task.name for known in family.tasks):
        raise ValueError(f"The {family_name} family already has a {task.name!r} task.")
    family.tasks.append(task)
    return task


def stage_sizes(table: KeyTable, state_dict: dict, embedding: str, layer: str,
                first_norm: str, family: str) -> dict:
    """The sizes every family's weights show per stage: widths and patch kernels (the
    `embedding` convolution), depths (`first_norm` of each `layer`), MLP ratios, and the
    input channels (`image_shape`). `embedding` and `layer` are Keras paths with `{s}`
    (stage) and, for `layer`, `{b}` (block)."""
    num_stages = table.count(state_dict, embedding.replace("{s}", "{}") + "/proj/kernel")
    if num_stages == 0:
        raise ValueError(f"No {family} patch embedding found in the checkpoint.")
    sizes = {name: [] for name in ("hidden_sizes", "patch_sizes", "depths", "mlp_ratios")}
    for s in range(num_stages):
        proj = table.tensor(state_dict, embedding.format(s=s) + "/proj/kernel")
        sizes["hidden_sizes"].append(int(proj.shape[0]))
        sizes["patch_sizes"].append(int(proj.shape[-1]))
        first = layer.format(s=s, b="{}") + f"/{first_norm}/gamma"
        sizes["depths"].append(table.count(state_dict, first))
        fc1 = table.tensor(state_dict, layer.format(s=s, b=0) + "/mlp/dense1/kernel")
        sizes["mlp_ratios"].append(fc1.shape[0] / proj.shape[0])
    channels = table.tensor(state_dict, embedding.format(s=0) + "/proj/kernel").shape[1]
    sizes["image_shape"] = (None, None, int(channels))
    return sizes


def all_presets() -> dict[str, tuple[Family, Preset]]:
    return {name: (family, p) for family in FAMILIES for name, p in family.presets.items()}
