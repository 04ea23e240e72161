"""The RSNA layout reader: official and Kaggle layouts, every PNG flavour, and every kind of bad row."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.rsna_layouts import make_kaggle, make_official, rewrite_train_csv, write_png
from PIL import Image

from medal.data.images import read_image
from medal.data.rsna import INDEX_COLUMNS, parse_male, read_index, scan
from medal.errors import MedalError


@pytest.fixture
def official(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / "rsna"
    return root, make_official(root)


def test_official_layout_reads_all_three_splits(official: tuple[Path, pd.DataFrame]) -> None:
    root, truth = official
    index = read_index(root)
    assert list(index.columns) == INDEX_COLUMNS
    assert index["split"].value_counts().to_dict() == truth["split"].value_counts().to_dict()
    merged = truth.merge(index, on="id", suffixes=("_true", ""))
    assert len(merged) == len(truth)
    assert (merged["split_true"] == merged["split"]).all()
    np.testing.assert_allclose(merged["boneage"], merged["boneage_true"])
    assert (merged["male"] == merged["male_true"]).all()
    assert (merged["path"] == merged["path_true"]).all()
    assert index["male"].dtype == bool and index["boneage"].dtype == np.float64
    test_ages = index.loc[index["split"] == "test", "boneage"]
    assert (test_ages % 1 != 0).any()  # the ground-truth sheet's decimal ages survive


def test_kaggle_layout_doubled_folders_and_unlabelled_test(tmp_path: Path) -> None:
    truth = make_kaggle(tmp_path / "kaggle")
    index = read_index(tmp_path / "kaggle")
    assert sorted(index["id"]) == sorted(truth["id"])
    test = index[index["split"] == "test"]
    assert len(test) == 6 and test["boneage"].isna().all()
    train = index[index["split"] == "train"].merge(truth, on="id")
    assert (train["male_x"] == train["male_y"]).all()
    assert all("boneage-training-dataset/boneage-training-dataset/" in p for p in train["path_x"])


def test_official_archive_one_folder_down(tmp_path: Path) -> None:
    """The official downloads unpack into `Bone Age Training Set/` etc.; files one level down are found."""
    flat = tmp_path / "flat"
    truth = make_official(flat, n_train=6, n_val=4, n_test=3)
    nested = tmp_path / "nested"
    shutil.copytree(flat, nested / "Bone Age Training Set", ignore=shutil.ignore_patterns("Test*", "Bone age*"))
    (nested / "Bone Age Test Set").mkdir()
    shutil.copytree(flat / "Test Set Images", nested / "Bone Age Test Set" / "Test Set Images")
    shutil.copy(flat / "Bone age ground truth.xlsx", nested / "Bone Age Test Set")
    index = read_index(nested)
    assert sorted(index["id"]) == sorted(truth["id"])


@pytest.mark.parametrize(("value", "male"), [
    (True, True), (False, False), ("True", True), ("false", False), (1, True), (0, False), ("1", True),
    ("M", True), ("F", False), (" female ", False), ("X", None), ("", None)])
def test_parse_male(value: object, male: bool | None) -> None:
    assert parse_male(value) is male


def test_reader_keeps_16bit_range_and_handles_palette_rgb(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "16.png")
    image16 = read_image(tmp_path / "16.png")
    assert image16.dtype == np.float32 and image16.shape == (64, 64)
    assert image16.max() == pytest.approx(1.0) and image16.min() == 0.0
    assert len(np.unique(image16)) > 1000  # not squeezed through 8 bits
    rng = np.random.default_rng(0)
    for mode in ("L", "P", "RGB", "RGBA"):
        image = read_image(write_png(tmp_path / f"{mode}.png", rng, mode, size=(30, 20)))
        assert image.shape == (30, 20), mode
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1 and image.std() > 0.1, mode


# Each bad input: (edit to the data set, text the one-line message must contain, id of the dropped row or None)
def _missing_image(root: Path) -> None:
    (root / "boneage-training-dataset" / "1003.png").unlink()


def _duplicate(root: Path) -> None:
    rewrite_train_csv(root, lambda t: pd.concat([t, t.iloc[[4]]], ignore_index=True))


def _set(row: int, column: str, value: str):  # noqa: ANN202
    def edit(root: Path) -> None:
        def change(t: pd.DataFrame) -> pd.DataFrame:
            t.loc[row, column] = value
            return t
        rewrite_train_csv(root, change)
    return edit


def _image_without_row(root: Path) -> None:
    write_png(root / "boneage-training-dataset" / "777.png", np.random.default_rng(0))


def _missing_labels(root: Path) -> None:
    (root / "Validation Dataset.csv").unlink()


BAD_INPUTS = {
    "missing image": (_missing_image, "train.csv:5: id 1003: image 1003.png not found", "1003"),
    "duplicate id": (_duplicate, "train.csv:32: duplicate id 1004 (first at", "1004"),
    "non-numeric age": (_set(2, "boneage", "abc"), "train.csv:4: id 1002: bone age 'abc' is not a number", "1002"),
    "age out of range": (_set(6, "boneage", "500"), "train.csv:8: id 1006: bone age 500 months is outside", "1006"),
    "unknown sex": (_set(7, "male", "X"), "train.csv:9: id 1007: unknown sex 'X'", "1007"),
    "image without row": (_image_without_row, "777.png: image has no row in train.csv", None),
    "missing labels file": (_missing_labels, "labels file missing for the val images: expected "
                                             "Validation Dataset.csv", None),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_strict_refuses_with_one_line(official: tuple[Path, pd.DataFrame], kind: str) -> None:
    root, _ = official
    edit, expected, _ = BAD_INPUTS[kind]
    edit(root)
    with pytest.raises(MedalError) as err:
        read_index(root, strict=True)
    message = str(err.value)
    assert "\n" not in message
    assert expected in message
    assert "data.strict=false" in message


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_lenient_drops_the_row_with_one_warning(official: tuple[Path, pd.DataFrame], kind: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    root, truth = official
    edit, expected, bad_id = BAD_INPUTS[kind]
    edit(root)
    with caplog.at_level(logging.WARNING, logger="medal.data"):
        index = read_index(root, strict=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and expected in warnings[0].getMessage()
    if bad_id is not None:
        assert bad_id not in set(index["id"])
        assert len(index) == len(truth) - 1
    if kind == "missing labels file":
        assert "val" not in set(index["split"])
    assert index["boneage"].loc[index["split"] != "test"].between(0, 240).all()


def test_all_problems_are_collected_not_just_the_first(official: tuple[Path, pd.DataFrame]) -> None:
    root, _ = official
    for edit, _, _ in BAD_INPUTS.values():
        edit(root)
    found = "\n".join(str(p) for p in scan(root).problems)
    for _, expected, _ in BAD_INPUTS.values():
        assert expected in found


def test_no_data_set_at_root(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="folder not found"):
        read_index(tmp_path / "nowhere")
    with pytest.raises(MedalError, match="no RSNA training labels"):
        read_index(tmp_path)
