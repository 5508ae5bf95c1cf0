"""Images in and pictures out: reading image files; class-id masks and colour overlays with
a legend, colour-mapped depth.

Only NumPy and Pillow: importable without keras (the CLI draws with it).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def read_image(path) -> np.ndarray:
    """An image file as an RGB uint8 array `(height, width, 3)`; `ValueError` naming the file
    if it cannot be read."""
    from pathlib import Path

    from PIL import UnidentifiedImageError

    if Path(path).is_dir():
        raise ValueError(f"cannot read image {path}: it is a directory; pass image files")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def class_colors(num_classes: int):
    """A distinct RGB colour per class id (PASCAL VOC's bit-interleaved colour map, from id
    1 on so that no class is black)."""
    ids = np.arange(1, num_classes + 1)
    colors = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colors[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return colors.astype(np.uint8)


def class_label(class_names, index: int) -> str:
    """`class_names[index]`, or `class_<index>` without names."""
    return class_names[index] if class_names is not None else f"class_{index}"


def class_shares(mask, class_names) -> list[dict]:
    """The classes present in `mask`, largest pixel share first."""
    ids, counts = np.unique(mask, return_counts=True)
    order = np.lexsort((ids, -counts))
    return [
        {"index": int(ids[i]), "label": class_label(class_names, int(ids[i])),
         "fraction": float(counts[i]) / mask.size}
        for i in order
    ]


def mask_image(mask, num_classes: int):
    """The class-id mask as a PNG-ready image: 8-bit "L" up to 256 classes, else "I;16"."""
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    return Image.fromarray(np.ascontiguousarray(mask.astype(dtype)))


def overlay_image(pixels, mask, classes: list[dict], colors, alpha: float = 0.5):
    """`pixels` blended with a colour per class, with a legend of the classes present."""
    blended = pixels.astype(np.float32) * (1 - alpha) + colors[mask].astype(np.float32) * alpha
    image = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")
    height, width = mask.shape
    size = max(10, min(height, width) // 24)
    try:
        font = ImageFont.load_default(size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image, "RGBA")
    pad = max(1, size // 4)
    row = size + pad
    rows = classes[: max(1, (height - pad) // row)]
    widths = [draw.textlength(item["label"], font=font) for item in rows]
    box = (0, 0, int(pad * 3 + size + max(widths)) + 1, pad + row * len(rows))
    draw.rectangle(box, fill=(0, 0, 0, 160))
    for k, item in enumerate(rows):
        top = pad + k * row
        swatch = [pad, top, pad + size - 1, top + size - 1]
        draw.rectangle(swatch, fill=tuple(int(c) for c in colors[item["index"]]) + (255,),
                       outline=(255, 255, 255, 255))
        draw.text((pad * 2 + size, top), item["label"], fill=(255, 255, 255, 255), font=font)
    return image


# matplotlib's "magma" (CC0) sampled at 17 points, interpolated linearly in between.
_MAGMA = np.array([
    (0, 0, 4), (10, 8, 34), (29, 17, 71), (54, 16, 107), (81, 18, 124), (106, 28, 129),
    (131, 38, 129), (156, 46, 127), (183, 55, 121), (208, 65, 111), (231, 82, 99),
    (245, 107, 92), (252, 137, 97), (254, 167, 114), (254, 196, 136), (253, 226, 163),
    (252, 253, 191),
], dtype=np.float32)


def colormap(values):
    """RGB uint8 colours of `values` in [0, 1] (clipped) on the magma colour map."""
    position = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1) * (len(_MAGMA) - 1)
    lower = np.minimum(position.astype(np.int64), len(_MAGMA) - 2)
    weight = (position - lower)[..., None]
    colours = _MAGMA[lower] * (1 - weight) + _MAGMA[lower + 1] * weight
    return np.clip(colours + 0.5, 0, 255).astype(np.uint8)


# matplotlib's "jet": (position, value) breakpoints of red, green and blue.
_JET = (
    ((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
    ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
    ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)),
)


def heat_map_colors(values, name: str = "jet"):
    """RGB uint8 colours of `values` in [0, 1] (clipped) on a colour map: `"jet"` and
    `"magma"` are built in, any other matplotlib colour map name needs matplotlib."""
    values = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1)
    if name == "magma":
        return colormap(values)
    if name == "jet":
        channels = [np.interp(values, *zip(*points)) for points in _JET]
        return (np.stack(channels, axis=-1) * 255 + 0.5).astype(np.uint8)
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            f"Colour map {name!r} needs matplotlib (pip install matplotlib); 'jet' and 'magma' "
            "work without it."
        ) from None
    if name not in matplotlib.colormaps:
        raise ValueError(f"Unknown colour map {name!r}; use a matplotlib colour map name, e.g. "
                         "'jet', 'magma', 'viridis' or 'turbo'.")
    rgba = matplotlib.colormaps[name](values)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def depth_image(depth, near: float | None = None, far: float | None = None):
    """A colour picture of a depth map: near is bright, far is dark (magma), scaled between
    `near` and `far` (the map's own minimum and maximum by default)."""
    depth = np.asarray(depth, np.float32)
    near = float(np.min(depth)) if near is None else near
    far = float(np.max(depth)) if far is None else far
    closeness = (far - depth) / max(far - near, 1e-6)
    return Image.fromarray(colormap(closeness), "RGB")
