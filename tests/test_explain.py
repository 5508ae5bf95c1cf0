"""Attention maps against transformers' `attentions`, attention rollout against a dense
reference computation, Grad-CAM, overlays and their errors."""

import sys
import textwrap

import keras
import numpy as np
import pytest
import torch
from PIL import Image

import keras_pvt
from keras_pvt import explain
from tests.helpers.reference import hf_pvt_v2, images, to_torch
from tests.helpers.reference_cvt import hf_cvt
from tests.helpers.reference_pvt import hf_pvt, original_position_interpolation

# 224x224 and an odd, non-square size (stage grids 25x33, 13x17, 7x9, 4x5 on PVT v2).
SIZES = [(224, 224), (97, 131)]


def _cvt_attentions(reference, pixels):
    """CvT's attention probabilities: transformers does not return them, so they are read
    where each `CvtSelfAttention` hands them to its attention dropout."""
    from transformers.models.cvt.modeling_cvt import CvtSelfAttention

    seen = []
    hooks = [module.dropout.register_forward_hook(lambda m, args, out: seen.append(args[0]))
             for module in reference.modules() if isinstance(module, CvtSelfAttention)]
    try:
        reference(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _flat(attentions) -> list:
    """transformers' PVT v2 nests its attentions per stage; PVT v1 lists them per block."""
    if isinstance(attentions[0], tuple):
        return [a for stage in attentions for a in stage]
    return list(attentions)


FAMILIES = {
    # b0's SRA structure (ratios 8, 4, 2, 1) with few channels.
    "pvt_v2_sra": (lambda: hf_pvt_v2("tiny", num_labels=None), keras_pvt.PVTv2Backbone),
    "pvt_v2_linear": (lambda: hf_pvt_v2("b2_linear_small", num_labels=None),
                      keras_pvt.PVTv2Backbone),
    "pvt_v1_cls": (lambda: hf_pvt("small", num_labels=None), keras_pvt.PVTBackbone),
    "cvt_cls": (lambda: hf_cvt("small", num_labels=None), keras_pvt.CvTBackbone),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_maps_match_transformers(family, tmp_path, record_delta):
    make_reference, backbone_cls = FAMILIES[family]
    reference = make_reference()
    reference.save_pretrained(tmp_path)
    backbone = backbone_cls.from_preset(str(tmp_path))
    for height, width in SIZES:
        x = images(1, height, width, seed=height)
        with torch.no_grad(), original_position_interpolation():
            if family.startswith("cvt"):
                expected = _cvt_attentions(reference, to_torch(x))
            else:
                expected = _flat(reference(to_torch(x), output_attentions=True).attentions)
        maps = backbone.attention_maps(x)
        assert len(maps) == len(expected) == len(backbone.attention_blocks())
        delta = max(float(np.abs(m - e.numpy()).max()) for m, e in zip(maps, expected))
        record_delta(f"attention maps {family} {height}x{width}", delta)
        assert delta <= 1e-5
        assert max(float(np.abs(m.sum(-1) - 1).max()) for m in maps) <= 1e-5
        if height == 224 and family.endswith("_cls"):  # the class token joins the last map
            tokens = {"pvt_v1_cls": 7 * 7, "cvt_cls": 14 * 14}[family]
            assert maps[-1].shape[2:] == (1 + tokens, 1 + (tokens if family == "pvt_v1_cls"
                                                          else 7 * 7))


def test_attention_maps_batches_and_normal_pass_unchanged():
    backbone = keras_pvt.PVTv2Backbone(hidden_sizes=8, depths=(1, 1, 1, 1),
                                       num_heads=(1, 1, 1, 1))
    x = images(3, 64, 64)
    whole = backbone.attention_maps(x)
    pieces = backbone.attention_maps(x, batch_size=2)
    # 16x16, 8x8, 4x4, 2x2 query grids; keys reduced by 8, 4, 2, 1 to 2x2 each.
    assert [m.shape for m in whole] == [(3, 1, 256, 4), (3, 1, 64, 4), (3, 1, 16, 4),
                                        (3, 1, 4, 4)]
    for a, b in zip(whole, pieces):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The model itself still has one output and no attention in its graph.
    assert len(backbone.outputs) == 1
    assert not any("attention" in layer.name for layer in backbone.layers)


# === Rollout against a dense reference computation ===


def _dense_window(size, kernel, stride, padding, out, per_input=False):
    """(out, size): each output position spread evenly over its window, or (`per_input`)
    each input averaging the windows that cover it (plain loops)."""
    matrix = np.zeros((out, size))
    for i in range(out):
        for j in range(i * stride - padding, i * stride - padding + kernel):
            if 0 <= j < size:
                matrix[i, j] = 1
    if per_input:
        return matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1)
    return matrix / matrix.sum(axis=1, keepdims=True)


def _dense_bins(size, bins):
    """(bins, size): torch's adaptive-pooling bins, each averaging (plain loops)."""
    matrix = np.zeros((bins, size))
    for i in range(bins):
        start, end = (i * size) // bins, -(-((i + 1) * size) // bins)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def _dense_rollout(backbone, x):
    """Abnar & Zuidema's rollout with every matrix spelled out: per block
    `0.5 * A U + 0.5 I` (U spreads each key over its cells), per patch embedding the
    token-to-input-cell matrix (each cell the mean of the tokens covering it), multiplied
    from the last block back to the pixels."""
    maps = backbone.attention_maps(x)
    height, width = x.shape[1:3]
    grids, h, w = [], height, width
    for stage in range(len(backbone.depths)):
        k, s = backbone.patch_sizes[stage], backbone.strides[stage]
        p = k // 2
        out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        grids.append(((h, w), (out_h, out_w), (k, s, p)))
        h, w = out_h, out_w
    product = None
    index = len(maps)
    for stage in reversed(range(len(backbone.depths))):
        (in_h, in_w), (h, w), (k, s, p) = grids[stage]
        for _ in range(backbone.depths[stage]):
            index -= 1
            attention = maps[index][0].mean(axis=0)  # (queries, keys)
            r = backbone.sr_ratios[stage]
            if backbone.linear_attention:  # keys: the 7x7 pooled grid
                spread = np.kron(_dense_bins(h, 7), _dense_bins(w, 7))
            else:
                spread = np.kron(_dense_window(h, r, r, 0, h // r),
                                 _dense_window(w, r, r, 0, w // r))
            full = 0.5 * attention @ spread + 0.5 * np.eye(h * w)
            product = full if product is None else product @ full
        embed = np.kron(_dense_window(in_h, k, s, p, h, True),
                        _dense_window(in_w, k, s, p, w, True))
        product = product @ embed
    flow = product.mean(axis=0).reshape(height, width)
    return flow / flow.max()


@pytest.mark.parametrize("linear", [False, True])
def test_rollout_equals_dense_reference(linear):
    backbone = keras_pvt.PVTv2Backbone(hidden_sizes=8, depths=(2, 1, 1, 1),
                                       num_heads=(1, 2, 1, 2), sr_ratios=(4, 2, 2, 1),
                                       linear_attention=linear)
    x = images(1, 70, 53)
    heat = explain.attention_rollout(backbone, x)
    assert heat.shape == (1, 70, 53)
    np.testing.assert_allclose(heat[0], _dense_rollout(backbone, x), atol=1e-5)


# === Tasks: rollout, Grad-CAM, overlays, errors ===


@pytest.fixture(scope="module")
def classifier():
    backbone = keras_pvt.PVTBackbone(hidden_sizes=(8, 16, 16, 32), depths=(1, 1, 1, 1),
                                     num_heads=(1, 1, 2, 2), position_embedding_shape=64)
    preprocessor = keras_pvt.PVTImageClassifierPreprocessor(
        keras_pvt.PVTImageConverter(image_size=(64, 64)))
    return keras_pvt.PVTClassifier(backbone, num_classes=4, preprocessor=preprocessor)


def test_classifier_explanations(classifier):
    raw = np.random.default_rng(0).integers(0, 256, (2, 80, 100, 3)).astype("uint8")
    rollout = explain.attention_rollout(classifier, raw)
    cam = explain.grad_cam(classifier, raw)
    chosen = explain.grad_cam(classifier, raw, class_id=[0, 3])
    for heat in (rollout, cam, chosen):
        assert heat.shape == (2, 64, 64) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == 1
    single = explain.explain(classifier, raw[0], method="gradcam")
    assert single.shape == (1, 64, 64)
    # The predicted class is the default.
    predicted = classifier.predict_on_batch(
        keras.ops.convert_to_numpy(classifier.preprocessor(raw.astype("float32")))).argmax(-1)
    np.testing.assert_allclose(cam, explain.grad_cam(classifier, raw, class_id=predicted),
                               atol=1e-6)


def test_grad_cam_matches_finite_differences(classifier):
    """Grad-CAM's channel weights are the score's gradient at the last block's input: a
    nudge of that input along one channel changes the logit by the predicted amount."""
    raw = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3)).astype("uint8")
    inputs = explain._model_inputs(classifier, raw)
    block = explain._structure(classifier.backbone)[-1]

    def logit(shift):
        seen = []
        with explain._shifted(block, shift, seen, at_output=False):
            out = classifier(inputs, training=False)
        return float(keras.ops.convert_to_numpy(out)[0, 2])

    activation, gradient = explain._stage_gradient(classifier, inputs, np.array([2]), None)
    assert activation.shape == gradient.shape == (1, 2, 2, 32)  # the class token dropped
    direction = np.zeros((1, 5, 32), "float32")  # the class token and the 2x2 map
    direction[0, 1:, 5] = 1.0
    eps = 1e-2
    numeric = (logit(eps * direction) - logit(-eps * direction)) / (2 * eps)
    assert numeric == pytest.approx(float(gradient[..., 5].sum()), rel=2e-2, abs=1e-4)


def test_segmenter_grad_cam_and_rollout():
    backbone = keras_pvt.PVTv2Backbone(hidden_sizes=8, depths=(1, 1, 1, 1), num_heads=1)
    segmenter = keras_pvt.SegFormerSegmenter(
        backbone, num_classes=3, decoder_hidden_size=8,
        preprocessor=keras_pvt.SegFormerSegmenterPreprocessor(
            keras_pvt.SegFormerImageConverter(image_size=(64, 64))))
    raw = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3)).astype("uint8")
    for heat in (explain.grad_cam(segmenter, raw, class_id=1),
                 explain.grad_cam(segmenter, raw), explain.attention_rollout(segmenter, raw)):
        assert heat.shape == (1, 64, 64) and np.isfinite(heat).all()


def test_overlay(tmp_path):
    image = np.full((30, 40, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    picture = explain.overlay(image, heat, alpha=1.0)
    assert picture.shape == (30, 40, 3) and picture.dtype == np.uint8
    assert tuple(picture[0, 0]) == (0, 0, 128)  # jet's dark blue at 0
    assert tuple(picture[-1, -1]) == (128, 0, 0)  # dark red at 1
    half = explain.overlay(image, np.zeros((30, 40), np.float32), colormap="magma", alpha=0.5)
    assert tuple(half[0, 0]) == (50, 50, 52)  # magma's near-black mixed with grey
    explain.save_overlay(tmp_path / "o.png", image, heat)
    from PIL import Image

    assert Image.open(tmp_path / "o.png").size == (40, 30)
    with pytest.raises(ValueError, match="Unknown colour map 'nope'"):
        explain.overlay(image, heat, colormap="nope")


def test_errors(classifier):
    raw = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"Unknown explanation method 'saliency'; use one of"):
        explain.explain(classifier, raw, method="saliency")
    with pytest.raises(ValueError, match=r"class_id 4 is out of range: .* has 4 classes"):
        explain.grad_cam(classifier, raw, class_id=4)
    with pytest.raises(ValueError, match="class_id -1 is out of range"):
        explain.grad_cam(classifier, raw, class_id=-1)
    with pytest.raises(ValueError, match="Attention rollout does not depend on a class"):
        explain.explain(classifier, raw, class_id=1)
    with pytest.raises(TypeError, match="pass a classifier or segmenter"):
        explain.grad_cam(classifier.backbone, raw.astype("float32"))
    with pytest.raises(ValueError, match="head_fusion"):
        explain.attention_rollout(classifier, raw, head_fusion="median")
    import keras_hub

    plain = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block")
    with pytest.raises(TypeError, match="ResNetBackbone has no attention blocks to explain"):
        explain.attention_rollout(plain, np.zeros((1, 32, 32, 3), np.float32))


# === README's and the docstrings' examples, and the CLI's defaults, on `pvt_v2_b0` ===

def _examples() -> str:
    """README's explain example, then the docstring examples of `keras_pvt.explain`,
    `attention_rollout`, `grad_cam` and `attention_maps`, with the names they use."""
    from tests.helpers.hub_cache import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text().split("## Explain", 1)[1]
    code = [readme.split("```python\n", 1)[1].split("```", 1)[0]]
    code.append("classifier, images = model, image[None]\n")
    code.append("\n".join(line.strip() for line in explain.__doc__.splitlines()
                          if line.startswith("    heat = ") or line.startswith("    keras_pvt.")))
    for function in (explain.attention_rollout, explain.grad_cam):
        code.append(textwrap.dedent(function.__doc__.split("```python\n")[1].split("```")[0]))
    code.append("backbone, images = model.backbone, np.zeros((1, 64, 64, 3), 'float32')\n")
    code.append(textwrap.dedent(keras_pvt.PVTv2Backbone.attention_maps.__doc__
                                .split("```python\n")[1].split("```")[0]))
    code.append("from keras_pvt.cli import main\nmain(['explain', '-o', 'cli.png'])\n")
    return "\n".join(code)


def test_readme_docstrings_and_cli_defaults_on_the_named_preset(tmp_path):
    """On `pvt_v2_b0` from an offline HF cache (a tiny random checkpoint): README's example,
    the docstrings', and `keras-pvt explain -o FILE` with its defaults (the sample image,
    `pvt_v2_b0`, rollout), in one process."""
    from keras_pvt.cli import sample_image_path
    from tests.helpers.hub_cache import offline_env, place_in_hf_cache, run

    reference = hf_pvt_v2("tiny", num_labels=5)
    reference.save_pretrained(tmp_path / "checkpoint")
    hf_cache = tmp_path / "hf"
    place_in_hf_cache(hf_cache, "OpenGVLab/pvt_v2_b0", tmp_path / "checkpoint")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = offline_env(hf_cache, tmp_path / "keras")
    result = run([sys.executable, "-c", _examples()], env, cwd=workdir)
    lines = result.stdout.strip().splitlines()
    # The tiny checkpoint has 4 blocks (b0: 8); b0's first-stage grid and reduced keys.
    assert lines[0] == "4 (1, 1, 3136, 49)", result.stdout
    assert lines[1] == "(1, 224, 224) (1, 224, 224)", result.stdout
    assert lines[2] == "True (1, 4, 4, 4)", result.stdout  # 64 px: a 2x2 last stage
    image = np.asarray(Image.open(sample_image_path()).convert("RGB"))
    model = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path / "checkpoint"))
    rollout = explain.attention_rollout(model, image)[0]
    cam = explain.grad_cam(model, image)[0]  # the module docstring's last `heat`
    for name, heat in (("rollout.png", rollout), ("cli.png", rollout), ("cat.png", cam)):
        with Image.open(workdir / name) as picture:
            written = np.asarray(picture.convert("RGB")).astype(int)
        assert np.abs(written - explain.overlay(image, heat).astype(int)).max() <= 2, name
    predicted = int(model.predict(image[None], verbose=0).argmax())
    assert lines[-1] == (f"{sample_image_path()} -> cli.png  "
                         f"[rollout, label_{predicted} [{predicted}]]"), result.stdout
