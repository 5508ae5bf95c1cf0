"""Convert the official PVT v2 checkpoints to keras-hub presets and assert parity.

For each preset, the transformers checkpoint (Hub id or local directory) is converted with
keras_pvt's own loader into `OUTPUT_DIR/<preset>/`; then the Keras model and the transformers
model classify the same real image (preprocessed once by transformers' image processor) and
the logits must agree within --tolerance on the Keras backend this process runs.

    KERAS_BACKEND=jax python conversion/convert_pvt_v2.py --output-dir presets/
    python conversion/convert_pvt_v2.py --presets pvt_v2_b0 --source ./pvt_v2_b0 --output-dir out/
"""

# ruff: noqa: I001  (transformers and torch must be imported before TensorFlow)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor, PvtImageProcessor, PvtV2ForImageClassification

import keras
import numpy as np
from PIL import Image

import keras_pvt
from keras_pvt import hub
from keras_pvt.cli import sample_image_path
from keras_pvt.convert import convert_to_preset


def checkpoint_dir(preset: str, source: str | None) -> Path:
    if source and Path(source).is_dir():
        return Path(source)
    repo = source or keras_pvt.PVTv2Classifier.presets[preset]["hf_repo"]
    return hub.download_checkpoint(repo.removeprefix("hf://"), preset)


def convert_and_check(preset: str, source: Path, output: Path, image: Image.Image, tol: float):
    started = time.perf_counter()
    convert_to_preset(source, output)
    converted_s = time.perf_counter() - started

    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = PvtImageProcessor()  # the checkpoint has no preprocessor_config.json
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    reference = PvtV2ForImageClassification.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference(pixels).logits.numpy()

    model = keras_pvt.PVTv2Classifier.from_preset(str(output))
    got = keras.ops.convert_to_numpy(model(pixels.numpy().transpose(0, 2, 3, 1)))
    delta = float(np.abs(got - expected).max())
    # End to end with Keras' own preprocessing (resize implementations differ slightly).
    by_predict = model.predict(np.asarray(image)[None], verbose=0)
    top_ref = model.decode_predictions(expected, top=1)[0][0]
    top_keras = model.decode_predictions(by_predict, top=1)[0][0]
    result = {
        "preset": preset,
        "backend": keras.backend.backend(),
        "max_abs_logit_delta": delta,
        "top1_transformers": top_ref[1],
        "top1_keras_predict": top_keras[1],
        "params": model.count_params(),
        "convert_seconds": round(converted_s, 2),
    }
    print(json.dumps(result))
    if delta > tol:
        raise SystemExit(f"{preset}: max |Δ logits| {delta:.3e} exceeds {tol:.1e}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(keras_pvt.PVTv2Classifier.presets))
    parser.add_argument("--source", help="checkpoint dir or Hub id (only with one preset)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=sample_image_path())
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.source and len(args.presets) != 1:
        parser.error("--source needs exactly one --presets name")
    image = Image.open(args.image).convert("RGB")
    for preset in args.presets:
        source = checkpoint_dir(preset, args.source)
        convert_and_check(preset, source, args.output_dir / preset, image, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
