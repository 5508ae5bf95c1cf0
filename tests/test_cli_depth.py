"""`keras-pvt depth`: colour-mapped depth pictures and raw depth arrays through the installed
script, and its errors.

One tiny random GLPN checkpoint serves the whole module; the script runs in subprocesses,
and the error cases that need no model are also checked in this process through `main()`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_pvt.cli import main, sample_image_path
from keras_pvt.visualize import colormap, depth_image
from tests.helpers.hub_cache import offline_env, place_in_hf_cache, run
from tests.helpers.reference import hf_glpn

SCRIPT = Path(sys.executable).parent / "keras-pvt"


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from transformers import GLPNImageProcessorPil

    directory = tmp_path_factory.mktemp("glpn") / "tiny_glpn"
    hf_glpn("tiny", max_depth=10).save_pretrained(directory)
    GLPNImageProcessorPil().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def estimator(checkpoint):
    import keras_pvt

    return keras_pvt.GLPNDepthEstimator.from_preset(str(checkpoint))


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def _env(hf_cache: Path, keras_home: Path, jax_cache: Path) -> dict:
    env = offline_env(hf_cache, keras_home)
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _check(item: dict, image: np.ndarray, expected: np.ndarray) -> None:
    depth = np.load(item["depth"])
    assert depth.dtype == np.float32 and depth.shape == image.shape[:2]
    np.testing.assert_allclose(depth, expected, rtol=1e-4, atol=1e-4)
    assert (item["height"], item["width"]) == image.shape[:2]
    assert item["min"] == pytest.approx(float(depth.min()), rel=1e-5)
    assert item["max"] == pytest.approx(float(depth.max()), rel=1e-5)
    with Image.open(item["picture"]) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        assert picture.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(depth_image(depth)))


def test_depth_of_the_sample_image(estimator, checkpoint, jax_cache, tmp_path):
    output = tmp_path / "new" / "dir"
    result = run([str(SCRIPT), "depth", "--preset", str(checkpoint), "-o", str(output)],
                 _env(tmp_path / "hf", tmp_path / "keras", jax_cache))
    picture, array = output / "grace_hopper_depth.png", output / "grace_hopper_depth.npy"
    line = next(x for x in result.stdout.splitlines() if "grace_hopper.jpg" in x)
    assert str(picture) in line and str(array) in line and " m, median " in line
    image = _rgb(sample_image_path())
    expected = estimator.predict_depth(image)
    _check({"depth": str(array), "picture": str(picture), "height": image.shape[0],
            "width": image.shape[1], "min": float(expected.min()),
            "max": float(expected.max())}, image, expected)


def test_depth_with_the_named_preset_offline_as_json(estimator, checkpoint, jax_cache,
                                                     tmp_path):
    """The default preset, `glpn_nyu`, from a Hugging Face cache holding the tiny checkpoint;
    two images of different sizes with the same file name."""
    hf_cache = tmp_path / "hf"
    place_in_hf_cache(hf_cache, "vinvino02/glpn-nyu", checkpoint)
    paths = [tmp_path / "a" / "room.png", tmp_path / "b" / "room.png"]
    with Image.open(sample_image_path()) as sample:
        for path, size in zip(paths, [(70, 50), (40, 64)]):
            path.parent.mkdir()
            sample.convert("RGB").resize(size).save(path)
    result = run([str(SCRIPT), "depth", *map(str, paths), "--output", str(tmp_path / "out"),
                  "--json"], _env(hf_cache, tmp_path / "keras", jax_cache))
    items = json.loads(result.stdout)
    assert [Path(item["depth"]).name for item in items] == ["room_depth.npy",
                                                            "room_1_depth.npy"]
    for item, path in zip(items, paths):
        image = _rgb(path)
        _check(item, image, estimator.predict_depth(image))
    assert "GLPDepth terms" in result.stderr  # the licence, named on first use


@pytest.mark.parametrize("argv, message", [
    (["depth", "{tmp}/notes.jpg", "--preset", "{checkpoint}"], "cannot read image"),
    (["depth", "--preset", "no_such_preset"], "Unknown preset 'no_such_preset'"),
    (["depth", "--preset", "segformer_b0_ade"],
     "segformer_b0_ade: is a segmenter preset, not a depth estimator with its head. "
     "Depth estimator presets: glpn_kitti, glpn_nyu."),
    (["segment", "--preset", "glpn_nyu"], "glpn_nyu: is a depth estimator preset"),
    (["segment", "--preset", "{checkpoint}"], "is a depth estimator checkpoint"),
    (["depth", "{small}", "--preset", "{checkpoint}"], "smaller than 32 pixels"),
])
def test_errors_are_one_line_with_status_2(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("RGB", (20, 40)).save(tmp_path / "small.png")
    argv = [a.format(tmp=tmp_path, checkpoint=checkpoint, small=tmp_path / "small.png")
            for a in argv] + ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-pvt: ") and "\n" not in err and message in err
    # Nothing is created before the model has loaded.
    assert (tmp_path / "out").exists() == (message == "smaller than 32 pixels")


def test_output_must_be_a_directory(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["depth", "--preset", str(checkpoint), "--output", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_colour_map_is_magma():
    """The colour map matches matplotlib's magma (which the CLI does not depend on) to within
    the interpolation between its 17 samples; near is bright."""
    import matplotlib

    values = np.linspace(0, 1, 257)
    want = np.round(matplotlib.colormaps["magma"](values)[:, :3] * 255)
    assert np.abs(colormap(values).astype(int) - want).max() <= 6
    picture = np.asarray(depth_image(np.array([[1.0, 5.0, 9.0]])))
    brightness = picture.sum(axis=-1)[0]
    assert brightness[0] > brightness[1] > brightness[2]
