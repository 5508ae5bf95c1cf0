"""Model families. `FAMILIES` is what conversion and preset resolution iterate over."""

from keras_pvt.models.cvt.checkpoint import FAMILY as CVT_FAMILY
from keras_pvt.models.pvt.checkpoint import FAMILY as PVT_FAMILY
from keras_pvt.models.pvt_v2.checkpoint import FAMILY as PVT_V2_FAMILY

FAMILIES = (PVT_V2_FAMILY, PVT_FAMILY, CVT_FAMILY)
