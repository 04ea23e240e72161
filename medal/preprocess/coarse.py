"""Coarse hand segmentation (the reference pipeline's step 1) and polarity normalisation.

Radiographs come in both polarities. The background fills the image's outer ring, so a ring whose
median lies above the image's Otsu threshold means a white background: invert. The ring is inset from
the edge (by `border` of the short side) because scanner frames, bright or dark, hug the edge. Then Otsu's threshold, a
small closing (reconnects fingers split by thin dark gaps), the largest connected component (drops
letters and markers) and hole filling give a hand mask that seeds the human oracle's first round and
serves as the non-learned baseline. A thin edge strip is cleared first so that a scanner frame cannot
join the hand (and hole filling cannot then fill the whole image).
"""

from __future__ import annotations

import numpy as np

from medal.data.images import resize
from medal.preprocess.masks import FLAT, clean_mask, otsu_threshold

RING_WIDTH = 0.15  # of the short side: wide enough that a wrist or a letter is a minority of the ring


def border_pixels(image: np.ndarray, inset: float = 0.05, width: float = RING_WIDTH) -> np.ndarray:
    """Pixels of the ring from `inset` to `inset + width` (fractions of the short side) inside the edge."""
    h, w = image.shape
    k0 = int(round(min(h, w) * inset))
    k1 = max(k0 + 1, int(round(min(h, w) * (inset + width))))
    ring = np.zeros((h, w), dtype=bool)
    ring[k0 : h - k0, k0 : w - k0] = True
    ring[k1 : h - k1, k1 : w - k1] = False
    return image[ring]


def is_inverted(image: np.ndarray, border: float = 0.05) -> bool:
    """True when the background (the outer ring) is on the bright side of the image's Otsu threshold."""
    if float(image.max()) - float(image.min()) <= FLAT:
        return False
    return bool(np.median(border_pixels(image, border)) > otsu_threshold(image))


def normalise_polarity(image: np.ndarray, border: float = 0.05) -> tuple[np.ndarray, bool]:
    """(image with a dark background, whether it was inverted)."""
    inverted = is_inverted(image, border)
    return (1.0 - image if inverted else image), inverted


def drop_frame(foreground: np.ndarray, strip: float = 0.02) -> np.ndarray:
    """Clear a thin strip along the edges, where scanner frames lie.

    A frame touching the wrist would join it into one component that hole filling turns into the whole
    image. The hand loses only the strip, which `restore_strip` extends back from the inner edge.
    """
    k = max(1, int(round(min(foreground.shape) * strip)))
    out = foreground.copy()
    out[:k], out[-k:], out[:, :k], out[:, -k:] = False, False, False, False
    return out


def restore_strip(mask: np.ndarray, strip: float = 0.02) -> np.ndarray:
    """Extend the mask's first inner rows/columns outward over the cleared edge strip."""
    k = max(1, int(round(min(mask.shape) * strip)))
    out = mask.copy()
    out[:k] = out[k]
    out[-k:] = out[-k - 1]
    out[:, :k] = out[:, k : k + 1]
    out[:, -k:] = out[:, -k - 1 : -k]
    return out


def coarse_mask(
    image: np.ndarray, work_size: int = 512, closing_radius: int = 2, border: float = 0.05
) -> tuple[np.ndarray, bool]:
    """Full-size boolean hand mask of a radiograph in [0, 1], and whether it was inverted.

    The thresholding and morphology run on a copy whose longer side is `work_size` (speed, and the
    closing radius means the same thing at every input size); the mask is scaled back up.
    """
    norm, inverted = normalise_polarity(image, border)
    h, w = norm.shape
    scale = min(1.0, work_size / max(h, w))
    small = resize(norm, (max(1, round(h * scale)), max(1, round(w * scale)))) if scale < 1 else norm
    if float(small.max()) - float(small.min()) <= FLAT:
        return np.zeros((h, w), dtype=bool), inverted
    mask = restore_strip(clean_mask(drop_frame(small > otsu_threshold(small), border), closing_radius), border)
    if mask.shape != (h, w):
        mask = resize(mask.astype(np.float32), (h, w)) > 0.5
    return mask, inverted
