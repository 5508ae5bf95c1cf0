"""Applying a declarative checkpoint key table to a Keras model.

A table maps Keras *module* paths (the variable path without its last part, with `.`
between layers) to source module names, e.g.

    "stage{s}_block{b}.attention.query": "encoder.layers.{s}.blocks.{b}.attention.query"

`{s}`, `{b}`... match integers; `{s1}` in the source stands for `s + 1` (1-based names of
the original repositories). A source may be `fused("...attn.kv", 0, 2)`: part 0 of 2
along the output axis of a fused projection. Keys can also be mapped whole
("stage{s}_position_embedding.embeddings": "pos_embed{s1}") when the leaf names differ.

Leaf names and layouts are translated generically: `kernel`/`gamma` <- `weight`,
`beta`/`bias` <- `bias`, BatchNorm statistics <- `running_mean`/`running_var`; convolution
kernels OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), Dense weights transposed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from keras_pvt.checkpoints.io import CheckpointError, describe

LEAF_NAMES = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "bias": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# Buffers that the Keras model does not need.
IGNORED_SOURCE_KEYS = re.compile(r"(num_batches_tracked|relative_position_index|attn_mask)$")


@dataclass(frozen=True)
class Fused:
    """Part `index` of `parts` equal chunks (output axis) of a fused source tensor."""

    key: str
    index: int
    parts: int


def fused(key: str, index: int, parts: int) -> Fused:
    return Fused(key, index, parts)


def prefixed(keras_prefix: str, source_prefix: str, rows: dict) -> dict:
    """`rows` (Keras module -> source module) under `keras_prefix` / `source_prefix`."""
    out = {}
    for keras_name, source in rows.items():
        if isinstance(source, Fused):
            source = fused(f"{source_prefix}.{source.key}", source.index, source.parts)
        else:
            source = f"{source_prefix}.{source}"
        out[f"{keras_prefix}.{keras_name}"] = source
    return out


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>\\d+)", pattern)
    return re.compile(f"^{pattern}$")


class KeyTable:
    """An ordered table of `keras template -> source template`; the first match wins."""

    def __init__(self, rows: dict):
        self.rows = [(_template_regex(k), v) for k, v in rows.items()]

    def lookup(self, keras_name: str):
        for regex, source in self.rows:
            match = regex.match(keras_name)
            if match:
                groups = {k: int(v) for k, v in match.groupdict().items()}
                groups.update({f"{k}1": v + 1 for k, v in list(groups.items())})
                if isinstance(source, Fused):
                    return Fused(source.key.format(**groups), source.index, source.parts)
                return source.format(**groups)
        return None

    def tensor(self, state_dict: dict, variable_path: str):
        """The source tensor of a Keras variable path in `state_dict`, or None."""
        key = self.source_key(variable_path)
        return state_dict.get(key) if isinstance(key, str) else None

    def count(self, state_dict: dict, template: str) -> int:
        """How many of `template.format(0)`, `template.format(1)`... are in `state_dict`
        (stages, blocks): the structure probe behind config-from-weights."""
        n = 0
        while self.tensor(state_dict, template.format(n)) is not None:
            n += 1
        return n

    def source_key(self, variable_path: str):
        """The source key (str or Fused) of a Keras variable path, or None."""
        parts = variable_path.split("/")
        whole = self.lookup(".".join(parts))
        if whole is not None:
            return whole
        module, leaf = ".".join(parts[:-1]), parts[-1]
        source = self.lookup(module)
        if source is None or leaf not in LEAF_NAMES:
            return None
        if isinstance(source, Fused):
            return Fused(f"{source.key}.{LEAF_NAMES[leaf]}", source.index, source.parts)
        return f"{source}.{LEAF_NAMES[leaf]}"


def to_keras_layout(value: np.ndarray, target_shape: tuple) -> np.ndarray | None:
    """Converts a PyTorch-layout tensor to the Keras variable's layout, or None if it can't."""
    target_shape = tuple(target_shape)
    if value.ndim == 4 and len(target_shape) == 4:
        for axes in ((2, 3, 1, 0), (2, 3, 0, 1)):  # conv first: square convs are ambiguous
            if tuple(value.shape[a] for a in axes) == target_shape:
                return value.transpose(axes)
        return None
    if value.ndim == 2 and len(target_shape) == 2:
        return value.T if value.T.shape == target_shape else None
    if value.shape == target_shape:
        return value
    if value.size == int(np.prod(target_shape)) and [d for d in value.shape if d != 1] == [
        d for d in target_shape if d != 1
    ]:
        return value.reshape(target_shape)
    return None


def load_state_dict_into(
    model,
    state_dict: dict[str, np.ndarray],
    table: KeyTable,
    *,
    source: str = "checkpoint",
    ignore_unused: tuple[str, ...] = (),
    file_key=None,
    file_of=None,
) -> None:
    """Assigns every variable of `model` from `state_dict` through `table`.

    All keys are checked before anything is assigned: missing keys, keys left unused and
    shape mismatches are reported together in one `CheckpointError`, and the model is left
    untouched. Unused keys starting with a prefix in `ignore_unused` are dropped quietly
    (e.g. a classifier head when loading into a backbone). `file_key` maps a key back to its
    name in the file (before e.g. a prefix was stripped), so that errors name it as it is
    there; `file_of` maps that name to the file that holds it (the shard of a sharded
    checkpoint), named beside each mismatched or unexpected key.
    """
    file_key = file_key or (lambda key: key)

    def located(key: str) -> str:
        shown = file_key(key)
        return f"{shown} (in {file_of(shown)})" if file_of is not None else shown

    assignments, missing, mismatched, unmapped = [], [], [], []
    used = set()
    for variable in model.weights:
        path = variable.path
        if path.endswith("seed_generator_state"):
            continue
        key = table.source_key(path)
        if key is None:
            unmapped.append(path)
            continue
        name = key.key if isinstance(key, Fused) else key
        shown = file_key(name)
        if name not in state_dict:
            missing.append(f"{shown} (for {path})")
            continue
        used.add(name)
        value = state_dict[name]
        if isinstance(key, Fused):
            if value.shape[0] % key.parts:
                mismatched.append(f"{located(name)}: {value.shape} cannot be split in "
                                  f"{key.parts}")
                continue
            size = value.shape[0] // key.parts
            value = value[key.index * size : (key.index + 1) * size]
        converted = to_keras_layout(np.asarray(value), variable.shape)
        if converted is None:
            mismatched.append(
                f"{located(name)}: checkpoint shape {tuple(value.shape)} does not fit {path} "
                f"{tuple(variable.shape)}"
            )
            continue
        assignments.append((variable, converted))
    unexpected = sorted(
        located(k) for k in state_dict
        if k not in used and not IGNORED_SOURCE_KEYS.search(k)
        and not any(k.startswith(prefix) for prefix in ignore_unused)
    )
    if unmapped or missing or mismatched or unexpected:
        sections = []
        if missing:
            sections.append(f"missing keys ({len(missing)}):\n{describe(missing)}")
        if unexpected:
            sections.append(f"unexpected keys ({len(unexpected)}):\n{describe(unexpected)}")
        if mismatched:
            sections.append(f"shape mismatches ({len(mismatched)}):\n{describe(mismatched)}")
        if unmapped:
            sections.append(
                f"model variables with no table entry ({len(unmapped)}):\n{describe(unmapped)}"
            )
        raise CheckpointError(
            f"The {source} does not match the model; nothing was loaded.\n" + "\n".join(sections)
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
