"""Decode any RSNA PNG flavour (and JPEG, DICOM) to one-channel float32, and write PNGs atomically, losing nothing.

8- and 16-bit greyscale, palette, RGB and RGBA all become HxW float32 in [0, 1]; 16-bit files keep
their full range (divided by 65535, not squeezed through 8 bits). Polarity is left as it is. JPEG goes
through the same Pillow path (8-bit grey or RGB). DICOM files (`medal.data.dicom`: PatientSex,
MONOCHROME1, stored bits, rescale, VOI window) are rendered to [0, 1] by their own header, so for them
`read_image` and `read_radiograph` agree. `decode` returns both readings (and a DICOM file's sex) from one
decode, for `medal predict`, which needs the segmentation's reading and the crop's.

Windowing of the derived images (the segmentation's `roi/` and `roi_gold/`, the enhancer's
`enhanced/<method>/`): a source radiograph or gold standard is read with `read_radiograph`, which maps the
file's *stored* range linearly to [0, 1] (`stored_window`): a 16-bit file whose brightest pixel fits in b
bits (b = 8, 10, 12 or 14; a 12-bit detector stores 0-4095) is divided by 2**b - 1 instead of 65535; a file
using the full 16 bits, and every 8-bit, palette or RGB file, is read as it is. Derived images are then written
with `DERIVED_BITS` = 16 bits, so a 12-bit radiograph keeps its 4096 grey levels (an 8-bit write of the
undivided values kept about 16), the polarity flip (1 - x) works inside the stored range, and images that
already use their full range are unchanged but for the finer quantisation. Reading a derived image back gives
float32 at 16-bit precision. Masks stay 8-bit binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from medal.atomic import atomic_path
from medal.errors import MedalError

if TYPE_CHECKING:
    from medal.data.dicom import DicomHeader

_RGB_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L"
#: Bit depths a 16-bit container may really hold (`stored_window` picks the smallest that fits).
STORED_BITS: tuple[int, ...] = (8, 10, 12, 14, 16)
#: Bit depth of every derived image (RoIs, gold RoIs, enhanced RoIs): 65536 levels, finer than any source.
DERIVED_BITS = 16
#: File names `medal predict` takes as images in a folder (DICOM files without a suffix are found by content).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class Decoded:
    """One decode of a file: `image` as `read_image` gives it, `radiograph` as `read_radiograph` gives it (the
    same array unless the file is 16-bit with a narrower stored range), and `sex` ('M'/'F') where a DICOM
    header says. A DICOM file also gives its `dicom` header and `colour`, the spread between its RGB channels
    (0 for greyscale, or grey stored as colour; `medal.data.dicom.colourfulness`)."""

    image: np.ndarray
    radiograph: np.ndarray
    sex: str | None = None
    dicom: DicomHeader | None = None
    colour: float = 0.0


def decode(path: str | Path) -> Decoded:
    """Both readings of the file at `path` (and a DICOM file's PatientSex); MedalError with a one-line reason."""
    from medal.data.dicom import is_dicom, read_dicom

    if Path(path).is_file() and is_dicom(path):
        image, header, colour = read_dicom(path)
        return Decoded(image, image, header.sex, header, colour)
    image, sixteen_bit = _decode(path)
    return Decoded(image, apply_window(image, stored_window(image)) if sixteen_bit else image)


def read_image(path: str | Path) -> np.ndarray:
    """Return the image at `path` as float32 HxW in [0, 1]; raise MedalError with a one-line reason."""
    return decode(path).image


def read_radiograph(path: str | Path) -> np.ndarray:
    """A source image (raw radiograph, gold standard) as float32 HxW, its stored range mapped to [0, 1].

    16-bit files go through `stored_window`; 8-bit, palette and RGB files are read as `read_image` reads them.
    """
    return decode(path).radiograph


def stored_window(image: np.ndarray) -> tuple[float, float]:
    """The stored range of an image decoded from a 16-bit file (values / 65535): `(0, (2**b - 1) / 65535)` for
    the smallest b of `STORED_BITS` whose range holds the brightest pixel.

    Examples:
        >>> twelve_bit = np.array([[0.0, 100.0], [4095.0, 2048.0]]) / 65535  # a 12-bit image in a 16-bit file
        >>> low, high = stored_window(twelve_bit)
        >>> low, round(high * 65535)
        (0.0, 4095)
        >>> stored_window(np.array([0.0, 40000.0]) / 65535)  # uses the full 16 bits
        (0.0, 1.0)
    """
    brightest = round(float(np.max(image, initial=0.0)) * 65535)
    top = next(2**bits - 1 for bits in STORED_BITS if brightest <= 2**bits - 1)
    return 0.0, top / 65535


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


def _decode(path: str | Path) -> tuple[np.ndarray, bool]:
    """(float32 HxW in [0, 1], whether the pixels came from a 16-bit container and were divided by 65535)."""
    path = Path(path)
    if not path.is_file():
        raise MedalError(f"{path}: image file not found; restore it or remove its row from the labels")
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully now, so a truncated file fails here and not later
            return _to_float(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MedalError(f"{path}: unreadable or truncated image ({err}); re-export it or remove it") from None


def _to_float(img: Image.Image) -> tuple[np.ndarray, bool]:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float32)
        sixteen_bit = mode.startswith("I;16") or arr.max(initial=0) > 255
        return np.clip(arr / (65535.0 if sixteen_bit else 255.0), 0.0, 1.0), sixteen_bit
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max(initial=0))
        return np.clip(arr / (top if top > 1 else 1.0), 0.0, 1.0), False
    if mode in {"RGB", "RGBA", "LA"}:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if mode == "LA":
            return np.ascontiguousarray(arr[..., 0]), False
        return arr[..., :3] @ _RGB_WEIGHTS, False
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, False


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear float32 resize to (H, W); Pillow's filter widens on downscaling, so it anti-aliases."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape == tuple(shape):
        return arr.copy()
    pil = Image.fromarray(np.ascontiguousarray(arr), mode="F").resize((int(shape[1]), int(shape[0])),
                                                                      Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.float32)


def _encode(image: np.ndarray, bits: int) -> np.ndarray:
    """The integer pixels `write_png` stores for float [0, 1] (or bool) HxW: uint8 or uint16."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if bits == 16:
        return np.round(arr * 65535).astype(np.uint16)
    if bits == 8:
        return np.round(arr * 255).astype(np.uint8)
    raise MedalError(f"bits={bits}: PNG depth must be 8 or 16")


def as_derived(image: np.ndarray) -> np.ndarray:
    """What writing `image` as a derived image (`write_png(..., bits=DERIVED_BITS)`) and `read_image` give back:
    the same float32 values, without the file. `medal predict` keeps its RoIs in memory and passes them through
    this wherever the training chain wrote and re-read a file, so its numbers equal the chain's.

    Examples:
        >>> x = np.array([[0.0, 0.1234567], [0.5, 1.2]], dtype=np.float32)
        >>> back = as_derived(x)
        >>> back.dtype, float(back[1, 1]), abs(float(back[0, 1]) - 0.1234567) < 1 / 65535
        (dtype('float32'), 1.0, True)
    """
    return _encode(image, DERIVED_BITS).astype(np.float32) / 65535.0


def write_png(path: str | Path, image: np.ndarray, bits: int = 8, compress_level: int = 6) -> Path:
    """Write float [0, 1] (or bool mask) HxW as an 8- or 16-bit greyscale PNG, atomically.

    `compress_level` 1 halves the encoding time for ~15% larger files (bulk writers such as phantoms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _encode(image, bits)
    pil = Image.fromarray(pixels) if bits == 16 else Image.fromarray(pixels, mode="L")
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=compress_level)
    return path
