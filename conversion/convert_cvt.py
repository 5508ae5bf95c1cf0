"""Convert the official CvT checkpoints (microsoft/cvt-*) to keras-hub presets and assert parity.

For each preset, the transformers checkpoint (Hub id or local directory) is converted with
keras_pvt's own loader into `OUTPUT_DIR/<preset>/`; then the Keras model and the transformers
model classify the same real image (preprocessed once by the checkpoint's ConvNext image
processor) and the logits must agree within --tolerance on the Keras backend this process runs.

    KERAS_BACKEND=jax python conversion/convert_cvt.py --output-dir presets/
    python conversion/convert_cvt.py --presets cvt_13 --source ./cvt-13 --output-dir out/
"""

# ruff: noqa: I001  (transformers and torch must be imported before TensorFlow)
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import ConvNextImageProcessor, CvtForImageClassification  # noqa: E402

import keras_pvt  # noqa: E402
from common import main  # noqa: E402

# What microsoft/cvt-13 and cvt-21 ship, for checkpoints without preprocessor_config.json.
DEFAULT_PROCESSOR = partial(
    ConvNextImageProcessor, size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
)

if __name__ == "__main__":
    sys.exit(main(keras_pvt.CvTClassifier, CvtForImageClassification, DEFAULT_PROCESSOR,
                  __doc__.splitlines()[0]))
