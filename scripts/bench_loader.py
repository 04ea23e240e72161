"""Benchmark: images/s of the cached bone age loader versus decoding the PNGs, same images, same run.

Writes ~200 radiograph-sized PNGs (512-1024 px, 8- and 16-bit) to a temp dir, then times
(1) a loader that decodes and resizes every PNG per item (what training without the cache does),
(2) building the cache (once per data set, size and fit; parallel over the cores), and
(3) the cached loader, which reads rows of the memory-mapped array.
Results: outputs/bench/loader.json and .md (`medal.bench.write_bench`).

    python scripts/bench_loader.py [--n 200] [--size 299]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader

from medal.bench import BenchRow, write_bench
from medal.data.cache import build_cache
from medal.data.datamodule import BoneAgeDataset, collate_batches
from medal.data.parallel import default_workers, parallel_map


def _write_one(job: tuple[Path, int]) -> str:
    """A smooth hand-sized blob plus noise (compresses like a radiograph, unlike pure noise)."""
    path, seed = job
    rng = np.random.default_rng(seed)
    h, w = rng.integers(512, 1025, 2)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.08) + 0.05 * rng.standard_normal((h, w))
    image = np.clip(image, 0, 1)
    if seed % 2:
        Image.fromarray((image * 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray((image * 255).astype(np.uint8), mode="L").save(path)
    return str(path)


def _images_per_s(loader: DataLoader, epochs: int) -> float:
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            seen += len(batch["id"])
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    workers = min(2, default_workers())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "png").mkdir()
        paths = parallel_map(_write_one, [(root / "png" / f"{i}.png", i) for i in range(args.n)], workers=workers,
                             desc="writing PNGs")
        frame = pd.DataFrame({"id": [str(i) for i in range(args.n)], "path": paths,
                              "boneage": np.linspace(1, 228, args.n), "male": np.arange(args.n) % 2 == 0})

        decode = DataLoader(BoneAgeDataset(frame, args.size), batch_size=args.batch_size, collate_fn=collate_batches)
        decode_rate = _images_per_s(decode, epochs=1)

        started = time.perf_counter()
        cache = build_cache(frame["id"].tolist(), paths, root / "work", args.size, workers=workers)
        build_rate = args.n / (time.perf_counter() - started)

        cached_set = BoneAgeDataset(frame.assign(row=np.arange(args.n)), args.size, cache_path=cache.path)
        cached = DataLoader(cached_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate_batches)
        _images_per_s(cached, epochs=1)  # first touch pages the file in, as the first epoch of a run does
        cached_rate = _images_per_s(cached, epochs=5)

    baseline = f"decode + resize PNG per item (1 process, {args.n} PNGs 512-1024 px)"
    rows = [
        BenchRow("cached loader", cached_rate, "img/s", baseline, decode_rate,
                 extra={"image_size": args.size, "batch_size": args.batch_size, "num_workers": 0}),
        BenchRow(f"cache build ({workers} processes, once per data set)", build_rate, "img/s", baseline, decode_rate,
                 extra={"workers": workers}),
    ]
    notes = (f"{args.n} generated PNGs (8/16-bit, 512-1024 px) resized to {args.size} px; the cached loader reads "
             "float16 rows of a memory-mapped array. Real RSNA images are 1500-2500 px, so decoding costs more.")
    path = write_bench("loader", rows, notes)
    for row in rows:
        print(f"{row.figure}: {row.value:.1f} img/s vs {row.baseline_value:.1f} img/s -> {row.ratio:.1f}x")
    print(f"written {path}")


if __name__ == "__main__":
    main()
