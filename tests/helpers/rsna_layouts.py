"""Build small RSNA data sets in the official and Kaggle layouts, with PNGs of every flavour (for the data tests).

Images are random smooth-ish noise in 8-bit L, 16-bit I;16, palette P, RGB and RGBA, so the reader,
cache and loaders meet every format the real data set has.
"""

from __future__ import annotations

import zlib
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MODES = ("L", "I;16", "P", "RGB", "RGBA")


def write_png(path: Path, rng: np.random.Generator, mode: str = "L", size: tuple[int, int] = (40, 32)) -> Path:
    """A random image of `size` (h, w) saved as a PNG of the given PIL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    base = rng.random((h, w))
    if mode == "I;16":
        img = Image.fromarray((base * 65535).astype(np.uint16))
    elif mode == "L":
        img = Image.fromarray((base * 255).astype(np.uint8), mode="L")
    elif mode == "P":
        img = Image.fromarray((base * 255).astype(np.uint8), mode="L").convert("P")
    else:
        rgb = np.stack([base, base, base], axis=-1)
        if mode == "RGBA":
            rgb = np.concatenate([rgb, np.ones((h, w, 1))], axis=-1)
        img = Image.fromarray((rgb * 255).astype(np.uint8), mode=mode)
    img.save(path)
    return path


def _people(rng: np.random.Generator, prefix: int, n: int, decimals: bool = False) -> pd.DataFrame:
    ages = rng.uniform(1, 228, n) if decimals else rng.integers(1, 229, n).astype(float)
    return pd.DataFrame({"id": [str(prefix + i) for i in range(n)], "boneage": np.round(ages, 2),
                         "male": rng.random(n) < 0.55})


def make_official(root: Path, n_train: int = 30, n_val: int = 10, n_test: int = 8, seed: int = 0,
                  size: tuple[int, int] = (40, 32), modes: tuple[str, ...] = MODES) -> pd.DataFrame:
    """Official layout under `root`; returns the truth (id, split, boneage, male, path)."""
    rng = np.random.default_rng(seed)
    flavours = cycle(modes)
    train, val, test = _people(rng, 1000, n_train), _people(rng, 5000, n_val), _people(rng, 9000, n_test, True)
    root.mkdir(parents=True, exist_ok=True)
    train.to_csv(root / "train.csv", index=False)
    if n_val:
        pd.DataFrame({"Image ID": val["id"].astype(int), "male": val["male"],
                      "Bone Age (months)": val["boneage"].astype(int)}).to_csv(root / "Validation Dataset.csv",
                                                                                index=False)
    val["boneage"] = val["boneage"].astype(int).astype(float)
    pd.DataFrame({"Case ID": test["id"].astype(int), "Sex": np.where(test["male"], "M", "F"),
                  "Ground truth bone age (months)": test["boneage"]}).to_excel(
        root / "Bone age ground truth.xlsx", index=False)
    paths = []
    for i in train["id"]:
        paths.append(write_png(root / "boneage-training-dataset" / f"{i}.png", rng, next(flavours), size))
    for k, i in enumerate(val["id"]):
        folder = f"boneage-validation-dataset-{1 + k % 2}"
        paths.append(write_png(root / folder / f"{i}.png", rng, next(flavours), size))
    for i in test["id"]:
        paths.append(write_png(root / "Test Set Images" / f"{i}.png", rng, next(flavours), size))
    truth = pd.concat([train.assign(split="train"), val.assign(split="val"), test.assign(split="test")],
                      ignore_index=True)
    return truth.assign(path=[str(p.resolve()) for p in paths])


def make_kaggle(root: Path, n_train: int = 20, n_test: int = 6, seed: int = 1,
                size: tuple[int, int] = (40, 32)) -> pd.DataFrame:
    """Kaggle mirror: doubled folders, `boneage-training-dataset.csv` with male 1/0... as True/False strings,
    `boneage-test-dataset.csv` with `Case ID, Sex` only."""
    rng = np.random.default_rng(seed)
    flavours = cycle(MODES)
    train, test = _people(rng, 1377, n_train), _people(rng, 4360, n_test)
    root.mkdir(parents=True, exist_ok=True)
    train.assign(male=train["male"].map({True: "True", False: "False"})).to_csv(
        root / "boneage-training-dataset.csv", index=False)
    pd.DataFrame({"Case ID": test["id"], "Sex": np.where(test["male"], "M", "F")}).to_csv(
        root / "boneage-test-dataset.csv", index=False)
    paths = []
    for i in train["id"]:
        paths.append(write_png(root / "boneage-training-dataset" / "boneage-training-dataset" / f"{i}.png", rng,
                               next(flavours), size))
    for i in test["id"]:
        paths.append(write_png(root / "boneage-test-dataset" / "boneage-test-dataset" / f"{i}.png", rng,
                               next(flavours), size))
    truth = pd.concat([train.assign(split="train"), test.assign(split="test", boneage=np.nan)], ignore_index=True)
    return truth.assign(path=[str(p.resolve()) for p in paths])


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file short, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _idat(data: bytes) -> tuple[int, int]:
    """(offset of the first IDAT chunk's length field, its data length) in PNG bytes."""
    at = data.index(b"IDAT") - 4
    return at, int.from_bytes(data[at:at + 4], "big")


def corrupt_crc(path: Path) -> None:
    """Flip one byte inside the first IDAT chunk and leave its stored CRC: a bit rot the chunk CRC exposes."""
    data = bytearray(path.read_bytes())
    at, _ = _idat(bytes(data))
    data[at + 8] ^= 0xFF
    path.write_bytes(bytes(data))


def garble_pixels(path: Path) -> None:
    """Replace the IDAT payload by bytes that are not a zlib stream, with a *correct* CRC: chunks look whole,
    only a decode notices."""
    data = path.read_bytes()
    at, length = _idat(data)
    junk = bytes(range(7, 7 + length)) if length < 240 else bytes((i * 7 + 3) % 256 for i in range(length))
    crc = zlib.crc32(b"IDAT" + junk).to_bytes(4, "big")
    path.write_bytes(data[:at + 8] + junk + crc + data[at + 12 + length:])


def rewrite_train_csv(root: Path, edit) -> None:  # noqa: ANN001 - edit: DataFrame -> DataFrame
    """Apply `edit` to train.csv (read as strings, so bad values can be written back verbatim)."""
    table = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    edit(table).to_csv(root / "train.csv", index=False)
