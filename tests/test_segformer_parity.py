"""SegFormer parity: Keras outputs equal transformers' run in the same test.

Checkpoints take the path real ones use: `save_pretrained`, then `from_preset(path)`.
"""

import json
import textwrap

import keras
import numpy as np
import pytest
import torch

import keras_pvt
from tests.helpers.reference import hf_segformer, images, nchw_to_nhwc, to_torch


def relative_delta(got, want) -> float:
    got, want = np.asarray(got, dtype="float64"), np.asarray(want, dtype="float64")
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def segformer_b0(tmp_path_factory):
    reference = hf_segformer("b0", "segmentation", num_labels=150)
    path = tmp_path_factory.mktemp("segformer_b0")
    reference.save_pretrained(path)
    return reference, keras_pvt.SegFormerSegmenter.from_preset(str(path)), path


@pytest.mark.parametrize("batch,height,width", [(2, 512, 512), (1, 333, 517)])
def test_segmenter_parity(segformer_b0, record_delta, batch, height, width):
    reference, model, _ = segformer_b0
    assert isinstance(model, keras_pvt.PVTv2SegFormerSegmenter)
    x = images(batch, height, width, seed=height)
    with torch.no_grad():
        expected = reference(to_torch(x), output_hidden_states=True)
    logits = keras.ops.convert_to_numpy(model(x))
    delta = relative_delta(logits, nchw_to_nhwc(expected.logits))
    record_delta(f"segformer b0 {batch}x{height}x{width} logits (relative)", delta)
    assert delta < 1e-4
    pyramid = keras.Model(model.backbone.input, model.backbone.pyramid_outputs)(x)
    for stage, level in enumerate(["P2", "P3", "P4", "P5"]):
        want = nchw_to_nhwc(expected.hidden_states[stage])
        delta = relative_delta(keras.ops.convert_to_numpy(pyramid[level]), want)
        record_delta(f"segformer b0 {batch}x{height}x{width} {level} (relative)", delta)
        assert delta < 1e-4, level


def test_segment_matches_transformers_post_processing(segformer_b0):
    """`segment()`: preprocess, then bilinear upsampling of the logits to each image's own
    size and argmax, as transformers' `post_process_semantic_segmentation`."""
    from transformers import SegformerImageProcessor

    reference, model, _ = segformer_b0
    preprocessor = keras_pvt.SegFormerSegmenterPreprocessor(
        keras_pvt.SegFormerImageConverter(image_size=(64, 96)))
    model = keras_pvt.SegFormerSegmenter(  # the same weights, another input size
        backbone=model.backbone, num_classes=model.num_classes, preprocessor=preprocessor,
        decoder_hidden_size=model.decoder_hidden_size,
    )
    model.set_weights(segformer_b0[1].get_weights())
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (96, 128, 3)).astype("uint8"),
           rng.integers(0, 256, (75, 61, 3)).astype("uint8")]
    got = model.segment(raw)
    processor = SegformerImageProcessor()
    for image, mask in zip(raw, got):
        x = keras.ops.convert_to_numpy(preprocessor(image[None].astype("float32")))
        with torch.no_grad():
            outputs = reference(to_torch(np.asarray(x)))
        want = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[image.shape[:2]])[0].numpy()
        assert mask.shape == want.shape == image.shape[:2]
        # Equal up to pixels whose two best classes are within float rounding.
        assert np.mean(mask == want) > 0.999


def test_mit_classifier_and_bare_encoder(tmp_path, record_delta):
    """`SegformerForImageClassification` (the ImageNet MiT checkpoints) loads as
    `PVTv2Classifier`, `SegformerModel` as `PVTv2Backbone`."""
    reference = hf_segformer("tiny", "classification", num_labels=10)
    reference.save_pretrained(tmp_path / "cls")
    model = keras_pvt.PVTv2Classifier.from_preset(str(tmp_path / "cls"))
    x = images(2, 64, 96, seed=3)
    with torch.no_grad():
        want = reference(to_torch(x)).logits.numpy()
    delta = relative_delta(keras.ops.convert_to_numpy(model(x)), want)
    record_delta("MiT (SegformerForImageClassification) tiny 64x96 logits (relative)", delta)
    assert delta < 1e-4
    assert model.class_names == [f"label_{i}" for i in range(10)]

    encoder = hf_segformer("tiny", None)
    encoder.save_pretrained(tmp_path / "encoder")
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(tmp_path / "encoder"))
    with torch.no_grad():
        want = nchw_to_nhwc(encoder(to_torch(x)).last_hidden_state)
    delta = relative_delta(keras.ops.convert_to_numpy(backbone(x)), want)
    record_delta("SegformerModel tiny 64x96 last stage (relative)", delta)
    assert delta < 1e-4


def test_segmenter_checkpoint_into_backbone_and_new_heads(segformer_b0):
    _, model, path = segformer_b0
    backbone = keras_pvt.PVTv2Backbone.from_preset(str(path))
    x = images(1, 64, 64)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone(x)), keras.ops.convert_to_numpy(model.backbone(x))
    )
    # A new head on the segmenter's encoder: a classifier, or a segmenter with other classes.
    classifier = keras_pvt.PVTv2Classifier.from_preset(str(path), num_classes=3)
    assert classifier.num_classes == 3 and classifier.class_names is None
    segmenter = keras_pvt.SegFormerSegmenter.from_preset(str(path), num_classes=7)
    assert keras.ops.convert_to_numpy(segmenter(x)).shape == (1, 16, 16, 7)


def test_a_checkpoint_of_another_task_is_refused_clearly(segformer_b0, tmp_path):
    _, _, path = segformer_b0
    refused = r"holds a PVTv2SegFormerSegmenter, not a PVTv2Classifier.*num_classes"
    with pytest.raises(keras_pvt.PresetError, match=refused):
        keras_pvt.PVTv2Classifier.from_preset(str(path))
    hf_segformer("tiny", "classification", num_labels=4).save_pretrained(tmp_path / "mit")
    with pytest.raises(keras_pvt.PresetError,
                       match=r"holds a PVTv2Classifier, not a SegFormerSegmenter.*num_classes"):
        keras_pvt.SegFormerSegmenter.from_preset(str(tmp_path / "mit"))


def test_preprocessing_from_the_image_processor(tmp_path):
    """SegformerImageProcessor's size, normalisation and `do_reduce_labels` are kept: the
    preprocessed mask equals transformers' labels."""
    from transformers import SegformerImageProcessor

    reference = hf_segformer("tiny", "segmentation", num_labels=5)
    reference.save_pretrained(tmp_path)
    processor = SegformerImageProcessor(size={"height": 64, "width": 96}, do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    model = keras_pvt.SegFormerSegmenter.from_preset(str(tmp_path))
    preprocessor = model.preprocessor
    assert preprocessor.reduce_labels
    assert tuple(preprocessor.image_converter.image_size) == (64, 96)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3)).astype("uint8")
    mask = rng.integers(0, 6, (64, 96)).astype("uint8")
    want = processor(image, segmentation_maps=mask, return_tensors="np")
    x, y = preprocessor(image[None], mask[None])
    np.testing.assert_array_equal(
        np.asarray(keras.ops.convert_to_numpy(y))[0, ..., 0], want["labels"][0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(x)[0], want["pixel_values"][0].transpose(1, 2, 0), atol=1e-4)


NAMED = """
import sys, numpy as np, keras, keras_pvt
x = np.load(sys.argv[1])
first = keras_pvt.SegFormerSegmenter.from_preset("segformer_b0_ade")
again = keras_pvt.SegFormerSegmenter.from_preset("segformer_b0_ade")  # the converted cache
mit = keras_pvt.PVTv2Classifier.from_preset("mit_b0")
np.save(sys.argv[2], keras.ops.convert_to_numpy(again(x)))
np.save(sys.argv[3], keras.ops.convert_to_numpy(mit(x)))
print(type(first).__name__, first.class_names[1], first.preprocessor.reduce_labels,
      mit.class_names[1])
"""


def test_named_presets_offline_with_their_licence(tmp_path, record_delta):
    """`segformer_b0_ade` and `mit_b0` from a temporary offline HF cache; the licence
    (non-commercial) is named once per process."""
    import sys

    from transformers import SegformerImageProcessor

    from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run

    hf_cache = tmp_path / "hf"
    segmenter = hf_segformer("tiny", "segmentation", num_labels=150)
    segmenter.save_pretrained(tmp_path / "ade")
    SegformerImageProcessor(do_reduce_labels=True).save_pretrained(tmp_path / "ade")
    place_in_hf_cache(hf_cache, "nvidia/segformer-b0-finetuned-ade-512-512", tmp_path / "ade")
    classifier = hf_segformer("tiny", "classification", num_labels=1000)
    classifier.save_pretrained(tmp_path / "mit")
    place_in_hf_cache(hf_cache, "nvidia/mit-b0", tmp_path / "mit")
    x = images(1, 64, 80)
    np.save(tmp_path / "x.npy", x)
    # One process (imports and compilation dominate): the presets, then SegFormerSegmenter's
    # docstring example (two images of different sizes), then README's segmentation example
    # as written.
    example = keras_pvt.SegFormerSegmenter.__doc__.split("```python\n", 1)[1].split("```")[0]
    docstring = ("image_a = np.zeros((40, 50, 3), 'uint8')\n"
                 "image_b = np.zeros((30, 20, 3), 'uint8')\n" + textwrap.dedent(example)
                 + "print('docstring', [m.shape for m in masks])\n")
    readme = (REPO_ROOT / "README.md").read_text().split("## Segmentation", 1)[1]
    readme = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = run([sys.executable, "-c", NAMED + docstring + readme,
                  *(str(tmp_path / f) for f in ("x.npy", "seg.npy", "mit.npy"))],
                 offline_env(hf_cache, tmp_path / "keras"))
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["PVTv2SegFormerSegmenter", "label_1", "True", "label_1"]
    assert lines[1] == "docstring [(40, 50), (30, 20)]", result.stdout
    assert lines[2].startswith("{'label_") and "(1, 128, 128, 150)" in lines, result.stdout
    assert "mean_iou" in result.stdout, result.stdout
    assert result.stderr.count("NVIDIA Source Code License for SegFormer") == 1
    manifest = json.loads((tmp_path / "keras" / "keras_pvt" / "segformer_b0_ade" /
                           "keras_pvt_manifest.json").read_text())
    assert manifest["license"].startswith("NVIDIA Source Code License for SegFormer")
    assert "non-commercial" in result.stderr
    with torch.no_grad():
        want_seg = nchw_to_nhwc(segmenter(to_torch(x)).logits)
        want_mit = classifier(to_torch(x)).logits.numpy()
    delta = relative_delta(np.load(tmp_path / "seg.npy"), want_seg)
    record_delta("named preset segformer_b0_ade (offline HF cache) logits (relative)", delta)
    assert delta < 1e-4
    assert relative_delta(np.load(tmp_path / "mit.npy"), want_mit) < 1e-4


def test_preset_parameter_counts_match_transformers():
    from transformers import (
        SegformerConfig,
        SegformerForImageClassification,
        SegformerForSemanticSegmentation,
    )

    depths = [[2, 2, 2, 2], [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 18, 3], [3, 8, 27, 3],
              [3, 6, 40, 3]]
    presets = keras_pvt.PVTv2Backbone.presets
    for b in range(6):
        sizes = dict(hidden_sizes=[32, 64, 160, 256] if b == 0 else [64, 128, 320, 512],
                     depths=depths[b], decoder_hidden_size=256 if b < 2 else 768)
        for name, model_cls, labels in (
                (f"mit_b{b}", SegformerForImageClassification, 1000),
                (f"segformer_b{b}_ade", SegformerForSemanticSegmentation, 150),
                (f"segformer_b{b}_cityscapes", SegformerForSemanticSegmentation, 19)):
            with torch.device("meta"):
                reference = model_cls(SegformerConfig(num_labels=labels, **sizes))
            assert presets[name]["params"] == sum(p.numel() for p in reference.parameters())
            assert "non-commercial" in presets[name]["license"]
