"""Checkpoint conversion: the family and task registry, one module per family (key tables,
config translation, presets), and the conversion of a checkpoint into a keras-hub preset.

Importing this package registers every family (the imports below).
"""

# Each family module registers its family; the order is the presets' listing order.
from keras_pvt.convert import pvt_v2  # noqa: I001, F401
from keras_pvt.convert import pvt  # noqa: F401
from keras_pvt.convert import cvt  # noqa: F401
from keras_pvt.convert.conversion import (
    Checkpoint,
    build_from_checkpoint,
    check_family,
    convert_to_preset,
    detect_task,
    identify,
    read_checkpoint,
)
from keras_pvt.convert.registry import (
    FAMILIES,
    Family,
    Preset,
    Task,
    all_presets,
    register,
    register_task,
)

__all__ = [
    "FAMILIES",
    "Checkpoint",
    "Family",
    "Preset",
    "Task",
    "all_presets",
    "build_from_checkpoint",
    "check_family",
    "convert_to_preset",
    "detect_task",
    "identify",
    "read_checkpoint",
    "register",
    "register_task",
]
