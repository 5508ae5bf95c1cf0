"""Image normalisation shared by every family's and task's preprocessing."""

from keras_hub.layers import ImageConverter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_scale_offset(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """`scale`/`offset` for ImageConverter equal to `(x / 255 - mean) / std`."""
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


class ImageNetImageConverter(ImageConverter):
    """Resizes to `image_size` (bilinear, antialiased, no crop; `None` keeps the size),
    rescales by 1/255 and normalises with the ImageNet mean/std, as transformers' PVT,
    PVT v2 and SegFormer processors do."""

    def __init__(self, image_size=(224, 224), scale=None, offset=None, **kwargs):
        if scale is None and offset is None:
            scale, offset = imagenet_scale_offset()
        kwargs.setdefault("crop_to_aspect_ratio", False)
        kwargs.setdefault("interpolation", "bilinear")
        kwargs.setdefault("antialias", True)
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)
        # Built here (it has no weights): with `image_size=None` it is never called, and
        # keras' JAX predict runs an uncompiled forward pass whenever a layer is unbuilt.
        self.resizing.build((None, None, None, 3))
