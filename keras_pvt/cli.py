"""The `keras-pvt` command: `predict`, `convert`, `presets`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

SAMPLE_IMAGE = "grace_hopper.jpg"


def sample_image_path() -> Path:
    return Path(str(resources.files("keras_pvt") / "assets" / SAMPLE_IMAGE))


def _load_image(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise SystemExit(f"keras-pvt: cannot read image {path}: {error}") from error


def cmd_predict(args) -> int:
    import keras

    from keras_pvt import hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.hub import PresetError

    images = args.images or [sample_image_path()]
    try:
        # The family and task come from the preset name or the checkpoint itself.
        model = hub.task_class(args.preset, "classifier").from_preset(args.preset)
    except (PresetError, CheckpointError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    results = []
    for path in images:
        pixels = _load_image(Path(path))
        logits = model.predict(pixels[None], verbose=0)
        top = model.decode_predictions(logits, top=args.top)[0]
        results.append({"image": str(path), "top": [
            {"index": i, "label": label, "probability": p} for i, label, p in top]})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(f"{result['image']}  ({args.preset}, {keras.backend.backend()} backend)")
        for rank, item in enumerate(result["top"], 1):
            print(f"  {rank}. {item['probability']:7.2%}  {item['label']}  [{item['index']}]")
    return 0


def cmd_convert(args) -> int:
    from keras_pvt import hub
    from keras_pvt.convert import convert_to_preset

    source = args.source
    if source in hub.all_presets():
        source = str(hub.download_checkpoint(hub.all_presets()[source][1].hf_repo, source))
    elif source.startswith("hf://"):
        source = str(hub.download_checkpoint(source[len("hf://"):], source))
    output = convert_to_preset(source, args.output_dir)
    print(f"Wrote keras-hub preset to {output}")
    return 0


def cmd_presets(args) -> int:
    from keras_pvt import hub

    rows = [(name, p.params, p.hf_repo, p.description)
            for name, (_, p) in hub.all_presets().items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'preset':{width}s}  {'params':>12s}  source")
    for name, params, repo, description in rows:
        print(f"{name:{width}s}  {params:12,d}  hf://{repo}")
        if args.verbose:
            print(f"{'':{width}s}  {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-pvt", description="Pyramid Vision Transformers for Keras 3."
    )
    parser.add_argument(
        "--backend", choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify images (a sample if none given)")
    predict.add_argument("images", nargs="*", type=Path, help="image files (default: a sample)")
    predict.add_argument("--preset", default="pvt_v2_b0", help="preset name, hf:// or path")
    predict.add_argument("--top", type=int, default=5, help="classes to show per image")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    convert = commands.add_parser("convert", help="convert a checkpoint to a keras-hub preset")
    convert.add_argument("source", help="preset name, hf://owner/repo, directory or file")
    convert.add_argument("output_dir", type=Path)
    convert.set_defaults(func=cmd_convert)

    presets = commands.add_parser("presets", help="list the built-in presets")
    presets.add_argument("-v", "--verbose", action="store_true")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != args.backend:
            raise SystemExit("keras-pvt: --backend must be chosen before keras is imported.")
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
