"""SegFormer on a PVT v2 backbone (SegFormer's own Mix Transformer)."""

import keras

from keras_pvt.models.pvt_v2.backbone import PVTv2Backbone
from keras_pvt.tasks.segformer import SegFormerSegmenter


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2SegFormerSegmenter(SegFormerSegmenter):
    """SegFormer's decoder on a `PVTv2Backbone`; see `SegFormerSegmenter`."""

    backbone_cls = PVTv2Backbone
