"""Binary masks from grey maps: the one Otsu binarisation and the clean-up that makes a hand one solid blob.

Everything in medal that turns a map into a mask goes through `otsu_threshold`: the coarse phase
(radiograph intensities), the paper's Dice metric g(y) and the final full-size masks (probabilities). Otsu
is undefined on a flat map (one grey level); there the threshold is 0.5, so a flat probability map of 0.2
is all background and one of 0.8 all foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk

FLAT = 1e-6  # a map whose range is below this has no Otsu threshold
EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a map of any shape, or 0.5 when the map is flat.

    Examples:
        >>> otsu_threshold(np.array([0.1, 0.1, 0.9, 0.9])) < 0.9
        True
        >>> otsu_threshold(np.full((4, 4), 0.3))
        0.5
    """
    arr = np.asarray(values, dtype=np.float32)
    if arr.size == 0 or float(arr.max()) - float(arr.min()) <= FLAT:
        return 0.5
    return float(threshold_otsu(arr.ravel()))  # any shape: Otsu only needs the histogram


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected foreground component (empty stays empty).

    Examples:
        >>> m = np.zeros((5, 7), bool); m[1:4, 1:3] = True; m[2, 5] = True
        >>> int(largest_component(m).sum())
        6
    """
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count == 0:
        return mask.astype(bool)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background region that does not reach the border (4-connected) filled: what
    `scipy.ndimage.binary_fill_holes` gives, from one labelling of the background instead of a dilation repeated
    until it settles (about twice as fast on a 256 px hand, which `medal predict` cleans once per image).

    Examples:
        >>> ring = np.zeros((5, 5), bool); ring[1:4, 1:4] = True; ring[2, 2] = False
        >>> fill_holes(ring).astype(int).sum(), fill_holes(~ring)[0, 0]
        (np.int64(9), np.True_)
    """
    mask = np.asarray(mask, dtype=bool)
    background, count = ndimage.label(~mask)
    outside = np.zeros(count + 1, bool)
    outside[0] = True
    outside[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = True
    return mask | ~outside[background]


def clean_mask(mask: np.ndarray, closing_radius: int) -> np.ndarray:
    """Closing (skipped at radius 0), largest component, hole filling: a hand is one solid blob.

    Examples:
        >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
        >>> bool(clean_mask(ring, closing_radius=0)[3, 3])  # the hole is filled
        True
    """
    if closing_radius > 0:
        mask = closing(mask.astype(bool), disk(closing_radius))
    return fill_holes(largest_component(mask))


def binarise(prob: np.ndarray, postprocess: bool) -> np.ndarray:
    """A probability map (H, W) -> boolean mask above its Otsu threshold (the paper's g(y)); with
    `postprocess`, only the largest component, holes filled (the final masks' clean-up).

    Examples:
        >>> p = np.array([[0.1, 0.2, 0.8], [0.1, 0.9, 0.7]])
        >>> binarise(p, postprocess=False).astype(int).tolist()
        [[0, 0, 1], [0, 1, 1]]
        >>> bool(binarise(np.full((2, 2), 0.8), postprocess=True).all())  # flat: 0.5 decides
        True
    """
    mask = np.asarray(prob) > otsu_threshold(prob)
    return clean_mask(mask, closing_radius=0) if postprocess and mask.any() else mask
