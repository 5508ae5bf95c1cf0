"""`keras-pvt segment`: masks and overlays through the installed script, and its errors.

One tiny random SegFormer checkpoint serves the whole module; every run of the script is a
subprocess (seconds each, mostly imports), so the error cases that need no model to be built
are also checked in this process through `main()`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keras_pvt.cli import main, sample_image_path
from keras_pvt.visualize import class_colors, class_shares, mask_image, overlay_image
from tests.helpers.hub_cache import offline_env, place_in_hf_cache, run
from tests.helpers.reference import hf_segformer

SCRIPT = Path(sys.executable).parent / "keras-pvt"
NUM_LABELS = 5
ADE_B0_REPO = "nvidia/segformer-b0-finetuned-ade-512-512"


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny transformers SegFormer whose masks hold several classes: random weights
    predict one class everywhere, so the decoder's BatchNorm takes the statistics of the
    sample image's features and the classifier is sharpened."""
    model = hf_segformer("tiny", "segmentation", num_labels=NUM_LABELS)
    pixels = torch.from_numpy(_rgb(sample_image_path()).copy()).permute(2, 0, 1)[None].float()
    pixels = (torch.nn.functional.interpolate(pixels, size=(128, 128)) / 255 - 0.45) / 0.225
    model.decode_head.batch_norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(pixels)
        model.decode_head.classifier.weight.mul_(5)
    model.eval()
    directory = tmp_path_factory.mktemp("segformer") / "tiny_segformer"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    import keras_pvt

    return keras_pvt.SegFormerSegmenter.from_preset(str(checkpoint))


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def _env(hf_cache: Path, keras_home: Path, jax_cache: Path) -> dict:
    """An offline environment; on JAX the runs share compiled ops (a run compiles hundreds
    of small eager ops, most of its time on CPU)."""
    env = offline_env(hf_cache, keras_home)
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


@pytest.fixture
def env(tmp_path, jax_cache) -> dict:
    return _env(tmp_path / "hf", tmp_path / "keras", jax_cache)


def _check_outputs(item: dict, image: np.ndarray, expected_mask: np.ndarray) -> None:
    with Image.open(item["mask"]) as mask_png:
        assert mask_png.mode == "L"
        mask = np.asarray(mask_png)
    assert mask.shape == image.shape[:2]
    assert mask.max() < NUM_LABELS
    np.testing.assert_array_equal(mask, expected_mask)
    with Image.open(item["overlay"]) as overlay:
        assert overlay.mode == "RGB"
        assert overlay.size == (image.shape[1], image.shape[0])
    ids, counts = np.unique(expected_mask, return_counts=True)
    classes = item["classes"]
    assert sorted(c["index"] for c in classes) == ids.tolist()
    assert all(c["label"] == f"label_{c['index']}" for c in classes)
    fractions = [c["fraction"] for c in classes]
    assert fractions == sorted(fractions, reverse=True)
    assert sum(fractions) == pytest.approx(1.0)
    share = dict(zip(ids.tolist(), (counts / expected_mask.size).tolist()))
    assert all(c["fraction"] == pytest.approx(share[c["index"]]) for c in classes)


def test_segment_the_sample_image(checkpoint, segmenter, env, tmp_path):
    output = tmp_path / "not" / "yet" / "there"
    result = run([str(SCRIPT), "segment", "--preset", str(checkpoint), "-o", str(output),
                  "--top", "2"], env)
    mask_path, overlay_path = output / "grace_hopper_mask.png", output / "grace_hopper_overlay.png"
    lines = result.stdout.strip().splitlines()
    line = next(line for line in lines if "grace_hopper.jpg" in line)
    assert str(mask_path) in line and str(overlay_path) in line
    top = line.rsplit("[", 1)[1].rstrip("]").split(", ")  # `--top 2`: the two largest shares
    assert len(top) == 2 and all(item.startswith("label_") for item in top)
    image = _rgb(sample_image_path())
    expected = segmenter.segment(image)
    assert len(np.unique(expected)) > 1  # the legend has several rows
    with Image.open(mask_path) as mask_png:
        assert mask_png.mode == "L"
        np.testing.assert_array_equal(np.asarray(mask_png), expected)
    with Image.open(overlay_path) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (image.shape[1], image.shape[0])


def test_segment_images_of_different_sizes_with_the_same_name(checkpoint, segmenter, env,
                                                              tmp_path):
    paths = [tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"]
    with Image.open(sample_image_path()) as sample:
        for path, size in zip(paths, [(40, 48), (64, 30)]):
            path.parent.mkdir()
            sample.convert("RGB").resize(size).save(path)
    output = tmp_path / "out"
    result = run([str(SCRIPT), "segment", *map(str, paths), "--preset", str(checkpoint),
                  "--output", str(output), "--json"], env)
    items = json.loads(result.stdout)
    assert [item["image"] for item in items] == [str(p) for p in paths]
    assert [Path(item["mask"]).name for item in items] == ["photo_mask.png", "photo_1_mask.png"]
    assert [Path(item["overlay"]).name for item in items] == \
        ["photo_overlay.png", "photo_1_overlay.png"]
    images = [_rgb(path) for path in paths]
    expected = [segmenter.segment(image) for image in images]
    for item, image, mask in zip(items, images, expected):
        _check_outputs(item, image, mask)


def test_segment_with_the_named_preset_offline(checkpoint, segmenter, jax_cache, tmp_path):
    """The default preset, `segformer_b0_ade`, from a Hugging Face cache holding a tiny
    checkpoint under its repository id."""
    hf_cache = tmp_path / "hf"
    place_in_hf_cache(hf_cache, ADE_B0_REPO, checkpoint)
    env = _env(hf_cache, tmp_path / "keras", jax_cache)
    image_path = tmp_path / "small.png"
    with Image.open(sample_image_path()) as sample:
        sample.convert("RGB").resize((36, 44)).save(image_path)
    result = run([str(SCRIPT), "segment", str(image_path), "--output", str(tmp_path / "out"),
                  "--json"], env)
    [item] = json.loads(result.stdout)
    image = _rgb(image_path)
    _check_outputs(item, image, segmenter.segment(image))


def _error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-pvt:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_segment_refuses_a_classifier_preset_through_the_script(env, tmp_path):
    result = run([str(SCRIPT), "segment", "--preset", "pvt_v2_b0", "--output",
                  str(tmp_path / "out")], env, check=False)
    assert "not a segmenter" in _error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["segment", "{tmp}/notes.jpg", "--preset", "{checkpoint}"], "cannot read image"),
    (["segment", "{tmp}", "--preset", "{checkpoint}"], "cannot read image"),
    (["segment", "{tmp}/missing.png", "--preset", "{checkpoint}"], "cannot read image"),
    (["segment", "--preset", "no_such_preset"], "Unknown preset 'no_such_preset'"),
    (["segment", "--preset", "pvt_v2_b0"], "pvt_v2_b0: is a classifier preset"),
    (["segment", "--preset", "mit_b0"], "not a segmenter"),
    (["predict", "--preset", "segformer_b0_ade"], "segformer_b0_ade: is a segmenter preset"),
    (["predict", "--preset", "{checkpoint}"], "is a segmenter checkpoint"),
])
def test_errors_are_one_line_with_status_2(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    argv = [a.format(tmp=tmp_path, checkpoint=checkpoint) for a in argv]
    if argv[0] == "segment":
        argv += ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-pvt: ") and "\n" not in err and message in err


def test_output_must_be_a_directory(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["segment", "--preset", str(checkpoint), "--output",
                 str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_masks_overlays_and_legends(tmp_path):
    """16-bit masks beyond 256 classes, `class_<id>` without class names, distinct colours."""
    mask = np.array([[0, 300, 300], [299, 300, 1]], dtype=np.int32)
    assert mask_image(mask, 256 + 50).mode == "I;16"
    mask_image(mask, 256 + 50).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as saved:
        np.testing.assert_array_equal(np.asarray(saved), mask)
    assert mask_image(mask % 256, 256).mode == "L"
    classes = class_shares(mask, None)
    assert [(c["index"], c["label"]) for c in classes][:2] == [(300, "class_300"), (0, "class_0")]
    colors = class_colors(301)
    assert len({tuple(c) for c in colors.tolist()}) == 301 and colors.any(axis=1).all()
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    overlay = overlay_image(pixels, mask, classes, colors)
    assert overlay.mode == "RGB" and overlay.size == (3, 2)
