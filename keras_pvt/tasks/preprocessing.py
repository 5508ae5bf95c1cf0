"""Image normalisation shared by every family's and task's preprocessing."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_scale_offset(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """`scale`/`offset` for ImageConverter equal to `(x / 255 - mean) / std`."""
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset
