"""SegFormer on a PVT v1 backbone: the family's `SegFormerSegmenter`."""

import keras

from keras_pvt.models.pvt.backbone import PVTBackbone
from keras_pvt.tasks.segformer import SegFormerSegmenter


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTSegFormerSegmenter(SegFormerSegmenter):
    """SegFormer's decoder on a `PVTBackbone`; see `SegFormerSegmenter`."""

    backbone_cls = PVTBackbone
