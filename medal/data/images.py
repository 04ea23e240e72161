"""Decode any RSNA PNG flavour to one-channel float32, and write PNGs atomically, losing nothing.

8- and 16-bit greyscale, palette, RGB and RGBA all become HxW float32 in [0, 1]; 16-bit files keep
their full range (divided by 65535, not squeezed through 8 bits). Polarity is left as it is.

Derived images (the segmentation's `roi/` and `roi_gold/`, the enhancer's `enhanced/<method>/`) are written
with `DERIVED_BITS` = 16 bits after a documented window (`hand_window`, `apply_window`): the RoI's window is
[0, the brightest pixel of the background-zeroed hand], mapped linearly to [0, 1]. Zero (the background)
stays zero, nothing inside the hand is clipped, and a 12-bit radiograph stored in a 16-bit file (values
0-4095, so at most 0.0625 after decoding) keeps all its 4096 levels: an 8-bit write without a window would
keep about 16. Reading a derived image back gives float32 with the 16-bit precision. Masks stay 8-bit binary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medal.atomic import atomic_path
from medal.errors import MedalError

_RGB_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L"


def read_image(path: str | Path) -> np.ndarray:
    """Return the image at `path` as float32 HxW in [0, 1]; raise MedalError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise MedalError(f"{path}: image file not found; restore it or remove its row from the labels")
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully now, so a truncated file fails here and not later
            return _to_float(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MedalError(f"{path}: unreadable or truncated image ({err}); re-export it or remove it") from None


def _to_float(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / scale, 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max(initial=0))
        return np.clip(arr / (top if top > 1 else 1.0), 0.0, 1.0)
    if mode in {"RGB", "RGBA", "LA"}:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if mode == "LA":
            return np.ascontiguousarray(arr[..., 0])
        return arr[..., :3] @ _RGB_WEIGHTS
    if mode in {"L", "1"}:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear float32 resize to (H, W); Pillow's filter widens on downscaling, so it anti-aliases."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape == tuple(shape):
        return arr.copy()
    pil = Image.fromarray(np.ascontiguousarray(arr), mode="F").resize((int(shape[1]), int(shape[0])),
                                                                      Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.float32)


#: Bit depth of every derived image (RoIs, gold RoIs, enhanced RoIs): 65536 levels, finer than any source.
DERIVED_BITS = 16


def hand_window(hand: np.ndarray) -> tuple[float, float]:
    """The window `(low, high)` of a background-zeroed hand image: `(0, its brightest pixel)`.

    Linear and anchored at 0, so the zeroed background stays 0 and no hand pixel is clipped; an all-zero
    image (no hand found) keeps the unit window.

    Examples:
        >>> twelve_bit = np.array([[0.0, 100.0], [4095.0, 2048.0]]) / 65535  # a 12-bit image in a 16-bit file
        >>> low, high = hand_window(twelve_bit)
        >>> low, round(high * 65535)
        (0.0, 4095)
        >>> hand_window(np.zeros((2, 2)))
        (0.0, 1.0)
    """
    high = float(np.max(hand, initial=0.0))
    return 0.0, high if high > 0 else 1.0


def apply_window(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """`image` mapped linearly from `window` = (low, high) to [0, 1], clipped, as float32.

    Examples:
        >>> apply_window(np.array([0.0, 0.03125, 0.0625]), (0.0, 0.0625)).tolist()
        [0.0, 0.5, 1.0]
    """
    low, high = window
    if not high > low:
        raise MedalError(f"window ({low}, {high}): high must be above low")
    return np.clip((np.asarray(image, dtype=np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def write_png(path: str | Path, image: np.ndarray, bits: int = 8, compress_level: int = 6) -> Path:
    """Write float [0, 1] (or bool mask) HxW as an 8- or 16-bit greyscale PNG, atomically.

    `compress_level` 1 halves the encoding time for ~15% larger files (bulk writers such as phantoms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if bits == 16:
        pil = Image.fromarray(np.round(arr * 65535).astype(np.uint16))
    elif bits == 8:
        pil = Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L")
    else:
        raise MedalError(f"bits={bits}: PNG depth must be 8 or 16")
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=compress_level)
    return path
