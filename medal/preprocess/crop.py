"""Hand RoI cropping: a box around the mask with a margin, padded to a square, resized.

The same box crops the gold-standard image, so the enhancer's input and target stay pixel-aligned.
"""

from __future__ import annotations

import numpy as np

from medal.data.images import resize
from medal.errors import MedalError

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (half-open)


def roi_box(mask: np.ndarray, margin: float = 0.05) -> Box:
    """Bounding box of the mask grown by `margin` x its longer side on every edge, clipped to the image.

    An empty mask gives the whole image (nothing better to crop to).

    Examples:
        >>> mask = np.zeros((100, 80), bool); mask[20:60, 30:50] = True
        >>> roi_box(mask, margin=0.1)
        (16, 26, 64, 54)
        >>> roi_box(np.zeros((10, 12), bool))
        (0, 0, 10, 12)
    """
    if margin < 0:
        raise MedalError(f"segment.roi_margin={margin}: must be >= 0")
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, h, w
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = int(round(margin * max(y1 - y0, x1 - x0)))
    return int(max(0, y0 - pad)), int(max(0, x0 - pad)), int(min(h, y1 + pad)), int(min(w, x1 + pad))


def crop_square(image: np.ndarray, box: Box, size: int = 512) -> np.ndarray:
    """Crop `box`, pad with zeros to a centred square, resize to `size` x `size`."""
    y0, x0, y1, x1 = box
    crop = np.asarray(image, dtype=np.float32)[y0:y1, x0:x1]
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = crop
    return resize(square, (size, size))
