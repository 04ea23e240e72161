"""Reading new radiographs: DICOM (photometric, stored bits, rescale, window, sex), JPEG, and input discovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.dicom_files import write_dicom
from PIL import Image

from medal.data.images import decode, read_image, read_radiograph, write_png
from medal.errors import MedalError
from medal.predict.inputs import read_inputs, shard_of


@pytest.fixture
def stored() -> np.ndarray:
    """A 12-bit image: a gradient with a bright block (bone) on a dark background."""
    image = np.tile(np.linspace(0, 1500, 40), (30, 1))
    image[10:20, 15:25] = 4000
    return np.round(image).astype(int)


def test_monochrome2_and_monochrome1_12_bit_read_as_the_same_image_with_bright_bone(tmp_path, stored) -> None:
    mono2 = decode(write_dicom(tmp_path / "a.dcm", stored, sex="M"))
    mono1 = decode(write_dicom(tmp_path / "b.dcm", 4095 - stored, photometric="MONOCHROME1", sex="F"))
    np.testing.assert_allclose(mono2.image, stored / 4095, atol=1e-6)  # the stored 12 bits, not / 65535
    np.testing.assert_allclose(mono1.image, mono2.image, atol=1e-6)
    assert mono2.image[15, 20] > 0.95 and mono1.image[15, 20] > 0.95  # bone is bright either way
    assert (mono2.sex, mono1.sex) == ("M", "F")
    assert np.array_equal(read_image(tmp_path / "a.dcm"), read_radiograph(tmp_path / "a.dcm"))


def test_rescale_window_and_signed_pixels_are_honoured(tmp_path, stored) -> None:
    rescaled = read_image(write_dicom(tmp_path / "r.dcm", stored, slope=2.0, intercept=-1000.0))
    np.testing.assert_allclose(rescaled, stored / 4095, atol=1e-6)  # the stored range, through the rescale
    windowed = read_image(write_dicom(tmp_path / "w.dcm", stored, window=(750.0, 1500.0)))
    assert windowed[15, 20] == 1.0 and windowed[0, 0] == 0.0  # bone above the window saturates
    np.testing.assert_allclose(windowed[0, 20], (stored[0, 20] - 749.5) / 1499 + 0.5, atol=1e-6)
    signed = read_image(write_dicom(tmp_path / "s.dcm", stored - 2048, signed=True))
    np.testing.assert_allclose(signed, stored / 4095, atol=1e-6)


def test_bad_dicom_is_one_line_naming_the_file(tmp_path, stored) -> None:
    good = write_dicom(tmp_path / "g.dcm", stored).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.dcm").write_text("not an image")
    for name, reason in (("cut.dcm", "truncated"), ("text.dcm", "not a DICOM file")):
        with pytest.raises(MedalError, match=reason) as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_jpeg_reads_like_the_png_of_the_same_pixels(tmp_path) -> None:
    pixels = (np.tile(np.linspace(0, 255, 64), (48, 1))).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "x.jpg", quality=100)
    write_png(tmp_path / "x.png", pixels / 255.0)
    assert np.abs(read_image(tmp_path / "x.jpg") - read_image(tmp_path / "x.png")).max() < 3 / 255


def test_a_folder_input_finds_png_jpeg_and_dicom_with_or_without_suffix(tmp_path, stored) -> None:
    write_png(tmp_path / "in" / "a.png", np.zeros((8, 8)))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "b.jpeg")
    write_dicom(tmp_path / "in" / "sub" / "c", stored)  # a DICOM file without a suffix, one folder down
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "in" / ".medal" / "hidden.png", np.zeros((8, 8)))
    frame = read_inputs(tmp_path / "in")
    assert sorted(frame["id"]) == ["a", "b", "sub/c"]
    assert frame["male"].isna().all() and frame["reference"].isna().all()


def test_a_csv_input_reads_sex_and_reference_and_resolves_relative_paths(tmp_path) -> None:
    write_png(tmp_path / "imgs" / "1.png", np.zeros((8, 8)))
    pd.DataFrame({"id": ["1", "2"], "path": ["imgs/1.png", "imgs/2.png"], "male": ["M", ""],
                  "boneage": [120, None]}).to_csv(tmp_path / "list.csv", index=False)
    frame = read_inputs(tmp_path / "list.csv")
    assert frame["path"].tolist() == [str(tmp_path / "imgs" / "1.png"), str(tmp_path / "imgs" / "2.png")]
    assert frame["male"].tolist()[0] == 1.0 and np.isnan(frame["male"].tolist()[1])
    assert frame["reference"].tolist()[0] == 120.0 and frame["sex_source"].tolist() == ["csv", ""]
    pd.DataFrame({"id": ["1", "2"], "path": ["imgs/1.png", "imgs/2.png"],
                  "chronological_age": ["126.5", ""]}).to_csv(tmp_path / "ages.csv", index=False)
    ages = read_inputs(tmp_path / "ages.csv")["chronological_age"].tolist()
    assert ages[0] == 126.5 and np.isnan(ages[1])
    pd.DataFrame({"id": ["1"], "path": ["imgs/1.png"], "chronological_age": ["ten"]}).to_csv(tmp_path / "a.csv",
                                                                                              index=False)
    with pytest.raises(MedalError, match=r"a.csv:2: chronological_age='ten' is not a number of months"):
        read_inputs(tmp_path / "a.csv")
    pd.DataFrame({"id": ["1"], "file": ["imgs/1.png"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(MedalError, match=r"bad.csv: no path column"):
        read_inputs(tmp_path / "bad.csv")


def test_shards_partition_the_input_whatever_its_order() -> None:
    ids = [str(i) for i in range(1000, 1300)]
    shards = [{i for i in ids if shard_of(i, 4) == k} for k in range(4)]
    assert set().union(*shards) == set(ids) and sum(map(len, shards)) == len(ids)
    assert all(40 < len(s) < 110 for s in shards)
    assert [shard_of(i, 4) for i in reversed(ids)] == [shard_of(i, 4) for i in ids][::-1]


def test_derived_images_in_memory_equal_the_written_and_read_back_file(tmp_path) -> None:
    from medal.data.images import DERIVED_BITS, as_derived

    x = np.random.default_rng(0).random((33, 47)).astype(np.float32)
    write_png(tmp_path / "d.png", x, bits=DERIVED_BITS)
    assert np.array_equal(as_derived(x), read_image(tmp_path / "d.png"))
