"""A transformers checkpoint without preprocessor_config.json preprocesses as transformers'
image processor for its `model_type` does with its defaults (Pvt-, ConvNext-, Segformer-,
GLPNImageProcessor), not with keras_pvt's converter defaults."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import transformers

import keras_pvt
from tests.helpers.reference import hf_glpn, hf_pvt_v2, hf_segformer
from tests.helpers.reference_cvt import hf_cvt
from tests.helpers.reference_pvt import hf_pvt
from tests.test_cvt_model import LEVEL, smooth_images

CASES = {
    "pvt_v2": (lambda: hf_pvt_v2("tiny", num_labels=3), keras_pvt.PVTv2Classifier,
               "PvtImageProcessorPil", (224, 224)),
    "pvt": (lambda: hf_pvt("small", num_labels=3), keras_pvt.PVTClassifier,
            "PvtImageProcessorPil", (224, 224)),
    "cvt": (lambda: hf_cvt("small", num_labels=3), keras_pvt.CvTClassifier,
            "ConvNextImageProcessorPil", (384, 384)),
    "segformer": (lambda: hf_segformer("tiny", num_labels=3), keras_pvt.SegFormerSegmenter,
                  "SegformerImageProcessorPil", (512, 512)),
    "glpn": (lambda: hf_glpn("tiny"), keras_pvt.GLPNDepthEstimator, "GLPNImageProcessorPil",
             (320, 480)),
}


@pytest.mark.parametrize("model_type", list(CASES))
def test_defaults_follow_the_reference_processor(model_type, tmp_path, record_delta):
    make, task_cls, processor_name, shape = CASES[model_type]
    reference = make()
    assert reference.config.model_type == model_type
    reference.save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    model = task_cls.from_preset(str(tmp_path))
    processor = getattr(transformers, processor_name)()
    image = smooth_images(1, 333, 497)[0]
    want = processor(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = keras.ops.convert_to_numpy(model.preprocessor(image[None].astype("float32")))[0]
    assert got.shape == want.shape == (*shape, 3)
    delta = float(np.abs(got - want).max())
    record_delta(f"default preprocessing {model_type} vs {processor_name} (333x497)", delta)
    # Up to PIL's rounding of the resized image to uint8 (and bicubic overshoot clipped
    # there): one level, normalised by the processor's smallest std (GLPN: none; CvT: 0.5).
    level = {"glpn": 1 / 255, "cvt": 1 / (255 * 0.5)}.get(model_type, LEVEL)
    assert delta < 1.1 * level
