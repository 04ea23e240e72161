"""Decoded-image cache: each image is decoded, squared and resized once into a memory-mapped array.

Training reads rows of `<work_dir>/cache/<key>.npy` (float16 in [0, 1]; half the disk of float32 and still
finer than 8-bit) and never touches a PNG again. The key hashes every file's path, size and mtime, the
target size, the fit mode and `CACHE_VERSION`, so a changed file or setting builds a new cache. A build
writes to a temporary name and renames when complete: an interrupted build is redone, a complete one reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medal.data import images as image_io
from medal.data.parallel import iter_parallel
from medal.errors import MedalError

log = logging.getLogger("medal.data")

CACHE_VERSION = 1  # bump when decoding/resizing changes, so old caches are not reused
CACHE_DTYPE = np.float16
FITS = ("pad", "stretch")


def fit_square(image: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """Resize HxW float [0, 1] to (size, size) float32.

    `pad` pads the short side to a square first (keeping the aspect ratio) with the median of the image
    border, so a white-background (inverted) radiograph gets white bars and a normal one black bars;
    `stretch` resizes directly. PIL's bilinear filter widens its support when shrinking (antialiased).
    """
    if fit not in FITS:
        raise MedalError(f"data.fit={fit!r}: choose one of {', '.join(FITS)}")
    h, w = image.shape
    if fit == "pad" and h != w:
        side = max(h, w)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        square = np.full((side, side), float(np.median(border)), dtype=np.float32)
        y0, x0 = (side - h) // 2, (side - w) // 2
        square[y0:y0 + h, x0:x0 + w] = image
        image = square
    if image.shape != (size, size):
        resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
            (size, size), Image.Resampling.BILINEAR)
        image = np.asarray(resized, dtype=np.float32)
    return np.clip(image, 0.0, 1.0)


def load_resized(path: str | Path, size: int, fit: str = "pad") -> np.ndarray:
    """Decode one PNG and fit it to (size, size): what the cache stores and the no-cache path computes."""
    return fit_square(image_io.read_image(path), size, fit)


def cache_key(paths: Sequence[str | Path], size: int, fit: str) -> str:
    """Hash of (path, size in bytes, mtime) of every file, in order, plus the settings and code version."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{fit}|{np.dtype(CACHE_DTYPE).str}".encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"\n{Path(path).resolve()}|{stamp}".encode())
    return digest.hexdigest()[:20]


@dataclass
class CachedImages:
    """A built cache: `array[i]` is the image of `ids[i]`; `failed` maps ids that did not decode to why."""

    array: np.memmap
    ids: list[str]
    failed: dict[str, str]
    path: Path


def _decode(job: tuple[str, int, str]) -> tuple[np.ndarray | None, str | None]:
    path, size, fit = job
    try:
        return load_resized(path, size, fit).astype(CACHE_DTYPE), None
    except MedalError as err:
        return None, str(err)


def build_cache(ids: Sequence[str], paths: Sequence[str | Path], work_dir: str | Path, size: int,
                fit: str = "pad", workers: int | None = None) -> CachedImages:
    """Return the cache of `paths` at (size, fit), building it (in parallel, with a progress bar) if needed.

    Images that fail to decode are left black and listed in `failed`, so the caller decides whether
    that is fatal (`cached_images`) or a row to skip (data.strict=false).
    """
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
    if fit not in FITS:
        raise MedalError(f"data.fit={fit!r}: choose one of {', '.join(FITS)}")
    cache_dir = Path(work_dir) / "cache"
    key = cache_key(paths, size, fit)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["ids"] == list(map(str, ids)):
            log.debug("image cache hit: %s", array_path)
            array = np.load(array_path, mmap_mode="r")
            return CachedImages(array, meta["ids"], meta["failed"], array_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building image cache of %d images at %d px (%s) in %s", len(ids), size, fit, array_path)
    tmp = cache_dir / f".{key}.{os.getpid()}.npy.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=CACHE_DTYPE, shape=(len(ids), size, size))
    failed: dict[str, str] = {}
    jobs = [(str(p), size, fit) for p in paths]
    for i, (image, error) in enumerate(iter_parallel(_decode, jobs, workers=workers, desc="caching images")):
        if error is None:
            array[i] = image
        else:
            array[i] = 0
            failed[str(ids[i])] = error
    array.flush()
    del array
    meta_tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps({"ids": list(map(str, ids)), "failed": failed, "size": size, "fit": fit,
                                    "version": CACHE_VERSION}))
    meta_tmp.replace(meta_path)
    tmp.replace(array_path)  # last: a cache whose array exists is complete
    return CachedImages(np.load(array_path, mmap_mode="r"), list(map(str, ids)), failed, array_path)


def cached_images(ids: Sequence[str], paths: Sequence[str | Path], work_dir: str | Path, size: int,
                  fit: str = "pad", workers: int | None = None) -> np.memmap:
    """(N, size, size) float16 memmap in [0, 1], row i = ids[i]; raises MedalError if any image is unreadable."""
    cache = build_cache(ids, paths, work_dir, size, fit, workers=workers)
    if cache.failed:
        first = next(iter(cache.failed.values()))
        more = f" (and {len(cache.failed) - 1} more)" if len(cache.failed) > 1 else ""
        raise MedalError(f"{first}{more}; fix or remove the file, or set data.strict=false to skip it")
    return cache.array
