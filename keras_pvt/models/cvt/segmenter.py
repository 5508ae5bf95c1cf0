"""SegFormer on a CvT backbone: the family's `SegFormerSegmenter`."""

import keras

from keras_pvt.models.cvt.backbone import CvTBackbone
from keras_pvt.tasks.segformer import SegFormerSegmenter


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTSegFormerSegmenter(SegFormerSegmenter):
    """SegFormer's decoder on a `CvTBackbone`; see `SegFormerSegmenter`."""

    backbone_cls = CvTBackbone
