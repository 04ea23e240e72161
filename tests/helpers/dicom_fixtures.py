"""DICOM radiographs built from a phantom hand: CR and DX, MONOCHROME1 and 2, with and without BodyPartExamined,
left and right hands, in every lossless encoding medal reads, plus files the gate must refuse.

pydicom writes the uncompressed file and encodes RLE (its own encoder) and JPEG 2000 (pylibjpeg-openjpeg); it
cannot encode JPEG Lossless or JPEG-LS, so GDCM's transcoder (python-gdcm, `gdcm.ImageChangeTransferSyntax`)
makes those. 12-bit JPEG Extended (lossy) comes from imagecodecs' libjpeg-turbo.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

BITS = 12
#: The lossless encodings of one radiograph, by name.
ENCODINGS = {"uncompressed": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg_lossless": JPEGLosslessSV1,
             "jpeg_ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}
_SOP = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation,
        "OT": SecondaryCaptureImageStorage, "SC": SecondaryCaptureImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class Fixture:
    """One written file and what it should give: `estimated` True for a hand radiograph medal must estimate."""

    name: str
    path: Path
    modality: str
    estimated: bool
    encoding: str = "uncompressed"


def stored_pixels(image: np.ndarray, photometric: str = "MONOCHROME2", right: bool = False) -> np.ndarray:
    """The 12-bit stored values of a [0, 1] image (bright bone): inverted for MONOCHROME1, mirrored for a right
    hand (the phantom is a left hand)."""
    stored = np.round(np.clip(np.asarray(image, dtype=np.float64), 0, 1) * (2**BITS - 1)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (2**BITS - 1 - stored).astype(np.uint16)
    return np.ascontiguousarray(stored[:, ::-1] if right else stored)


def radiograph(stored: np.ndarray, *, modality: str = "CR", photometric: str = "MONOCHROME2",
               body_part: str | None = "HAND", laterality: str | None = "L", sex: str | None = "M",
               patient_age: str | None = None, birth_date: str | None = None,
               study_date: str | None = None) -> Dataset:
    """An uncompressed one-frame greyscale DICOM dataset of `stored` (12 bits in 16-bit words)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    for keyword, value in (("BodyPartExamined", body_part), ("ImageLaterality", laterality), ("PatientSex", sex),
                           ("PatientAge", patient_age), ("PatientBirthDate", birth_date), ("StudyDate", study_date)):
        if value is not None:
            setattr(ds, keyword, value)
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = np.asarray(stored, dtype="<u2").tobytes()
    return ds


def _gdcm_transcode(source: Path, target: Path, syntax: str) -> None:
    import gdcm

    codes = {JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
             JPEGLSLossless: gdcm.TransferSyntax.JPEGLSLossless}
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {source}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot transcode {source} to {syntax.name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {target}")


def write(ds: Dataset, path: Path, encoding: str = "uncompressed") -> Path:
    """`ds` saved at `path` in one of `ENCODINGS` (or `jpeg12`, lossy 12-bit JPEG Extended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoding in ("jpeg_lossless", "jpeg_ls"):
        plain = path.with_name(path.name + ".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        _gdcm_transcode(plain, path, ENCODINGS[encoding])
        plain.unlink()
        return path
    ds = copy.deepcopy(ds)
    if encoding == "jpeg12":
        import imagecodecs

        frame = imagecodecs.jpeg8_encode(ds.pixel_array.astype(np.uint16), level=95, bitspersample=BITS)
        ds.PixelData = encapsulate([frame])
        ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
        ds["PixelData"].VR = "OB"
    elif encoding in ("rle", "jpeg2000"):
        ds.compress(ENCODINGS[encoding])
    elif encoding != "uncompressed":
        raise ValueError(f"encoding {encoding!r}: one of {', '.join(ENCODINGS)} or jpeg12")
    ds.save_as(path, enforce_file_format=True)
    return path


def build(image: np.ndarray, folder: Path, sex: str = "M") -> list[Fixture]:
    """Every fixture of one phantom radiograph `image` ([0, 1], bright bone, a left hand) under `folder`."""
    out: list[Fixture] = []

    def add(name: str, modality: str, estimated: bool, ds: Dataset, encoding: str = "uncompressed") -> None:
        out.append(Fixture(name, write(ds, folder / f"{name}.dcm", encoding), modality, estimated, encoding))

    left = stored_pixels(image)
    for encoding in ENCODINGS:  # one radiograph, five encodings
        add(f"cr_mono2_{encoding}", "CR", True, radiograph(left, sex=sex, patient_age="010Y"), encoding)
    add("cr_mono1", "CR", True, radiograph(stored_pixels(image, "MONOCHROME1"), photometric="MONOCHROME1", sex=sex,
                                           birth_date="20140301", study_date="20240901"))
    add("cr_mono2_right", "CR", True, radiograph(stored_pixels(image, right=True), laterality="R", sex=sex))
    add("dx_mono2_no_body_part", "DX", True, radiograph(left, modality="DX", body_part=None, laterality=None, sex=sex))
    add("dx_mono1_right_no_body_part", "DX", True,
        radiograph(stored_pixels(image, "MONOCHROME1", right=True), modality="DX", photometric="MONOCHROME1",
                   body_part=None, laterality="R", sex=sex))
    add("ot_scanned_film", "OT", True, radiograph(left, modality="OT", body_part="", laterality="", sex=sex),
        "jpeg_lossless")
    add("cr_jpeg12", "CR", True, radiograph(left, sex=sex), "jpeg12")
    add("cr_chest", "CR", False, radiograph(left, body_part="CHEST", sex=sex))
    add("mr_labelled", "MR", False, radiograph(left, modality="MR", body_part=None, sex=sex))
    add("cr_both_hands", "CR", False, radiograph(left, laterality="B", sex=sex))
    return out
