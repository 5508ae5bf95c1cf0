"""What every conversion script shares: convert a checkpoint with keras_pvt's own loader, run
the transformers reference on a real image, and assert that the logits agree.

A family's script (`convert_<family>.py`) only names its Keras classifier class, its
transformers model class and its image processor, then calls `main(...)`.
"""

# ruff: noqa: I001  (transformers and torch must be imported before TensorFlow)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor

import keras
import numpy as np
from PIL import Image

from keras_pvt import hub
from keras_pvt.cli import sample_image_path
from keras_pvt.convert import convert_to_preset


def checkpoint_dir(classifier_cls, preset: str, source: str | None) -> Path:
    """The local transformers checkpoint of `preset`: `source` if it is a directory, else a
    download (or the Hugging Face cache) of `source` or the preset's own Hub repository."""
    if source and Path(source).is_dir():
        return Path(source)
    repo = source or classifier_cls.presets[preset]["hf_repo"]
    return hub.download_checkpoint(repo.removeprefix("hf://"), preset)


def convert_and_check(
    classifier_cls,
    reference_cls,
    default_processor,
    preset: str,
    source: Path,
    output: Path,
    image: Image.Image,
    tolerance: float,
) -> dict:
    """Converts `source` into `output` and compares its logits with transformers'."""
    started = time.perf_counter()
    convert_to_preset(source, output)
    converted_s = time.perf_counter() - started

    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = default_processor()  # the checkpoint has no preprocessor_config.json
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    reference = reference_cls.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference(pixels).logits.numpy()

    model = classifier_cls.from_preset(str(output))
    got = keras.ops.convert_to_numpy(model(pixels.numpy().transpose(0, 2, 3, 1)))
    delta = float(np.abs(got - expected).max())
    # End to end with Keras' own preprocessing (resize implementations differ slightly).
    by_predict = model.predict(np.asarray(image)[None], verbose=0)
    top_reference = model.decode_predictions(expected, top=1)[0][0]
    top_keras = model.decode_predictions(by_predict, top=1)[0][0]
    result = {
        "preset": preset,
        "backend": keras.backend.backend(),
        "max_abs_logit_delta": delta,
        "top1_transformers": top_reference[1],
        "top1_keras_predict": top_keras[1],
        "params": model.count_params(),
        "convert_seconds": round(converted_s, 2),
    }
    print(json.dumps(result))
    if delta > tolerance:
        raise SystemExit(f"{preset}: max |Δ logits| {delta:.3e} exceeds {tolerance:.1e}")
    return result


def main(classifier_cls, reference_cls, default_processor, description: str, argv=None) -> int:
    """The command line shared by every family's conversion script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--presets", nargs="+", default=list(classifier_cls.presets))
    parser.add_argument("--source", help="checkpoint dir or Hub id (only with one preset)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=sample_image_path())
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.source and len(args.presets) != 1:
        parser.error("--source needs exactly one --presets name")
    unknown = sorted(set(args.presets) - set(classifier_cls.presets))
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {sorted(classifier_cls.presets)}")
    image = Image.open(args.image).convert("RGB")
    for preset in args.presets:
        source = checkpoint_dir(classifier_cls, preset, args.source)
        convert_and_check(
            classifier_cls, reference_cls, default_processor, preset, source,
            args.output_dir / preset, image, args.tolerance,
        )
    return 0


if __name__ == "__main__":
    sys.exit("Run a family's script, e.g. conversion/convert_pvt_v2.py.")
