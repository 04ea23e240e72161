"""The GPU check as one command: phantoms, then every row in order of importance, then the record.

    python -m medal.gpucheck                      # one GPU, the paper's sizes, <= 8 minutes
    python -m medal.gpucheck --device cpu --tiny  # the same code paths at toy sizes, a few minutes on a CPU
    python -m medal.gpucheck --skip compile,predict   # a rerun that leaves rows out

Rows run most important first (the Xception figures, the committee, the GAN, deterministic mode, the other
backbones, the pipeline smoke, `medal predict`, torch.compile last: it is the slowest and the least needed), so a
check whose time runs out loses the least. Writes `<out>/gpu_check.json` and `<out>/gpu_check.md` (default `outputs/bench/gpu/`) and
prints the table; exits 1 when a row failed (timeouts and skips are not failures).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medal.data.phantom import generate_dataset
from medal.gpucheck import boneage_rows, determinism, enhance_rows, pipeline_rows, segment_rows
from medal.gpucheck.context import Context
from medal.gpucheck.record import Row, write_record
from medal.gpucheck.sizes import FULL, TINY, TRAIN_GOAL_IMG_S, Sizes
from medal.gpucheck.timing import Budget, run_row
from medal.hardware import fast_precision

log = logging.getLogger("medal.gpucheck")
GROUPS = ("boneage", "segment", "enhance", "determinism", "backbones", "pipeline", "predict", "compile")
Plan = list[tuple[str, str, float, Callable[[float], Row]]]  # (group, row name, time box, measure)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (for a CPU, or a quick look)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/gpu"), help="record and work folder")
    parser.add_argument("--precision", default="auto",
                        help="Lightning precision of every training row (auto: bf16-mixed where bf16 is native)")
    parser.add_argument("--workers", type=int, default=None,
                        help="bone age loader processes (default: the config's, ${loader_workers:...}: "
                             "min(8, cores - 1) on a GPU, 0 on a CPU)")
    parser.add_argument("--skip", default="", help=f"comma-separated groups to leave out: {', '.join(GROUPS)}")
    parser.add_argument("--seconds", type=float, default=None, help="the whole check's time (default: the sizes')")
    args = parser.parse_args(argv)
    unknown = sorted(set(filter(None, args.skip.split(","))) - set(GROUPS))
    if unknown:
        parser.error(f"--skip {unknown[0]}: not a group; choose from {', '.join(GROUPS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; run `--device cpu --tiny` to check the "
                     "code paths on this machine")
    return args


def make_context(args: argparse.Namespace, sizes: Sizes) -> Context:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    precision = fast_precision(accelerator) if args.precision == "auto" else args.precision
    work = args.out.resolve() / "work"
    return Context(torch.device(args.device), accelerator, precision, sizes, work, args.workers)


def make_phantoms(ctx: Context, deadline: float) -> Row:
    """The throughput rows' phantom set (RSNA layout), reused when a previous check made the same one."""
    sizes = ctx.sizes
    ctx.phantoms = ctx.work / "data" / f"phantoms_n{sizes.phantoms}_{sizes.phantom_size}px"
    table = generate_dataset(ctx.phantoms, sizes.phantoms, seed=0, image_size=sizes.phantom_size, progress=False)
    made, seconds = table.attrs.get("generated", 0), table.attrs.get("seconds", 0.0)
    return Row("", made / seconds if made and seconds else None, "img/s" if made else "",
               note=f"{made} made now" if made else "reused", detail={"images": sizes.phantoms, "image_size": sizes.phantom_size, "generated_now": made})


def plan(ctx: Context) -> Plan:
    """Every row, most important first (see the module docstring)."""
    s = ctx.sizes
    head, others = s.backbones[0], s.backbones[1:]
    size = f"{s.image_size or 299} px"
    rows: Plan = [
        ("boneage", f"matmul peak ({'bf16' if ctx.bf16 else 'fp32'}, {s.matmul_n}³)", 30.0,
         lambda d: boneage_rows.matmul_peak(ctx, d)),
        ("boneage", f"{head} {size}: batch size search (synthetic batches on the device)", s.search_box,
         lambda d: boneage_rows.search_batch(ctx, head, d)),
        ("boneage", f"{head} {size}: training fed by medal's DataModule ({ctx.precision}, channels_last)",
         s.train_box, lambda d: boneage_rows.datamodule_training(ctx, head, d, goal=TRAIN_GOAL_IMG_S)),
        ("boneage", f"{head} {size}: the loader alone (memmap cache, augmentation on the device)", s.train_box,
         lambda d: boneage_rows.loader_alone(ctx, head, d)),
        ("segment", f"committee {s.segment_size} px: pool scoring, seconds for 12,611 images", s.score_box,
         lambda d: segment_rows.pool_scoring(ctx, d)),
        ("segment", f"committee {s.segment_size} px: one active-learning round's training", s.round_box,
         lambda d: segment_rows.round_training(ctx, d)),
        ("enhance", f"GAN {s.gan_size} px: training (D step + G step)", s.gan_box,
         lambda d: enhance_rows.gan_training(ctx, d)),
        ("enhance", f"GAN generator {s.gan_size} px: inference", s.gan_box,
         lambda d: enhance_rows.gan_inference(ctx, d)),
        ("determinism", "deterministic algorithms (trainer.deterministic=true): networks that train", 60.0,
         lambda d: determinism.deterministic_steps(ctx, d)),
    ]
    for backbone in others:
        rows += [
            ("backbones", f"{backbone} {size}: batch size search", s.search_box,
             lambda d, b=backbone: boneage_rows.search_batch(ctx, b, d)),
            ("backbones", f"{backbone} {size}: training fed by medal's DataModule", s.train_box,
             lambda d, b=backbone: boneage_rows.datamodule_training(ctx, b, d)),
        ]
    rows += [
        ("pipeline", f"medal pipeline smoke ({s.pipeline_phantoms} phantoms, trainer={ctx.accelerator}, "
                     "PTL through every stage, CAM on the device)", s.pipeline_box,
         lambda d: pipeline_rows.pipeline_smoke(ctx, d)),
        ("predict", "medal predict, whole chain", 60.0, lambda d: pipeline_rows.predict_rate(ctx, d)),
        ("compile", f"{head} {size}: training with torch.compile (compilation in the first steps)", s.compile_box,
         lambda d: boneage_rows.datamodule_training(ctx, head, d, compile_model=True, goal=TRAIN_GOAL_IMG_S)),
    ]
    return rows


def machine(ctx: Context, seconds: float) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None
    return {"gpu": gpu, "device": str(ctx.device), "precision": ctx.precision, "mode": ctx.sizes.mode,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "loader_workers": "config" if ctx.workers is None else ctx.workers,
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "total_seconds": seconds}


NOTES = [
    "Goals (issue 16): bone age training >= 1,260 img/s (one RSNA epoch of 12,611 images in 10 s); the committee "
    "scores 12,611 images in <= 30 s. The loader alone must outpace the training goal.",
    "fraction_of_matmul_peak (JSON) = the training row's images/s x FLOPs per image (torch FlopCounterMode, "
    "forward + backward) / the matmul rate measured in this run.",
    "Every rate is read after the device finished (torch.cuda.synchronize); training rates leave out the first "
    "steps (warm-up: cuDNN autotuning, compilation).",
]


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = TINY if args.tiny else FULL
    budget = Budget(args.seconds or sizes.total_s, started=started)
    ctx = make_context(args, sizes)
    skip = set(filter(None, args.skip.split(",")))
    log.info("medal GPU check: %s sizes on %s (%s), %.0f s", sizes.mode, ctx.device, ctx.precision, budget.total_s)
    torch.backends.cudnn.benchmark = ctx.device.type == "cuda"  # as `trainer.benchmark` of conf/trainer/gpu.yaml
    rows = [run_row(f"phantoms for the check ({sizes.phantoms} at {sizes.phantom_size} px)", budget, 120.0,
                    ctx.device, lambda d: make_phantoms(ctx, d))]
    if ctx.phantoms is None or rows[0].status != "ok":
        log.error("no phantoms, nothing to measure")
    else:
        rows += [run_row(name, budget, box, ctx.device, measure)
                 for group, name, box, measure in plan(ctx) if group not in skip]
    json_path, md_path = write_record(args.out, rows, machine(ctx, time.perf_counter() - started), NOTES)
    print(md_path.read_text())
    print(f"written {json_path} and {md_path}")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
