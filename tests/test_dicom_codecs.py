"""Which library decodes which DICOM transfer syntax (medal.data.dicom_codecs), proven on a phantom radiograph in
every lossless encoding; quiet one-line failures; and the header gate (medal.predict.gate) on the fixtures."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import dicom_fixtures
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

from medal.data.dicom import read_header
from medal.data.dicom_codecs import register
from medal.data.images import decode
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.predict.gate import GateOptions, refusal
from medal.predict.ood import threshold

#: The documented table (medal.data.dicom_codecs): syntax of each fixture encoding -> the plugin that decodes it.
DECODED_BY = {"uncompressed": None, "rle": "pydicom", "jpeg_lossless": "gdcm", "jpeg_ls": "gdcm",
              "jpeg2000": "pylibjpeg", "jpeg12": "medal-imagecodecs"}


@pytest.fixture(scope="module")
def fixtures(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dicom_fixtures.Fixture]:
    row = read_index(tiny_phantoms, strict=False).iloc[0]
    image = decode(row["path"]).radiograph
    built = dicom_fixtures.build(image, tmp_path_factory.mktemp("dicom_fixtures"))
    return {f.name: f for f in built}


def test_every_lossless_encoding_decodes_to_the_same_pixels(fixtures) -> None:
    plain = decode(fixtures["cr_mono2_uncompressed"].path)
    for encoding in dicom_fixtures.ENCODINGS:
        fixture = fixtures[f"cr_mono2_{encoding}"]
        assert str(pydicom.dcmread(fixture.path).file_meta.TransferSyntaxUID) == dicom_fixtures.ENCODINGS[encoding]
        assert np.array_equal(decode(fixture.path).image, plain.image), encoding
    mono1 = decode(fixtures["cr_mono1"].path).image
    np.testing.assert_allclose(mono1, plain.image, atol=1e-6)  # inverted storage, same picture
    right = decode(fixtures["cr_mono2_right"].path)
    assert right.dicom.laterality == "R" and np.array_equal(right.image[:, ::-1], plain.image)


def test_each_syntax_is_decoded_by_the_library_the_table_names_and_no_gpl_decoder_is_needed(fixtures) -> None:
    register()
    assert importlib.util.find_spec("libjpeg") is None  # pylibjpeg-libjpeg (GPLv3) is not installed
    reference = pydicom.dcmread(fixtures["cr_mono2_uncompressed"].path).pixel_array
    for encoding, plugin in DECODED_BY.items():
        if plugin is None:
            continue
        name = "cr_jpeg12" if encoding == "jpeg12" else f"cr_mono2_{encoding}"
        pixels = pixel_array(pydicom.dcmread(fixtures[name].path), decoding_plugin=plugin)
        tolerance = 16 if encoding == "jpeg12" else 0  # lossy at quality 95: a few of 4096 levels
        assert np.abs(pixels.astype(int) - reference.astype(int)).max() <= tolerance, encoding
    for encoding in ("jpeg_lossless", "jpeg_ls"):  # nothing but GDCM reads these here
        with pytest.raises(RuntimeError):
            pixel_array(pydicom.dcmread(fixtures[f"cr_mono2_{encoding}"].path), decoding_plugin="pylibjpeg")


def test_pydicom_s_own_12_bit_jpeg_files_decode(fixtures) -> None:
    for name in ("JPGExtended.dcm", "JPEG-lossy.dcm"):  # 12-bit JPEG Extended, shipped with pydicom
        image = decode(get_testdata_file(name)).image
        assert image.shape == (1024, 256) and float(image.std()) > 0


def test_an_undecodable_file_is_one_line_naming_each_decoder_and_logs_no_traceback(
        fixtures, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    ds = pydicom.dcmread(fixtures["cr_mono2_jpeg2000"].path)
    frame = bytearray(ds.PixelData)
    frame[40:400] = bytes(360)  # the codestream's header and first tiles zeroed
    ds.PixelData = bytes(frame)
    ds.save_as(tmp_path / "broken.dcm")
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), pytest.raises(MedalError) as err:
        decode(tmp_path / "broken.dcm")
    message = str(err.value)
    assert "broken.dcm: cannot decode DICOM transfer syntax JPEG 2000" in message and "\n" not in message
    assert "pylibjpeg" in message or "gdcm" in message
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # pydicom's tracebacks kept out
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out


def test_the_header_gate_refuses_what_the_attributes_say_and_passes_the_unknown(fixtures) -> None:
    options = GateOptions(["CR", "DX", "RG", "OT", "SC"], ["HAND", "WRIST"], ["MONOCHROME1", "MONOCHROME2", "RGB"],
                          1, 0.02, "mirror", True)
    reasons = {name: refusal(read_header(f.path), options) for name, f in fixtures.items()}
    assert {name for name, reason in reasons.items() if reason} == {"cr_chest", "mr_labelled", "cr_both_hands"}
    assert reasons["mr_labelled"].startswith("Modality MR is not a projection radiograph")
    assert reasons["cr_chest"].startswith("BodyPartExamined CHEST is not a hand")
    assert read_header(fixtures["ot_scanned_film"].path).body_part is None  # blank: unknown, not a refusal
    refuse_right = GateOptions(**{**options.__dict__, "laterality": "refuse"})
    assert "right hand" in refusal(read_header(fixtures["cr_mono2_right"].path), refuse_right)


def test_the_ood_threshold_is_the_conformal_rank_of_the_calibration_scores() -> None:
    scores = np.random.default_rng(0).random(199)
    limit = threshold(scores, 0.05)  # k = ceil(200 * 0.95) = 190
    assert limit == np.sort(scores)[189] and (scores > limit).mean() <= 0.05
