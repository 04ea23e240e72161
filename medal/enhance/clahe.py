"""CLAHE baseline (paper's comparison) via kornia, accepting the int/list values YAML gives.

kornia's `equalize_clahe` wants a float clip limit and a tuple grid; Hydra hands over `2` and
`[8, 8]` (a ListConfig), which it rejects, so the conversion and checks live here once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.enhance import equalize_clahe

from medal.errors import MedalError


def clahe_params(clip_limit: float | int, grid: int | Sequence[int]) -> tuple[float, tuple[int, int]]:
    """Validate and convert config values to (float clip limit, (rows, cols) grid).

    Examples:
        >>> clahe_params(2, 8), clahe_params(3.5, [4, 2])
        ((2.0, (8, 8)), (3.5, (4, 2)))
        >>> clahe_params(0, 8)
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: enhance.clahe: clip_limit=0, grid=8: clip_limit must be > 0 and grid two ints >= 1
    """
    try:
        clip = float(clip_limit)
        cells = (int(grid), int(grid)) if isinstance(grid, int | float) else tuple(int(g) for g in grid)
    except (TypeError, ValueError):
        raise MedalError(
            f"enhance.clahe: clip_limit={clip_limit!r}, grid={grid!r}: need a number and an int or [rows, cols]"
        ) from None
    if clip <= 0 or len(cells) != 2 or min(cells) < 1:
        raise MedalError(
            f"enhance.clahe: clip_limit={clip_limit!r}, grid={grid!r}: clip_limit must be > 0 and grid two ints >= 1"
        )
    return clip, (cells[0], cells[1])


def clahe(
    images: torch.Tensor,
    clip_limit: float | int,
    grid: int | Sequence[int],
    keep_background: bool,
) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of (B, C, H, W) or (C, H, W) images in [0, 1].

    `keep_background` re-zeroes pixels that were exactly 0 (the segmented RoI's background), which
    equalisation would otherwise lift to grey.
    """
    clip, cells = clahe_params(clip_limit, grid)
    images = images.float().clamp(0, 1)
    out = equalize_clahe(images, clip_limit=clip, grid_size=cells)
    return out * (images > 0) if keep_background else out
