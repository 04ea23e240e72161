"""Data sets of any size from a few hundred distinct phantoms: hard links under new ids, in a valid RSNA layout.

A disk holds neither 12,611 distinct 1,300-px radiographs nor 100,000 of them, and no stage's cost depends on
whether two files hold the same pixels. So the scale benchmark generates `base` phantoms once and builds each
size as a layout of hard links (`scaled_layout`): n training images, the validation and test splits in RSNA's
proportions (1,425 and 200 per 12,611), the official label files (`train.csv`, `Validation Dataset.csv`,
`Bone age ground truth.xlsx`), each image's mask, gold standard and bone map under the same new id, and
`phantoms.csv` with each copy's recorded facts. Labels travel with the pixels: copy k of base image j has j's age
and sex. A flat folder of links (`archive_folder`) is what `medal predict` reads as an archive.

What the links hide: every copy of one base image is the same file, so after the first read it comes from the page
cache; a stage that would read 20 GB from a real disk reads ~1 GB here. The benchmark says so beside the numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medal.atomic import write_json
from medal.data.phantom.dataset import BONES_DIR, SPLIT_DIRS
from medal.data.phantom.floor import SIDECAR

#: RSNA Pediatric Bone Age: training, validation and test images
RSNA_TRAIN, RSNA_VAL, RSNA_TEST = 12_611, 1_425, 200
ID_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}
DONE = ".medal/scale_layout.json"


def split_sizes(n_train: int) -> dict[str, int]:
    """Training, validation and test images of a layout with `n_train` training images, in RSNA's proportions.

    Examples:
        >>> split_sizes(12_611)
        {'train': 12611, 'val': 1425, 'test': 200}
        >>> split_sizes(500)
        {'train': 500, 'val': 56, 'test': 8}
    """
    return {"train": n_train, "val": max(1, round(n_train * RSNA_VAL / RSNA_TRAIN)),
            "test": max(1, round(n_train * RSNA_TEST / RSNA_TRAIN))}


def _link(source: Path, target: Path) -> None:
    if not target.exists():
        os.link(source, target)


def _done(out: Path, spec: dict) -> bool:
    path = out / DONE
    return path.is_file() and json.loads(path.read_text()) == spec


def scaled_layout(base: Path, out: Path, n_train: int, extras: bool = True) -> Path:
    """An RSNA-layout data set of `n_train` training images (+ validation and test, `split_sizes`) at `out`, made
    of hard links to the phantom set `base`; `extras` also links masks/, gold/ and bones/. Reused when complete."""
    base, out = Path(base), Path(out)
    spec = {"base": str(base.resolve()), "n_train": int(n_train), "extras": bool(extras), "version": 1}
    if _done(out, spec):
        return out
    meta = pd.read_csv(base / SIDECAR, dtype={"id": str, "hard": str}, keep_default_na=False)
    rows, k = [], 0
    for split, count in split_sizes(n_train).items():
        folders = SPLIT_DIRS[split]
        for i in range(count):
            src = meta.iloc[k % len(meta)]
            k += 1
            new_id = str(ID_BASE[split] + i)
            folder = folders[i % len(folders)]
            age = float(src["boneage"])
            age = round(age, 2) if split == "test" else float(np.clip(round(age), 1, 228))
            rows.append({**src.to_dict(), "id": new_id, "split": split, "boneage": age, "path": f"{folder}/{new_id}.png",
                         "source_id": src["id"], "source_path": src["path"]})
    table = pd.DataFrame(rows)
    for folder in {d for dirs in SPLIT_DIRS.values() for d in dirs} | ({"masks", "gold", BONES_DIR} if extras else set()):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for r in table.itertuples(index=False):
        _link(base / r.source_path, out / r.path)
        if extras:
            for folder in ("masks", "gold", BONES_DIR):
                _link(base / folder / f"{r.source_id}.png", out / folder / f"{r.id}.png")
    train, val, test = (table[table["split"] == s] for s in ("train", "val", "test"))
    pd.DataFrame({"id": train["id"].astype(int), "boneage": train["boneage"].astype(int),
                  "male": train["male"]}).to_csv(out / "train.csv", index=False)
    pd.DataFrame({"Image ID": val["id"].astype(int), "male": val["male"],
                  "Bone Age (months)": val["boneage"].astype(int)}).to_csv(out / "Validation Dataset.csv", index=False)
    pd.DataFrame({"Case ID": test["id"].astype(int), "Sex": np.where(test["male"].astype(bool), "M", "F"),
                  "Ground truth bone age (months)": test["boneage"].astype(float)}).to_excel(
        out / "Bone age ground truth.xlsx", index=False, engine="openpyxl")
    table.drop(columns=["source_path"]).to_csv(out / SIDECAR, index=False)  # source_id: which base image
    write_json(out / DONE, spec)
    return out


def layout_table(layout: Path) -> pd.DataFrame:
    """The layout's `phantoms.csv` (id, split, boneage, male, inverted, path, ...), ids as text."""
    return pd.read_csv(Path(layout) / SIDECAR, dtype={"id": str, "hard": str, "source_id": str},
                       keep_default_na=False)


def archive_folder(base: Path, out: Path, n: int) -> Path:
    """A flat folder of `n` radiographs (`a0000000.png`, ...), hard links to the phantom set `base`: an archive
    as `medal predict input=<folder>` reads it. Reused when complete."""
    base, out = Path(base), Path(out)
    spec = {"base": str(base.resolve()), "n": int(n), "version": 1}
    if _done(out, spec):
        return out
    meta = pd.read_csv(base / SIDECAR, dtype={"id": str}, keep_default_na=False)
    out.mkdir(parents=True, exist_ok=True)
    paths = meta["path"].tolist()
    for i in range(n):
        _link(base / paths[i % len(paths)], out / f"a{i:07d}.png")
    write_json(out / DONE, spec)
    return out


def linked_folder(source: Path, out: Path, ids: list[str], source_ids: list[str]) -> Path:
    """`out/<id>.png` linked to `source/<source_id>.png` for every pair (RoIs of a scaled layout). Reused when
    complete."""
    spec = {"source": str(Path(source).resolve()), "n": len(ids), "version": 1}
    if _done(Path(out), spec):
        return Path(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    for new, old in zip(ids, source_ids, strict=True):
        _link(Path(source) / f"{old}.png", Path(out) / f"{new}.png")
    write_json(Path(out) / DONE, spec)
    return Path(out)


def seeded_cache(base: Path, base_work: Path, work: Path, ids: list[str], paths: list[str], source_ids: list[str],
                 size: int, fit: str, folder: str = "") -> Path:
    """The image cache (`medal.data.cache`) of the layout files `paths` (ids `ids`, copies of base images
    `source_ids`) at (size, fit) under `work`, its rows copied from the cache of the base's own images (under
    `base_work`, built once from the PNGs) instead of decoding every link again: the same array and record that
    `cached_images` would build, in the minutes a 100,000-image layout would otherwise take hours for. `folder`
    is where the base's files live relative to `base` ("" for images at their phantoms.csv path, "masks" for
    masks). Reused when complete."""
    from medal.data.cache import CACHE_DTYPE, CACHE_VERSION, build_cache, cache_key

    key = cache_key(paths, size, fit)
    cache_dir = Path(work) / "cache"
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        return array_path
    meta = pd.read_csv(Path(base) / SIDECAR, dtype={"id": str}, keep_default_na=False)
    base_ids = meta["id"].tolist()
    base_paths = [str(Path(base) / (f"{folder}/{i}.png" if folder else p)) for i, p in zip(base_ids, meta["path"],
                                                                                            strict=True)]
    source = build_cache(base_ids, base_paths, base_work, size, fit, workers=2)
    row = {image_id: r for r, image_id in enumerate(base_ids)}
    rows = np.array([row[s] for s in source_ids], dtype=np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{key}.seeded.npy"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=CACHE_DTYPE, shape=(len(ids), size, size))
    for start in range(0, len(ids), 1024):
        array[start:start + 1024] = source.array[rows[start:start + 1024]]
    array.flush()
    del array
    write_json(meta_path, {"ids": [str(i) for i in ids], "failed": {}, "size": size, "fit": fit,
                           "version": CACHE_VERSION})
    partial.replace(array_path)
    return array_path
