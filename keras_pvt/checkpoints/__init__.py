"""Safe checkpoint reading and declarative key-table loading."""

from keras_pvt.checkpoints.io import (
    CheckpointError,
    check_keras_weights,
    find_weights_file,
    read_state_dict,
)
from keras_pvt.checkpoints.keymap import KeyTable, fused, load_state_dict_into, prefixed

__all__ = [
    "CheckpointError",
    "KeyTable",
    "check_keras_weights",
    "find_weights_file",
    "fused",
    "prefixed",
    "load_state_dict_into",
    "read_state_dict",
]
