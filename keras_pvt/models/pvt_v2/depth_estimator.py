"""GLPN depth estimation on a `PVTv2Backbone`."""

import keras

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.tasks.glpn import GLPNDepthEstimator


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2GLPNDepthEstimator(GLPNDepthEstimator):
    """GLPN's decoder and head on a `PVTv2Backbone`; see `GLPNDepthEstimator`."""

    backbone_cls = PVTv2Backbone
