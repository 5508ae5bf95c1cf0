"""Monocular depth on every family: GLPN's decoder on PVT v1 and CvT backbones, the loss and
metrics against their definitions, training, depth-map checks, preprocessing errors."""

import keras
import keras_hub
import numpy as np
import pytest
import torch

import keras_pvt
from keras_pvt.layers.resize import bicubic_resize
from tests.helpers.deploy import family_backbone

SIZE = 64


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def ramps(n: int, seed: int = 0, height: int = SIZE, width: int = SIZE):
    """Images whose brightness encodes depth (a vertical ramp between random depths), so
    depth is learnable; a border of unmeasured (0) pixels."""
    rng = np.random.default_rng(seed)
    near, far = rng.uniform(1, 4, n), rng.uniform(5, 9, n)
    t = np.linspace(0, 1, height)[None, :, None]
    depth = (near[:, None, None] + (far - near)[:, None, None] * t) * np.ones((1, 1, width))
    images = np.repeat((255 * (1 - depth / 10))[..., None], 3, axis=-1)
    images = images + rng.normal(0, 5, images.shape)
    depth[:, :2] = 0
    return np.clip(images, 0, 255).astype("float32"), depth.astype("float32")


@pytest.mark.parametrize("family", ["pvt", "cvt"])
def test_glpn_head_on_pvt_v1_and_cvt(family, tmp_path):
    backbone = family_backbone(family)
    model = keras_pvt.GLPNDepthEstimator(backbone=backbone,
                                         preprocessor=keras_pvt.GLPNDepthEstimatorPreprocessor(),
                                         decoder_hidden_size=16, max_depth=10)
    expected_cls = {"pvt": keras_pvt.PVTGLPNDepthEstimator,
                    "cvt": keras_pvt.CvTGLPNDepthEstimator}[family]
    assert type(model) is expected_cls
    for height, width in ((SIZE, SIZE), (72, 50)):  # depth at the input size, square or not
        depth = numpy(model(np.zeros((1, height, width, 3), "float32")))
        assert depth.shape == (1, height, width, 1)

    # CvT trains on 72x100 images: the preprocessor resizes them to 64x96 and the loss
    # compares the prediction with the depth maps at their own size.
    images, depths = ramps(32, height=72, width=100) if family == "cvt" else ramps(32)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(images, depths, batch_size=8, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0], history
    assert history["abs_rel"][-1] < history["abs_rel"][0], history

    model.save_to_preset(str(tmp_path))
    loaded = keras_pvt.GLPNDepthEstimator.from_preset(str(tmp_path))
    assert type(loaded) is expected_cls and loaded.max_depth == 10
    # keras-hub's own entry point finds the family's class too.
    assert type(keras_hub.models.DepthEstimator.from_preset(str(tmp_path))) is expected_cls
    x = numpy(model.preprocessor(images[:2]))
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), atol=1e-5)


def silog_reference(prediction, target, lambd=0.5):
    """transformers' `SiLogLoss` (GLPN's training loss), run in torch."""
    from transformers.models.glpn.modeling_glpn import SiLogLoss

    return float(SiLogLoss(lambd)(torch.from_numpy(prediction), torch.from_numpy(target)))


def test_loss_and_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 9, (2, 16, 24)).astype("float32")
    target[:, :3] = 0  # unmeasured
    predicted = rng.uniform(0.5, 9, (2, 16, 24)).astype("float32")
    for lambd in (0.5, 0.0):
        got = float(keras_pvt.SiLogLoss(lambd=lambd)(target, predicted[..., None]))
        assert abs(got - silog_reference(predicted, target, lambd)) < 1e-5

    valid = target > 0
    t, p = target[valid], predicted[valid]
    abs_rel = keras_pvt.AbsRelError()
    delta = keras_pvt.DeltaAccuracy()
    for metric in (abs_rel, delta):  # in two updates: a mean over all pixels seen
        metric.update_state(target[:1], predicted[:1, ..., None])
        metric.update_state(target[1:], predicted[1:, ..., None])
    assert abs(float(abs_rel.result()) - np.mean(np.abs(p - t) / t)) < 1e-5
    assert abs(float(delta.result()) - np.mean(np.maximum(p / t, t / p) < 1.25)) < 1e-6
    assert delta.name == "delta_1.25"

    # A prediction at another size is compared at the target's size (bilinear).
    small = predicted[:, ::2, ::2, None]
    upsampled = numpy(keras_pvt.layers.resize.bilinear_resize(
        keras.ops.convert_to_tensor(small), (16, 24), axis=1))[..., 0]
    got = float(keras_pvt.SiLogLoss()(target, small))
    assert abs(got - silog_reference(upsampled, target)) < 1e-5


def test_bicubic_resize_matches_pytorch():
    x = np.random.default_rng(1).standard_normal((2, 13, 17, 3)).astype("float32")
    for size in ((33, 41), (5, 7), (13, 17)):
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bicubic",
            align_corners=False).permute(0, 2, 3, 1).numpy()
        got = bicubic_resize(keras.ops.convert_to_tensor(x), size, axis=1)
        np.testing.assert_allclose(numpy(got), want, atol=1e-5)


@pytest.fixture(scope="module")
def estimator():
    return keras_pvt.GLPNDepthEstimator(
        backbone=family_backbone("pvt_v2"),
        preprocessor=keras_pvt.GLPNDepthEstimatorPreprocessor(), decoder_hidden_size=16)


def test_depth_targets_that_do_not_fit_are_explained(estimator):
    images, depths = ramps(4)
    estimator.compile()
    with pytest.raises(ValueError, match=r"depth maps must have shape \(batch, height, width\)"
                       r".*received depth maps of shape \(4, 64, 32\)"):
        estimator.fit(images, depths[..., :32], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"received depth maps of shape \(4, 64, 64, 2\)"):
        estimator.evaluate(images, np.stack([depths, depths], -1), verbose=0)
    with pytest.raises(ValueError, match=r"negative values \(minimum -1\).*Mark unmeasured"):
        estimator.fit(images, np.where(depths > 5, -1.0, depths), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"hold \d+ NaN or infinite values.*nan_to_num"):
        estimator.fit(images, np.where(depths > 5, np.nan, depths), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="depth maps must be numbers"):
        estimator.fit(images, depths.astype(bool), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="0 < min_depth < max_depth"):
        keras_pvt.GLPNDepthEstimator(backbone=estimator.backbone, max_depth=0)


def test_any_input_size_gives_depth_at_that_size(estimator):
    """Sizes that are not multiples of 32 (which transformers' decoder cannot take) still
    give depth at the input size, within [0, max_depth]."""
    depth = numpy(estimator(np.full((1, 67, 99, 3), 0.5, "float32")))
    assert depth.shape == (1, 67, 99, 1)
    assert np.all((depth >= 0) & (depth <= estimator.max_depth))


def test_predict_depth_takes_any_image_sizes(estimator):
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (70, 100, 3)).astype("uint8"),
           rng.integers(0, 256, (32, 45, 3)).astype("uint8")]
    depths = estimator.predict_depth(raw)
    assert [d.shape for d in depths] == [(70, 100), (32, 45)]
    one = estimator.predict_depth(raw[0])
    np.testing.assert_allclose(one, depths[0], atol=1e-5)
    batch = estimator.predict_depth(np.stack([raw[0], raw[0]]))
    assert batch.shape == (2, 70, 100) and batch.dtype == np.float32
    with pytest.raises(ValueError, match="smaller than 32 pixels.*at least 32x32"):
        estimator.predict_depth(raw[1][:20])
    with pytest.raises(ValueError, match=r"predict_depth\(\) takes images of shape"):
        estimator.predict_depth([raw[0][..., 0]])


def test_image_converter_configuration():
    converter = keras_pvt.GLPNImageConverter()
    x = np.full((1, 70, 100, 3), 255.0, "float32")
    y = numpy(converter(x))
    assert y.shape == (1, 64, 96, 3) and np.allclose(y, 1.0)
    assert numpy(keras_pvt.GLPNImageConverter(size_divisor=None)(x)).shape == (1, 70, 100, 3)
    config = converter.get_config()
    assert config["size_divisor"] == 32 and "image_size" not in config
    assert keras_pvt.GLPNImageConverter.from_config(config).size_divisor == 32
    with pytest.raises(ValueError, match="takes no image_size"):
        keras_pvt.GLPNImageConverter(image_size=(64, 64))
