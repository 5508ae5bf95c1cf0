"""Convert the official PVT v1 checkpoints to keras-hub presets and assert parity.

For each preset, the transformers checkpoint (Hub id or local directory) is converted with
keras_pvt's own loader into `OUTPUT_DIR/<preset>/`; then the Keras model and the transformers
model classify the same real image (preprocessed once by transformers' image processor) and
the logits must agree within --tolerance on the Keras backend this process runs.

    KERAS_BACKEND=jax python conversion/convert_pvt.py --output-dir presets/
    python conversion/convert_pvt.py --presets pvt_tiny --source ./pvt-tiny-224 --output-dir out/
"""

# ruff: noqa: I001  (transformers and torch must be imported before TensorFlow)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import PvtForImageClassification, PvtImageProcessor  # noqa: E402

import keras_pvt  # noqa: E402
from common import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(keras_pvt.PVTClassifier, PvtForImageClassification, PvtImageProcessor,
                  __doc__.splitlines()[0]))
