"""The `keras-pvt` command.

    keras-pvt predict [IMAGE ...] [--preset pvt_v2_b0] [--top 5] [--json]
        classify images (the bundled sample image if none is given).
    keras-pvt segment [IMAGE ...] [--preset segformer_b0_ade] --output DIR [--top 3] [--json]
        segment images: writes DIR/<stem>_mask.png (class ids; 8-bit, or 16-bit beyond 256
        classes) and DIR/<stem>_overlay.png (the image with a colour per class and a legend).
    keras-pvt depth [IMAGE ...] [--preset glpn_nyu] --output DIR [--json]
        estimate depth: writes DIR/<stem>_depth.png (colour-mapped, near is bright) and
        DIR/<stem>_depth.npy (float32 depth in metres at the image's size).
    keras-pvt explain [IMAGE] [--preset pvt_v2_b0] [--method rollout|gradcam] [--class ID]
        [--stage N] --output FILE.png
        what a classifier or segmenter looks at: the heat map over the image (attention
        rollout, or Grad-CAM on stage N, the last by default, for the predicted class or
        `--class`).
    keras-pvt convert SOURCE OUTPUT_DIR [--overwrite]
        convert a checkpoint (preset name, hf://owner/repo, directory or file) to a keras-hub
        preset; an existing non-empty OUTPUT_DIR is replaced only with --overwrite.
    keras-pvt presets [-v]
        list the built-in presets.

A preset is a name from `keras-pvt presets`, `hf://owner/repo` or a local path. Errors (an
unreadable image, an unknown preset, a preset without the command's head) print one line
starting `keras-pvt:` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

SAMPLE_IMAGE = "grace_hopper.jpg"


def sample_image_path() -> Path:
    return Path(str(resources.files("keras_pvt") / "assets" / SAMPLE_IMAGE))


class ImageError(Exception):
    """An image the command cannot read."""


def _load_image(path: Path):
    from keras_pvt.visualize import read_image

    try:
        return read_image(path)
    except ValueError as error:
        raise ImageError(str(error)) from error


def _check_images(paths) -> None:
    """Fails early (before a model is loaded) on paths that are not images."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if Path(path).is_dir():
            raise ImageError(f"cannot read image {path}: it is a directory; pass image files")
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ImageError(f"cannot read image {path}: {error}") from error


def cmd_predict(args) -> int:
    import keras

    from keras_pvt import hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.hub import PresetError

    images = args.images or [sample_image_path()]
    try:
        _check_images(images)
        # The family and task come from the preset name or the checkpoint itself.
        model = hub.task_class(args.preset, "classifier").from_preset(args.preset)
    except (ImageError, PresetError, CheckpointError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    results = []
    for path in images:
        try:
            pixels = _load_image(Path(path))
        except ImageError as error:
            print(f"keras-pvt: {error}", file=sys.stderr)
            return 2
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


# --- segment ---------------------------------------------------------------------------------

def _output_stems(paths) -> list[str]:
    """One stem per image, unique: a second `a.jpg` (in another folder) becomes `a_1`."""
    stems, used = [], set()
    for path in paths:
        stem = base = Path(path).stem or "image"
        n = 0
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def cmd_segment(args) -> int:
    from keras_pvt import hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.hub import PresetError

    images = args.images or [sample_image_path()]
    try:
        _check_images(images)
        _check_output(args.output)
        # The family comes from the preset name or the checkpoint itself.
        model = hub.task_class(args.preset, "segmenter").from_preset(args.preset)
    except (ImageError, NotADirectoryError, PresetError, CheckpointError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    if not _make_output(args.output):
        return 2
    from keras_pvt.visualize import class_colors, class_shares, mask_image, overlay_image

    colors = class_colors(model.num_classes)
    names = getattr(model, "class_names", None)
    results = []
    # One image at a time: a single input shape (no recompiling per batch size on JAX), and
    # one image in memory.
    for path, stem in zip(images, _output_stems(images)):
        try:
            pixels = _load_image(Path(path))
        except ImageError as error:
            print(f"keras-pvt: {error}", file=sys.stderr)
            return 2
        mask = model.segment(pixels)
        classes = class_shares(mask, names)
        mask_path = args.output / f"{stem}_mask.png"
        overlay_path = args.output / f"{stem}_overlay.png"
        try:
            mask_image(mask, model.num_classes).save(mask_path)
            overlay_image(pixels, mask, classes, colors).save(overlay_path)
        except OSError as error:
            print(f"keras-pvt: cannot write to {args.output}: {error}", file=sys.stderr)
            return 2
        results.append({"image": str(path), "mask": str(mask_path),
                        "overlay": str(overlay_path), "classes": classes})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        top = ", ".join(f"{item['label']} {item['fraction']:.1%}"
                        for item in result["classes"][:args.top])
        print(f"{result['image']} -> {result['mask']}, {result['overlay']}  [{top}]")
    return 0


def _check_output(output: Path) -> None:
    """`--output` must be a directory or not exist yet (checked before a model loads)."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} exists and is not a directory")


def _make_output(output: Path) -> bool:
    """Creates `--output` (after the model loaded: nothing is created for a refused preset);
    False, with a one-line message, if it cannot be."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"keras-pvt: cannot create --output {output}: {error}", file=sys.stderr)
        return False
    return True


def cmd_depth(args) -> int:
    import numpy as np

    from keras_pvt import hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.hub import PresetError

    images = args.images or [sample_image_path()]
    try:
        _check_images(images)
        _check_output(args.output)
        # The family comes from the preset name or the checkpoint itself.
        model = hub.task_class(args.preset, "depth_estimator").from_preset(args.preset)
    except (ImageError, NotADirectoryError, PresetError, CheckpointError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    if not _make_output(args.output):
        return 2
    from keras_pvt.visualize import depth_image

    results = []
    for path, stem in zip(images, _output_stems(images)):
        try:
            pixels = _load_image(Path(path))
            depth = model.predict_depth(pixels)
        except (ImageError, ValueError) as error:
            print(f"keras-pvt: {path}: {error}", file=sys.stderr)
            return 2
        picture_path = args.output / f"{stem}_depth.png"
        array_path = args.output / f"{stem}_depth.npy"
        try:
            depth_image(depth).save(picture_path)
            np.save(array_path, depth)
        except OSError as error:
            print(f"keras-pvt: cannot write to {args.output}: {error}", file=sys.stderr)
            return 2
        results.append({"image": str(path), "picture": str(picture_path),
                        "depth": str(array_path), "height": depth.shape[0],
                        "width": depth.shape[1], "min": float(depth.min()),
                        "median": float(np.median(depth)), "max": float(depth.max())})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']} -> {r['picture']}, {r['depth']}  [depth {r['min']:.2f} to "
              f"{r['max']:.2f} m, median {r['median']:.2f} m]")
    return 0


def cmd_explain(args) -> int:
    import numpy as np

    from keras_pvt import explain, hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.hub import PresetError

    image = args.image or sample_image_path()
    try:
        if args.method == "rollout" and (args.class_id, args.stage) != (None, None):
            raise ValueError("attention rollout follows every stage and no class; --class "
                             "and --stage go with --method gradcam")
        if args.output.is_dir():
            raise NotADirectoryError(f"--output {args.output} is a directory; give a .png file")
        _check_images([image])
        model = hub.task_class(args.preset, ("classifier", "segmenter")).from_preset(args.preset)
        pixels = _load_image(Path(image))
        stage = -1 if args.stage is None else args.stage
        heat = explain.explain(model, pixels, args.method, args.class_id, stage)[0]
    except (ImageError, NotADirectoryError, PresetError, CheckpointError, ValueError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        explain.save_overlay(args.output, pixels, heat)
    except OSError as error:
        print(f"keras-pvt: cannot write --output {args.output}: {error}", file=sys.stderr)
        return 2
    scores = np.asarray(model.predict(pixels[None], verbose=0))[0]
    if scores.ndim == 1:  # a classifier: which class was (or would be) explained
        class_id = int(scores.argmax()) if args.class_id is None else args.class_id
        names = getattr(model, "class_names", None)
        label = names[class_id] if names else f"class {class_id}"
        what = f"{label} [{class_id}]"
    else:
        what = "segmentation" if args.class_id is None else f"class {args.class_id}"
    print(f"{image} -> {args.output}  [{args.method}, {what}]")
    return 0


def cmd_convert(args) -> int:
    from keras_pvt import hub
    from keras_pvt.checkpoints import CheckpointError
    from keras_pvt.convert import convert_to_preset

    source = args.source
    output_dir = args.output_dir
    try:
        occupied = output_dir.exists() and (not output_dir.is_dir()
                                            or any(output_dir.iterdir()))
        if occupied and not args.overwrite:
            raise FileExistsError(f"{output_dir} exists and is not an empty directory; "
                                  "pass --overwrite to replace it, or another OUTPUT_DIR")
        if source in hub.all_presets():
            source = str(hub.download_checkpoint(hub.all_presets()[source][1].hf_repo, source))
        elif source.startswith("hf://"):
            repo_id, revision = hub.parse_hf_handle(source)
            source = str(hub.download_checkpoint(repo_id, source, revision))
        elif not Path(source).expanduser().exists():
            raise hub._unknown_preset(source)
        if occupied:  # convert beside it, then replace it: a failure leaves it as it was
            staging = output_dir.with_name(f".{output_dir.name}.converting")
            shutil.rmtree(staging, ignore_errors=True)
            convert_to_preset(source, staging)
            if output_dir.is_dir():
                shutil.rmtree(output_dir)
            else:
                output_dir.unlink()
            output = staging.rename(output_dir)
        else:
            output = convert_to_preset(source, output_dir)
    except (FileExistsError, hub.PresetError, CheckpointError) as error:
        print(f"keras-pvt: {error}", file=sys.stderr)
        return 2
    print(f"Wrote keras-hub preset to {output}")
    return 0


def cmd_presets(args) -> int:
    from keras_pvt import catalog  # imports no Keras: the list prints at once

    presets = catalog.presets()
    width = max(len(name) for name in presets)
    task_width = max(len(preset.task) for preset in presets.values())
    print(f"{'preset':{width}s}  {'task':{task_width}s}  {'params':>12s}  "
          f"{'cached' if args.verbose else 'source'}")
    for name, preset in presets.items():
        where = ("yes" if catalog.is_cached(name) else "no") if args.verbose else (
            f"hf://{preset.hf_repo}")
        print(f"{name:{width}s}  {preset.task:{task_width}s}  {preset.params:12,d}  {where}")
        if args.verbose:
            print(f"{'':{width}s}  {preset.description}")
            print(f"{'':{width}s}  source: hf://{preset.hf_repo}")
            print(f"{'':{width}s}  published: {preset.published}")
            print(f"{'':{width}s}  licence: {preset.license.describe()}")
    if args.verbose:
        print(f"\nConverted presets are cached in {catalog.cache_root()}")
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; received {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-pvt",
        description="Pyramid Vision Transformers for Keras 3: classify or segment images, "
        "estimate depth, explain predictions, convert checkpoints, list presets.",
    )
    parser.add_argument(
        "--backend", choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify images (a sample if none given)")
    predict.add_argument("images", nargs="*", type=Path, help="image files (default: a sample)")
    predict.add_argument("--preset", default="pvt_v2_b0",
                         help="classifier preset name, hf:// or path (default: %(default)s)")
    predict.add_argument("--top", type=_positive, default=5,
                         help="classes to show per image (default: %(default)s)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    segment = commands.add_parser(
        "segment", help="segment images into class masks and overlays (a sample if none given)",
        description="For each image, writes DIR/<stem>_mask.png (per-pixel class ids: 8-bit, "
        "or 16-bit beyond 256 classes) and DIR/<stem>_overlay.png (the image with a colour per "
        "class and a legend of the classes present); a repeated stem gets a suffix (_1, _2...). "
        "Prints the files and the largest classes of each image.",
    )
    segment.add_argument("images", nargs="*", type=Path, help="image files (default: a sample)")
    segment.add_argument("--preset", default="segformer_b0_ade",
                         help="segmenter preset name, hf:// or path (default: %(default)s)")
    segment.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                         help="directory for the masks and overlays (created if missing)")
    segment.add_argument("--top", type=_positive, default=3,
                         help="classes to show per image, by pixel share (default: %(default)s)")
    segment.add_argument("--json", action="store_true",
                         help="print JSON: image, mask, overlay and every class present")
    segment.set_defaults(func=cmd_segment)

    depth = commands.add_parser(
        "depth", help="estimate depth maps (a sample if none given)",
        description="For each image, writes DIR/<stem>_depth.png (the depth colour-mapped: "
        "near is bright, far is dark) and DIR/<stem>_depth.npy (float32 depth in metres at the "
        "image's size); a repeated stem gets a suffix (_1, _2...). Prints the files and each "
        "image's depth range.",
    )
    depth.add_argument("images", nargs="*", type=Path, help="image files (default: a sample)")
    depth.add_argument("--preset", default="glpn_nyu",
                       help="depth-estimator preset name, hf:// or path (default: %(default)s)")
    depth.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                       help="directory for the pictures and arrays (created if missing)")
    depth.add_argument("--json", action="store_true",
                       help="print JSON: image, files, size and depth range")
    depth.set_defaults(func=cmd_depth)

    explain_ = commands.add_parser(
        "explain", help="draw what a model looks at over an image (the sample if none given)",
        description="Writes FILE.png: the image with a heat map (jet: red is high) of attention "
        "rollout through the spatial-reduction attention, or Grad-CAM on the last stage for "
        "the predicted class or --class (for a segmenter, on that class's pixels).",
    )
    explain_.add_argument("image", nargs="?", type=Path, help="image file (default: a sample)")
    explain_.add_argument("--preset", default="pvt_v2_b0",
                          help="classifier or segmenter preset name, hf:// or path "
                          "(default: %(default)s)")
    explain_.add_argument("--method", choices=["rollout", "gradcam"], default="rollout",
                          help="explanation method (default: %(default)s)")
    explain_.add_argument("--class", dest="class_id", type=int, metavar="ID",
                          help="class id for Grad-CAM (default: the predicted class)")
    explain_.add_argument("--stage", type=int, metavar="N",
                          help="Grad-CAM on stage N (0-based; default: the last)")
    explain_.add_argument("--output", "-o", type=Path, required=True, metavar="FILE.png",
                          help="where to write the overlay (PNG)")
    explain_.set_defaults(func=cmd_explain)

    convert = commands.add_parser("convert", help="convert a checkpoint to a keras-hub preset")
    convert.add_argument("source", help="preset name, hf://owner/repo, directory or file")
    convert.add_argument("output_dir", type=Path)
    convert.add_argument("--overwrite", action="store_true",
                         help="replace OUTPUT_DIR if it exists and is not empty")
    convert.set_defaults(func=cmd_convert)

    presets = commands.add_parser("presets", help="list the built-in presets")
    presets.add_argument("-v", "--verbose", action="store_true")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != args.backend:
            # Only when main() is called from a process that already imported Keras.
            raise SystemExit(f"keras-pvt: --backend {args.backend} cannot apply: this process "
                             f"already imported Keras with the {os.environ.get('KERAS_BACKEND')}"
                             " backend; run the keras-pvt command instead.")
        os.environ["KERAS_BACKEND"] = args.backend
    if args.func is cmd_presets:  # (imports no Keras)
        return args.func(args)
    _quiet_startup()
    from keras_pvt import hub

    hub.CALLER = "cli"  # messages name --preset, not from_preset()
    try:
        return args.func(args)
    finally:
        hub.CALLER = "python"


# Start-up notices that TensorFlow's and XLA's C++ logging writes to the process's stderr
# while `tensorflow` is imported (absl's "I0000 12:00:00.000 ..." lines, oneDNN, CUDA drivers,
# cuInit, CPU features), whatever TF_CPP_MIN_LOG_LEVEL says.
_STARTUP_NOISE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|To enable the "
    r"following instructions|.*(cuInit|cuda drivers|CUDA-capable|TensorRT))")


def _quiet_startup() -> None:
    """Imports TensorFlow (keras-hub imports it on every backend) with the process's stderr
    captured, and passes on only what is not a start-up notice (all of it if the import
    fails). Runs before Keras is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow  # noqa: F401
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if failed or not _STARTUP_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
