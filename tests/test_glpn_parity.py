"""GLPN parity: Keras depth equals transformers' `GLPNForDepthEstimation` run in the same
test, on checkpoints taken through the path real ones use (`save_pretrained`, then
`from_preset(path)`)."""

import json
import textwrap

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from tests.helpers.reference import hf_glpn, hf_segformer, images, to_torch


def relative_delta(got, want) -> float:
    got, want = np.asarray(got, dtype="float64"), np.asarray(want, dtype="float64")
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def processor():
    from transformers import GLPNImageProcessorPil  # (no torchvision here)

    return GLPNImageProcessorPil()


def raw_images(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth uint8 photographs stand-ins (noise blurred, so that resizing is meaningful)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noise = Image.fromarray(rng.integers(0, 256, (height, width, 3)).astype("uint8"))
        out.append(np.asarray(noise.filter(ImageFilter.GaussianBlur(2))))
    return out


@pytest.fixture(scope="module")
def glpn_b0(tmp_path_factory):
    reference = hf_glpn("b0", max_depth=10)
    path = tmp_path_factory.mktemp("glpn_b0")
    reference.save_pretrained(path)
    processor().save_pretrained(path)
    return reference, keras_pvt.GLPNDepthEstimator.from_preset(str(path)), path


def test_depth_parity(glpn_b0, record_delta):
    """480x640, and a batch of two images at the size the processor gives an odd 333x517
    image (320x512)."""
    reference, model, _ = glpn_b0
    assert isinstance(model, keras_pvt.PVTv2GLPNDepthEstimator)
    assert model.max_depth == 10 and model.decoder_hidden_size == 64
    pixel_values = processor()(raw_images(2, 333, 517), return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (2, 3, 320, 512)
    cases = {"1x480x640": images(1, 480, 640, seed=1) * 0.25 + 0.5,
             "2x320x512 (333x517 processed)": pixel_values.transpose(0, 2, 3, 1)}
    for name, x in cases.items():
        with torch.no_grad():
            want = reference(to_torch(x)).predicted_depth.numpy()
        got = keras.ops.convert_to_numpy(model(x))
        assert got.shape == (*want.shape, 1)
        delta = relative_delta(got[..., 0], want)
        record_delta(f"GLPN b0 {name} predicted_depth (relative)", delta)
        assert delta < 1e-4, name


def test_preprocessing_and_predict_depth_match_transformers(glpn_b0, record_delta):
    """The preprocessor equals `GLPNImageProcessor` (up to its uint8 rounding of the resized
    image), and `predict_depth` equals `post_process_depth_estimation` (bicubic, to the
    image's size), images of different sizes in one call."""
    reference, model, _ = glpn_b0
    raw = raw_images(1, 99, 141, seed=2) + raw_images(1, 64, 96, seed=3)
    pil = processor()
    for image in raw:
        want = pil(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = keras.ops.convert_to_numpy(model.preprocessor(image[None].astype("float32")))[0]
        assert got.shape == want.shape == (image.shape[0] // 32 * 32, image.shape[1] // 32 * 32, 3)
        assert np.abs(got - want).max() < 1.01 / 255  # PIL rounds the resized pixels to uint8

    depths = model.predict_depth(raw)
    for image, depth in zip(raw, depths):
        x = keras.ops.convert_to_numpy(model.preprocessor(image[None].astype("float32")))
        with torch.no_grad():
            outputs = reference(to_torch(np.asarray(x)))
        want = pil.post_process_depth_estimation(
            outputs, target_sizes=[image.shape[:2]])[0]["predicted_depth"].numpy()
        assert depth.shape == want.shape == image.shape[:2] and depth.dtype == np.float32
        delta = relative_delta(depth, want)
        record_delta(f"GLPN b0 predict_depth {image.shape[0]}x{image.shape[1]} (relative)", delta)
        assert delta < 1e-4


def test_a_glpn_checkpoint_is_refused_as_another_task(glpn_b0):
    _, _, path = glpn_b0
    with pytest.raises(keras_pvt.PresetError,
                       match=r"holds a PVTv2GLPNDepthEstimator, not a SegFormerSegmenter"):
        keras_pvt.SegFormerSegmenter.from_preset(str(path))
    with pytest.raises(keras_pvt.PresetError,
                       match=r"holds a PVTv2GLPNDepthEstimator, not a PVTv2Classifier"):
        keras_pvt.PVTv2Classifier.from_preset(str(path))
    # Its encoder is an ordinary PVT v2 backbone.
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(path))
    assert backbone.hidden_sizes == [32, 64, 160, 256]


def test_a_new_depth_head_on_a_segformer_encoder(tmp_path):
    """A SegFormer checkpoint (no depth head) gives a depth estimator with a new head on its
    encoder: the usual way to fine-tune GLPN from the MiT ImageNet weights."""
    hf_segformer("tiny", "segmentation", num_labels=4).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="puts a new, untrained head on its backbone"):
        model = keras_pvt.GLPNDepthEstimator.from_preset(str(tmp_path), decoder_hidden_size=16)
    assert isinstance(model, keras_pvt.PVTv2GLPNDepthEstimator)
    assert keras.ops.convert_to_numpy(model(images(1, 64, 64))).shape == (1, 64, 64, 1)


NAMED = """
import sys, numpy as np, keras, keras_pvt
x = np.load(sys.argv[1])
first = keras_pvt.GLPNDepthEstimator.from_preset("glpn_nyu")
again = keras_pvt.GLPNDepthEstimator.from_preset("glpn_nyu")  # the converted cache
np.save(sys.argv[2], keras.ops.convert_to_numpy(again(x)))
print(type(first).__name__, first.max_depth, first.preprocessor.image_converter.size_divisor)
"""


def test_named_preset_offline_with_its_licence(tmp_path, record_delta):
    """`glpn_nyu` from a temporary offline HF cache; its licence terms (non-commercial) are
    named once, and recorded in the cache's manifest. README's and the docstring's examples
    run on it."""
    import sys

    from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run

    hf_cache = tmp_path / "hf"
    reference = hf_glpn("tiny", max_depth=10)
    reference.save_pretrained(tmp_path / "nyu")
    processor().save_pretrained(tmp_path / "nyu")
    place_in_hf_cache(hf_cache, "vinvino02/glpn-nyu", tmp_path / "nyu")
    x = images(1, 64, 96) * 0.25 + 0.5
    np.save(tmp_path / "x.npy", x)
    # One process (imports and compilation dominate): the preset twice, then
    # GLPNDepthEstimator's docstring example, then README's depth example as written.
    example = keras_pvt.GLPNDepthEstimator.__doc__.split("```python\n", 1)[1].split("```")[0]
    docstring = ("image = np.zeros((50, 70, 3), 'uint8')\n" + textwrap.dedent(example)
                 + "print('docstring', depth.shape)\n")
    readme = (REPO_ROOT / "README.md").read_text().split("## Depth", 1)[1]
    readme = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = run([sys.executable, "-c", NAMED + docstring + readme, str(tmp_path / "x.npy"),
                  str(tmp_path / "depth.npy")], offline_env(hf_cache, tmp_path / "keras"))
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["PVTv2GLPNDepthEstimator", "10.0", "32"], result.stdout
    assert lines[1] == "docstring (50, 70)", result.stdout
    assert lines[2:4] == ["(300, 256) float32", "(1, 288, 256, 1)"], result.stdout
    assert "abs_rel" in result.stdout and "delta_1.25" in result.stdout, result.stdout
    assert result.stderr.count("GLPDepth terms") == 1 and "non-commercial" in result.stderr
    manifest = json.loads((tmp_path / "keras" / "keras_pvt" / "glpn_nyu" /
                           "keras_pvt_manifest.json").read_text())
    assert manifest["license"].startswith("GLPDepth terms")
    with torch.no_grad():
        want = reference(to_torch(x)).predicted_depth.numpy()
    delta = relative_delta(np.load(tmp_path / "depth.npy")[..., 0], want)
    record_delta("named preset glpn_nyu (offline HF cache) depth (relative)", delta)
    assert delta < 1e-4


def test_presets_list_the_depth_estimators():
    presets = keras_pvt.GLPNDepthEstimator.presets
    assert set(presets) == {"glpn_kitti", "glpn_nyu"}
    assert presets["glpn_kitti"]["hf_repo"] == "vinvino02/glpn-kitti"
    assert presets["glpn_nyu"]["task"] == "depth_estimator"
    assert "glpn_nyu" not in keras_pvt.SegFormerSegmenter.presets
    assert "glpn_nyu" in keras_pvt.PVTv2Backbone.presets  # its encoder


def test_parameter_count_of_the_published_configuration():
    """The presets' parameter count is the Keras model's, built from the checkpoints'
    configuration (MiT-b4 encoder, 64-channel decoder) without weights."""
    backbone = keras_pvt.PVTv2Backbone(
        hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], num_heads=[1, 2, 5, 8],
        mlp_ratios=4)
    model = keras_pvt.GLPNDepthEstimator(backbone=backbone, decoder_hidden_size=64,
                                         max_depth=80)
    batch_norm_statistics = sum(
        int(np.prod(v.shape)) for v in model.non_trainable_weights if "moving" in v.path)
    # transformers counts parameters without BatchNorm statistics.
    assert model.count_params() - batch_norm_statistics == (
        keras_pvt.GLPNDepthEstimator.presets["glpn_nyu"]["params"])
