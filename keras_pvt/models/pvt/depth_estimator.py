"""GLPN depth estimation on a `PVTBackbone`."""

import keras

from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.tasks.glpn import GLPNDepthEstimator


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTGLPNDepthEstimator(GLPNDepthEstimator):
    """GLPN's decoder and head on a `PVTBackbone`; see `GLPNDepthEstimator`."""

    backbone_cls = PVTBackbone
