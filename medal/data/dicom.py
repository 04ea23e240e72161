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
transfer syntax no installed decoder handles (the message names it, and what each decoder said: their
tracebacks stay out of the log, `medal.data.dicom_codecs.quiet`). Which library decodes which syntax:
`medal.data.dicom_codecs`.

`DicomHeader` holds the attributes `medal predict` judges a file by before it estimates anything (Modality,
frames, samples, photometric interpretation, BodyPartExamined, laterality) and those that give the patient's
age (PatientAge, PatientBirthDate with the study's date); a missing or blank attribute is None (unknown). Its
`read_header` reads them without decoding the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medal.data import dicom_codecs
from medal.errors import MedalError

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
_NOT_DICOM = (".png", ".jpg", ".jpeg")  # decoded by Pillow; not opened to look for the magic
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class DicomHeader:
    """What a file's header says about the image and the patient; None where the attribute is missing or blank.

    `birth_date` is read only to compute an age (`medal.predict.chronology`); it is never written out.
    """

    modality: str | None
    frames: int
    samples_per_pixel: int
    photometric: str | None
    body_part: str | None  # BodyPartExamined
    laterality: str | None  # ImageLaterality, else (series) Laterality: L, R, B (both) or U (unpaired)
    view: str | None  # ViewPosition (PA, AP, ...)
    sex: str | None  # 'M' or 'F'
    patient_age: str | None  # PatientAge as written (AS: nnnD, nnnW, nnnM or nnnY)
    birth_date: str | None  # PatientBirthDate (YYYYMMDD)
    study_date: str | None  # StudyDate, else AcquisitionDate, SeriesDate, ContentDate (YYYYMMDD)
    transfer_syntax: str


def _text(ds: Any, *keywords: str) -> str | None:
    """The first non-blank value among `keywords`, stripped and upper-cased; None when all are missing or blank."""
    for keyword in keywords:
        value = ds.get(keyword, None)
        text = "" if value is None else str(value).strip().upper()
        if text:
            return text
    return None


def header_of(ds: Any) -> DicomHeader:  # a pydicom Dataset
    """The `DicomHeader` of a read dataset."""
    sex = _text(ds, "PatientSex")
    meta = getattr(ds, "file_meta", None)
    return DicomHeader(
        modality=_text(ds, "Modality"), frames=int(_text(ds, "NumberOfFrames") or 1),
        samples_per_pixel=int(_text(ds, "SamplesPerPixel") or 1), photometric=_text(ds, "PhotometricInterpretation"),
        body_part=_text(ds, "BodyPartExamined"), laterality=_text(ds, "ImageLaterality", "Laterality"),
        view=_text(ds, "ViewPosition"), sex=sex[:1] if sex and sex[:1] in ("M", "F") else None,
        patient_age=_text(ds, "PatientAge"), birth_date=_text(ds, "PatientBirthDate"),
        study_date=_text(ds, "StudyDate", "AcquisitionDate", "SeriesDate", "ContentDate"),
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or "unknown"))


def read_header(path: str | Path) -> DicomHeader:
    """The header of the DICOM file at `path`, pixels not decoded; MedalError when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with dicom_codecs.quiet():
            return header_of(pydicom.dcmread(path, stop_before_pixels=True))
    except InvalidDicomError as err:
        raise MedalError(f"{path}: not a DICOM file ({err}); export it as DICOM Part 10, PNG or JPEG") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
        raise MedalError(f"{path}: unreadable or truncated DICOM header ({err}); re-export it or remove it") from None


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


def colourfulness(rgb: np.ndarray) -> float:
    """Mean spread between the channels of an RGB image (values in [0, 1]): 0 for grey stored as colour.

    Examples:
        >>> grey = np.repeat(np.linspace(0, 1, 12).reshape(3, 4, 1), 3, axis=2)
        >>> colourfulness(grey)
        0.0
        >>> bars = np.zeros((2, 3, 3)); bars[:, 0, 0] = bars[:, 1, 1] = bars[:, 2, 2] = 1.0
        >>> colourfulness(bars)
        1.0
    """
    x = np.asarray(rgb, dtype=np.float64)
    return float(np.mean(x.max(axis=-1) - x.min(axis=-1)))


def read_dicom(path: str | Path) -> tuple[np.ndarray, DicomHeader, float]:
    """(float32 HxW in [0, 1], bright bone; its header; the colourfulness of a colour file, else 0) of one file.

    Raises:
        MedalError: not DICOM, no pixel data, several frames, or a transfer syntax nothing here decodes.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    dicom_codecs.register()
    with dicom_codecs.quiet() as notes:
        try:
            ds = pydicom.dcmread(path)
            header = header_of(ds)
            if header.frames > 1:
                raise MedalError(f"{path}: DICOM with {header.frames} frames; a hand radiograph is one frame")
            pixels = ds.pixel_array
        except InvalidDicomError as err:
            raise MedalError(f"{path}: not a DICOM file ({err}); export it as DICOM Part 10, PNG or JPEG") from None
        except (AttributeError, KeyError):
            raise MedalError(f"{path}: DICOM without pixel data; it holds no image") from None
        except (NotImplementedError, RuntimeError) as err:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax or "unknown")
            said = "; ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err).splitlines()[0]
            raise MedalError(f"{path}: cannot decode DICOM transfer syntax {name} ({said}); convert the file to "
                             "an uncompressed or lossless syntax medal reads (README: DICOM)") from None
        except (OSError, ValueError, EOFError, TypeError) as err:
            raise MedalError(f"{path}: unreadable or truncated DICOM ({str(err).splitlines()[0] if str(err) else err!r}); "
                             "re-export it or remove it") from None
    del notes  # pydicom's complaints about a file it decoded after all: not medal's to report
    colour = 0.0
    if header.samples_per_pixel == 3:  # pydicom converts YBR to RGB
        rgb = np.asarray(pixels, dtype=np.float64) / (2 ** int(ds.BitsStored) - 1)
        image, colour = rgb @ _LUMA, colourfulness(rgb)
    else:
        image = _grey(ds, pixels)
        if header.photometric == "MONOCHROME1":
            image = 1.0 - image
    return np.clip(image, 0.0, 1.0).astype(np.float32), header, colour
