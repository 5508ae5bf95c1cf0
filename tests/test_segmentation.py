"""Semantic segmentation on every family: SegFormer's head on PVT v1 and CvT backbones,
training (loss, mean IoU, mask checks), preset round trips, keras-hub interop."""

import warnings

import h5py
import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import torch

import keras_pvt
from keras_pvt.tasks.segformer import reduce_labels
from tests.helpers.deploy import family_backbone

SIZE = 64
NUM_CLASSES = 3


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def colour_masks(n: int, seed: int = 0):
    """Images whose left/right halves and a centre square have random class colours; the
    masks are the classes. Learnable from colour alone."""
    rng = np.random.default_rng(seed)
    colours = np.array([[-1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5]], "float32")
    masks = np.zeros((n, SIZE, SIZE), "int32")
    for i in range(n):
        left, right, centre = rng.integers(0, NUM_CLASSES, 3)
        masks[i, :, : SIZE // 2], masks[i, :, SIZE // 2 :] = left, right
        masks[i, 20:44, 20:44] = centre
    images = colours[masks] + rng.normal(0, 0.3, (n, SIZE, SIZE, 3)).astype("float32")
    return images, masks


@pytest.mark.parametrize("family", ["pvt", "cvt"])
def test_segformer_head_on_pvt_v1_and_cvt(family, tmp_path):
    backbone = family_backbone(family)
    model = keras_pvt.SegFormerSegmenter(backbone=backbone, num_classes=NUM_CLASSES,
                                         decoder_hidden_size=16, class_names=["a", "b", "c"])
    expected_cls = {"pvt": keras_pvt.PVTSegFormerSegmenter,
                    "cvt": keras_pvt.CvTSegFormerSegmenter}[family]
    assert type(model) is expected_cls
    finest = keras.Model(backbone.input, backbone.pyramid_outputs["P2"])
    for height, width in ((SIZE, SIZE), (72, 50)):  # stride-4 logits, square or not
        x = np.zeros((1, height, width, 3), "float32")
        stride_4 = numpy(finest(x)).shape[1:3]
        assert abs(stride_4[0] - height / 4) < 1 and abs(stride_4[1] - width / 4) < 1
        assert numpy(model(x)).shape[1:] == (*stride_4, NUM_CLASSES)

    images, masks = colour_masks(32)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    history = model.fit(images, masks, batch_size=8, epochs=3, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0], history
    assert history["mean_iou"][-1] > history["mean_iou"][0]

    # The generic class saves and reloads as its family's, with its config and weights --
    # without the optimizer's state (nothing to skip, so no warning, on reload).
    model.save_to_preset(str(tmp_path))
    with h5py.File(tmp_path / "task.weights.h5") as saved:
        assert not [k for k in saved.keys() if "optimizer" in k], list(saved.keys())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras_pvt.SegFormerSegmenter.from_preset(str(tmp_path))
    assert type(loaded) is expected_cls and loaded.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(numpy(loaded(images[:2])), numpy(model(images[:2])), atol=1e-6)


def test_loss_and_mean_iou_match_pytorch():
    """Logits upsampled bilinearly to the mask, mean cross-entropy over labelled pixels."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 8, 10, 5)).astype("float32")
    masks = rng.integers(0, 5, (2, 29, 37)).astype("int32")
    masks[0, :7] = 255
    torch_logits = torch.nn.functional.interpolate(
        torch.from_numpy(logits).permute(0, 3, 1, 2), size=(29, 37), mode="bilinear",
        align_corners=False)
    want = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(masks).long(),
                                             ignore_index=255)
    got = keras_pvt.SegmentationLoss()(masks[..., None], logits)
    np.testing.assert_allclose(float(numpy(got)), float(want), rtol=1e-5)

    metric = keras_pvt.SegmentationMeanIoU(num_classes=5)
    metric.update_state(masks, logits)
    predicted = torch_logits.argmax(1).numpy()
    valid = masks != 255
    ious = []
    for c in range(5):
        p, t = (predicted == c) & valid, (masks == c) & valid
        ious.append((p & t).sum() / (p | t).sum())
    np.testing.assert_allclose(float(numpy(metric.result())), np.mean(ious), rtol=1e-5)


def test_reduce_labels_like_transformers():
    masks = np.array([[0, 1, 2, 150, 255]], "uint8")
    want = [[255, 0, 1, 149, 255]]
    np.testing.assert_array_equal(reduce_labels(masks), want)
    np.testing.assert_array_equal(reduce_labels(tf.constant(masks)).numpy(), want)


@pytest.fixture(scope="module")
def segmenter():
    return keras_pvt.SegFormerSegmenter(backbone=family_backbone("pvt_v2"), num_classes=5,
                                        decoder_hidden_size=8)


def test_masks_that_do_not_fit_are_explained(segmenter):
    images = np.zeros((2, SIZE, SIZE, 3), "float32")
    masks = np.zeros((2, SIZE, SIZE), "int32")
    segmenter.compile()
    with pytest.raises(ValueError, match=r"masks must be integer class ids of shape .* images' "):
        segmenter.fit(images, masks[:, :32, :32], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"masks must be .*\(2, 64, 64, 3\)"):
        segmenter.fit(images, np.zeros((2, SIZE, SIZE, 3), "int32"), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="integer class ids.*float32"):
        segmenter.fit(images, masks.astype("float32"), epochs=1, verbose=0)
    bad = masks.copy()
    bad[0, 0, :3] = [5, 7, 255]  # 255 is "unlabelled"; 5 and 7 are not classes
    with pytest.raises(ValueError, match=r"num_classes=5 .* labels \[5, 7\]; labels must be "
                                         r"0\.\.4, or 255"):
        segmenter.evaluate(images, bad, verbose=0)
    # Shapes are also checked on the tf.data path (in the loss), after preprocessing.
    dataset = tf.data.Dataset.from_tensor_slices((images, masks[:, :32, :32])).batch(2)
    with pytest.raises(ValueError, match="masks must be integer class ids"):
        segmenter.fit(dataset, epochs=1, verbose=0)


def test_segment_takes_any_image_sizes(segmenter):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 40, 56, 3)).astype("uint8")
    masks = segmenter.segment(batch)  # no preprocessor: the images are the model's input
    assert masks.shape == (2, 40, 56) and masks.dtype == np.int32
    assert masks.max() < 5
    listed = segmenter.segment([batch[0], batch[1, :33, :45]])
    assert [m.shape for m in listed] == [(40, 56), (33, 45)]
    np.testing.assert_array_equal(listed[0], masks[0])
    assert segmenter.segment(batch[0]).shape == (40, 56)
    with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
        segmenter.segment([batch[0, :, :, 0]])
    minimum = segmenter.minimum_image_size()  # the backbone's: its first 8x8 reduction
    assert minimum == segmenter.backbone.minimum_image_size() == 29
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum} pixels"):
        segmenter(np.zeros((1, minimum - 1, 40, 3), "float32"))


def test_keras_hub_heads_take_keras_pvt_backbones():
    """keras-hub's DeepLabV3 and RetinaNet build on a keras_pvt backbone's pyramid."""
    backbone = family_backbone("pvt_v2")
    x = np.zeros((1, SIZE, SIZE, 3), "float32")
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1, 2], low_level_feature_key="P2", projection_filters=8)
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=3)
    assert numpy(segmenter(x)).shape == (1, SIZE, SIZE, 3)
    retinanet = keras_hub.models.RetinaNetBackbone(
        image_encoder=backbone, min_level=3, max_level=5, use_p5=False)
    levels = retinanet(x)
    assert {k: tuple(numpy(v).shape) for k, v in levels.items()} == {
        "P3": (1, 8, 8, 256), "P4": (1, 4, 4, 256), "P5": (1, 2, 2, 256)}
