"""GLPN depth estimation on a `CvTBackbone`."""

import keras

from keras_pvt.models.cvt.backbone import CvTBackbone
from keras_pvt.tasks.glpn import GLPNDepthEstimator


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTGLPNDepthEstimator(GLPNDepthEstimator):
    """GLPN's decoder and head on a `CvTBackbone`; see `GLPNDepthEstimator`."""

    backbone_cls = CvTBackbone
