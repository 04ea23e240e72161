"""Benchmark: phantom generation images/s at 512 px, 2 worker processes versus 1, in the same run.

Writes outputs/bench/phantoms.{json,md}. Each figure generates a fresh data set in a temporary folder
(PNG writing included, exactly what `medal phantoms` does).
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

from medal.bench import BenchRow, write_bench
from medal.data.phantom import generate_dataset


def images_per_s(n: int, image_size: int, workers: int) -> tuple[float, float]:
    """Generate `n` phantoms from scratch; return images per second of wall time and per CPU-second.

    CPU time counts this process and its finished worker processes, so the CPU figure does not depend
    on what else shares the machine (wall-clock figures do).
    """

    def cpu_seconds() -> float:
        own, workers_ = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + workers_.ru_utime + workers_.ru_stime

    with tempfile.TemporaryDirectory(prefix="bench_phantoms_") as tmp:
        wall, cpu = time.perf_counter(), cpu_seconds()
        generate_dataset(
            Path(tmp) / "set", n=n, seed=0, image_size=image_size, workers=workers, progress=False
        )
        return n / (time.perf_counter() - wall), n / max(cpu_seconds() - cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=96, help="images per measurement")
    parser.add_argument("--image-size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    images_per_s(4, args.image_size, 1)  # warm-up: imports, font cache
    one, one_cpu = images_per_s(args.n, args.image_size, 1)
    two, two_cpu = images_per_s(args.n, args.image_size, 2)
    size = args.image_size
    rows = [
        BenchRow(
            f"phantom generation, 2 workers, {size} px",
            two,
            "images/s",
            "1 worker",
            one,
            extra={
                "n": args.n,
                "minutes_per_3000_images": 3000 / two / 60,
                "images_per_cpu_s_1_worker": one_cpu,
                "images_per_cpu_s_2_workers": two_cpu,
            },
        ),
    ]
    notes = (
        f"{args.n} phantoms at {size} px per measurement (render + nuisances + three PNGs each); "
        f"1 worker: {one:.2f} images/s ({one_cpu:.2f} per CPU-second), "
        f"2 workers: {two:.2f} images/s ({two_cpu:.2f} per CPU-second). "
        "Wall-clock figures depend on what else shares the cores."
    )
    path = write_bench("phantoms", rows, notes)
    print(f"{notes}\nwritten to {path}")


if __name__ == "__main__":
    main()
