"""`keras-pvt explain`: heat-map overlays through the installed script, for classifiers of
every family and a segmenter, and its errors.

The script runs in a subprocess on a tiny random checkpoint; the other families, the
segmenter and the error cases go through `main()` in this process (the default preset, from
an offline Hugging Face cache, in tests/test_explain.py with README's example).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_pvt import explain
from keras_pvt.cli import main, sample_image_path
from tests.helpers.hub_cache import offline_env, run
from tests.helpers.reference import hf_pvt_v2, hf_segformer
from tests.helpers.reference_cvt import hf_cvt
from tests.helpers.reference_pvt import hf_pvt

SCRIPT = Path(sys.executable).parent / "keras-pvt"


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _save(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("explain")
    return {
        "pvt_v2": _save(hf_pvt_v2("tiny", num_labels=5), root / "pvt_v2"),
        "pvt": _save(hf_pvt("small", num_labels=5), root / "pvt"),
        "cvt": _save(hf_cvt("small", num_labels=5), root / "cvt"),
        "segformer": _save(hf_segformer("tiny", num_labels=4), root / "segformer"),
    }


def _model(checkpoint: Path):
    from keras_pvt import hub

    return hub.task_class(str(checkpoint), ("classifier", "segmenter")).from_preset(
        str(checkpoint))


def _assert_overlay(path: Path, image: np.ndarray, heat: np.ndarray) -> None:
    """The written PNG is the overlay of the in-process explanation (within rounding)."""
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (image.shape[1], image.shape[0])
        written = np.asarray(picture.convert("RGB")).astype(int)
    assert np.abs(written - explain.overlay(image, heat).astype(int)).max() <= 2


def test_grad_cam_for_a_class_through_the_script(checkpoints, tmp_path):
    path = tmp_path / "photo.png"
    Image.open(sample_image_path()).convert("RGB").resize((90, 70)).save(path)
    output = tmp_path / "cam.png"
    result = run([str(SCRIPT), "explain", str(path), "--preset", str(checkpoints["cvt"]),
                  "--method", "gradcam", "--class", "3", "--output", str(output)],
                 offline_env(tmp_path / "hf", tmp_path / "keras"))
    assert result.stdout.strip() == f"{path} -> {output}  [gradcam, label_3 [3]]"
    image = _rgb(path)
    _assert_overlay(output, image, explain.grad_cam(_model(checkpoints["cvt"]), image, 3)[0])


@pytest.mark.parametrize("family, method, extra", [
    ("pvt", "gradcam", []),
    ("pvt", "rollout", []),
    ("segformer", "gradcam", ["--class", "2", "--stage", "1"]),
    ("segformer", "rollout", []),
])
def test_families_and_segmenters(family, method, extra, checkpoints, tmp_path, capsys):
    output = tmp_path / f"{family}.png"
    assert main(["explain", "--preset", str(checkpoints[family]), "--method", method,
                 *extra, "--output", str(output)]) == 0
    image = _rgb(sample_image_path())
    model = _model(checkpoints[family])
    class_id = int(extra[1]) if extra else None
    stage = int(extra[3]) if len(extra) > 2 else -1
    heat = explain.explain(model, image, method, class_id, stage)[0]
    _assert_overlay(output, image, heat)
    assert f"-> {output}  [{method}, " in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/notes.jpg", "--preset", "{pvt_v2}"], "cannot read image"),
    (["--preset", "no_such_preset"], "Unknown preset 'no_such_preset'"),
    (["--preset", "glpn_nyu"],
     "glpn_nyu: is a depth estimator preset, not a classifier or segmenter with its head. "
     "Classifier or segmenter presets: cvt_13,"),
    (["--preset", "{pvt_v2}", "--class", "1"], "--class and --stage go with --method gradcam"),
    (["--preset", "{pvt_v2}", "--stage", "1"], "--class and --stage go with --method gradcam"),
    (["--preset", "{pvt_v2}", "--method", "gradcam", "--stage", "4"],
     "stage 4 is out of range: PVTv2Backbone has 4 stages (0 to 3)."),
    (["--preset", "{pvt_v2}", "--method", "gradcam", "--class", "5"],
     "class_id 5 is out of range: PVTv2Classifier has 5 classes (ids 0 to 4)."),
    (["--preset", "{pvt_v2}", "-o", "{tmp}"], "is a directory; give a .png file"),
])
def test_errors_are_one_line_with_status_2(argv, message, checkpoints, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    argv = [a.format(tmp=tmp_path, pvt_v2=checkpoints["pvt_v2"]) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out.png")]
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-pvt: ") and "\n" not in err and message in err
    assert not (tmp_path / "out.png").exists()


def test_bad_method_exits_2_through_the_script(tmp_path):
    result = run([str(SCRIPT), "explain", "--method", "saliency", "-o", str(tmp_path / "x.png")],
                 offline_env(tmp_path / "hf", tmp_path / "keras"), check=False)
    assert result.returncode == 2
    assert "invalid choice: 'saliency'" in result.stderr and "Traceback" not in result.stderr
