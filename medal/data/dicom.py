"""DICOM radiographs to float32 in [0, 1], the way a viewer shows them, with the patient's sex.

The choice (documented in docs/architecture.md): the image a radiologist reads is the *displayed* one, and
the RSNA PNGs medal trains on are such exports, so a DICOM file is rendered as a viewer renders it:

1. stored values (`BitsStored` of `BitsAllocated`, signed or not) -> the modality LUT (`RescaleSlope` /
   `RescaleIntercept`, or a Modality LUT Sequence);
2. the first VOI transform the file carries: `WindowCenter`/`WindowWidth` (with `VOILUTFunction` LINEAR,
   LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2) mapped to [0, 1], or else the first VOI LUT Sequence item
   divided by its largest entry; a file with neither is mapped linearly from its *stored* range (a 12-bit
   image in 16-bit words is divided by 4095 after the modality LUT, not by 65535);
3. `PhotometricInterpretation` MONOCHROME1 (white = low values) is inverted, so bone is always bright, as in
   MONOCHROME2 files and PNGs; RGB / YBR files become luma (ITU-R 601, as the PNG reader does).

Multi-frame objects are refused in one line (a hand radiograph is one frame), and so is a compressed
transfer syntax no installed decoder handles (the message names it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medal.errors import MedalError

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
_NOT_DICOM = (".png", ".jpg", ".jpeg")  # decoded by Pillow; not opened to look for the magic
_LUMA = np.array([0.299, 0.587, 0.114])


def is_dicom(path: str | Path) -> bool:
    """True for a DICOM Part 10 file (the `DICM` magic after the 128-byte preamble) or a `.dcm` name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _NOT_DICOM:
        return False
    try:
        with path.open("rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            return fh.read(4) == _MAGIC
    except OSError:
        return False


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 mapped to [0, 1] (float64).

    Examples:
        >>> window(np.array([0.0, 1023.75, 2047.5, 4095.0]), center=2048.0, width=4096.0).round(4).tolist()
        [0.0, 0.25, 0.5, 1.0]
        >>> window(np.array([100.0, 300.0]), 200.0, 100.0).tolist()  # outside the window: clipped
        [0.0, 1.0]
        >>> float(window(np.array([200.0]), 200.0, 100.0, "SIGMOID")[0])
        0.5
    """
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise MedalError(f"WindowWidth={width}: must be >= 1 for the LINEAR VOI function")
    return np.clip((x - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    """The first value of a DICOM multi-valued number (WindowCenter may hold several windows)."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _stored_range(ds) -> tuple[float, float]:  # noqa: ANN001 - a pydicom Dataset
    """(lowest, highest) value the stored bits can hold, through the modality LUT."""
    from pydicom.pixels import apply_modality_lut

    bits = int(ds.BitsStored)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    low, high = sorted(np.asarray(apply_modality_lut(ends, ds), dtype=np.float64).tolist())
    return low, high


def _grey(ds, pixels: np.ndarray) -> np.ndarray:  # noqa: ANN001
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "")))
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        top = float(np.max(np.asarray(item.LUTData, dtype=np.float64))) or 1.0
        return np.clip(np.asarray(apply_voi(values, ds, index=0), dtype=np.float64) / top, 0.0, 1.0)
    low, high = _stored_range(ds)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def read_dicom(path: str | Path) -> tuple[np.ndarray, str | None]:
    """(float32 HxW in [0, 1], bright bone; 'M', 'F' or None from PatientSex) of one DICOM file.

    Raises:
        MedalError: not DICOM, no pixel data, several frames, or a transfer syntax nothing here decodes.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except InvalidDicomError as err:
        raise MedalError(f"{path}: not a DICOM file ({err}); export it as DICOM Part 10, PNG or JPEG") from None
    except (AttributeError, KeyError):
        raise MedalError(f"{path}: DICOM without pixel data; it holds no image") from None
    except (NotImplementedError, RuntimeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise MedalError(f"{path}: cannot decode DICOM transfer syntax {syntax} ({err}); install a decoder "
                         "(`pip install pylibjpeg pylibjpeg-libjpeg`) or convert the file") from None
    except (OSError, ValueError, EOFError) as err:
        raise MedalError(f"{path}: unreadable or truncated DICOM ({err}); re-export it or remove it") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MedalError(f"{path}: DICOM with {frames} frames; a hand radiograph is one frame")
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if samples == 3:  # pydicom converts YBR to RGB
        image = (np.asarray(pixels, dtype=np.float64) @ _LUMA) / (2 ** int(ds.BitsStored) - 1)
    else:
        image = _grey(ds, pixels)
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
            image = 1.0 - image
    sex = str(ds.get("PatientSex", "") or "").strip().upper()[:1]
    return np.clip(image, 0.0, 1.0).astype(np.float32), (sex if sex in ("M", "F") else None)
