"""Benchmark: every stage's time, peak memory and disk as n grows to RSNA's 12,611 images and 100,000 archives.

Each (stage, n) runs medal's own code in a child process whose process tree's memory is polled from /proc
(`medal.scale.measure`); results are kept per (stage, n) under outputs/bench/scale/results/, so a rerun measures
only what is missing (`--force STAGE` redoes a stage). Data sets of any size are hard links to a few hundred
distinct 1,280-px phantoms in a valid RSNA layout (`medal.scale.fixtures`). At the end it writes
outputs/bench/scale.json + scale.md (exponents, extrapolations to 12,611 and 100,000) and the plot.

    python scripts/bench_scale.py                         # every stage at every size (hours on 2 cores)
    python scripts/bench_scale.py --stages check_data,predict_archive --n 500,2000
    python scripts/bench_scale.py --list                  # the stages, their sizes and what each runs
    python scripts/bench_scale.py --report                # rewrite scale.json/.md and the plot from the results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOTES = ("Each stage ran in its own process on a data set of n images made of hard links to {base} distinct "
         "phantoms ({size} px nominal height) in a valid RSNA layout; every copy of a base image is one file, so "
         "reads come from the page cache after the first. Peak memory is the anonymous resident memory "
         "(RssAnon + RssShmem; each process's proportional share while it has workers) of the child and every "
         "process it started, polled every 0.1 s; 'above baseline' "
         "is what the work added to the process after its imports and set-up. Times were taken on a shared "
         "2-core machine with other jobs running (load average often above 10): read ratios and exponents, not "
         "absolute seconds. Where a prefix was timed the projected seconds say how the rest was added.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--n", default="", help="comma-separated sizes (default: each stage's own)")
    parser.add_argument("--force", default="", help="comma-separated stages to measure again (`all` for every one)")
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "bench" / "scale")
    parser.add_argument("--fixtures", type=Path, default=None,
                        help="where the phantoms, layouts and runs live (default <root>/fixtures; share it between roots)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and networks: a smoke run of the harness")
    parser.add_argument("--list", action="store_true", help="list the stages and exit")
    parser.add_argument("--report", action="store_true", help="only rewrite the record from the saved results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "scale.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from medal.scale import stages

    if args.child:
        from medal.scale.runner import child_main

        child_main(args.child, int(args.n), args.root, args.out, args.result, args.quick, args.fixtures)
        return
    if args.list:
        for name, stage in stages.STAGES.items():
            sizes = stage.quick if args.quick else stage.sizes
            print(f"{name:22s} n={','.join(map(str, sizes)):34s} {stage.how}")
        return
    if args.quick and args.root == ROOT / "outputs" / "bench" / "scale":
        args.root = args.root.with_name("scale_quick")
    names = [s for s in args.stages.split(",") if s] or list(stages.STAGES)
    unknown = sorted(set(names) - set(stages.STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)}; see --list")
    if not args.report:
        from medal.scale.runner import Runner

        force = set(stages.STAGES) if args.force == "all" else {s for s in args.force.split(",") if s}
        runner = Runner(args.root, args.quick, force, Path(__file__).resolve(), args.fixtures)
        runner.run(names, [int(n) for n in args.n.split(",") if n] or None)
    from medal.scale.report import write_record
    from medal.scale.runner import load_results

    base, size = ((stages.QUICK_BASE, stages.QUICK_BASE_SIZE) if args.quick else (stages.BASE, stages.BASE_SIZE))
    out_dir = args.root.parent if not args.quick else args.root
    path = write_record(args.root, load_results(args.root), NOTES.format(base=base, size=size), out_dir=out_dir,
                        plot=None if args.quick else args.plot)
    print(f"written {path} and {path.with_suffix('.md')}" + ("" if args.quick else f"; plot {args.plot}"))


if __name__ == "__main__":
    sys.exit(main())
