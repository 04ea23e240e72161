"""Benchmark: does a `medal pretrain` backbone help a small labelled target task? SSL and supervised vs random init.

The scenario of a lab with many unlabelled radiographs and few labels, on phantoms:

1. target: a small labelled phantom set (default acquisition profile, seed 0);
2. unlabelled pool: more phantoms of the same profile (another seed), used as images only;
3. `medal pretrain pretrain=ssl` on the target's training images + the pool (`pretrain.unlabelled`);
4. `medal pretrain pretrain=supervised` on its own source set (another acquisition profile, age + sex);
5. `medal boneage` on the target from each backbone (`model.weights=`) and from random weights, with the head
   alone trained (`finetune=above_fc`: how good are the features as they are) and with every layer trained
   (`finetune=all`), same seed, split, recipe and epochs.

Writes `outputs/bench/pretrain.json|.md` (test MAE of each pretrained init against random init in the same
run, and the kNN probes), every number read from the runs' metrics.json. Every step is a `medal` command in
`<root>`, and resumes: a rerun reuses finished runs.

    python scripts/bench_pretrain.py [--root outputs/bench_pretrain] [--target-n 300] [--pool-n 600] ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medal.bench import BenchRow, write_bench

INITS = ("random", "ssl", "supervised")
MODES = ("above_fc", "all")


def medal(args: list[str], root: Path) -> dict[str, float]:
    """Run `medal ARGS` (MEDAL_ROOT=root) unless its run folder already holds an ok metrics.json; its metrics."""
    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")))
    done = run_dir / "metrics.json"
    if not (done.is_file() and json.loads(done.read_text()).get("status") == "ok"):
        print(f"== medal {' '.join(args)}", flush=True)
        env = {**os.environ, "MEDAL_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        subprocess.run([sys.executable, "-m", "medal", *args], cwd=root, env=env, check=True)
    return json.loads(done.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_pretrain"))
    parser.add_argument("--target-n", type=int, default=300, help="labelled target phantoms (train/val/test)")
    parser.add_argument("--pool-n", type=int, default=600, help="unlabelled phantoms of the target's profile")
    parser.add_argument("--source-n", type=int, default=1000, help="source phantoms (other profile, age + sex)")
    parser.add_argument("--size", type=int, default=64, help="network input size (px)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--ssl-epochs", type=int, default=30)
    parser.add_argument("--supervised-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    target, pool = root / "data" / "target", root / "data" / "pool"
    started = time.perf_counter()

    medal(["phantoms", f"out={target}", f"n={args.target_n}", "seed=0", "image_size=128",
           f"hydra.run.dir={root / 'runs' / 'phantoms_target'}"], root)
    medal(["phantoms", f"out={pool}", f"n={args.pool_n}", "seed=11", "image_size=128",
           "splits={train: 1.0, val: 0.0, test: 0.0}", f"hydra.run.dir={root / 'runs' / 'phantoms_pool'}"], root)
    common = [f"model={args.model}", f"data.root={target}", "data.images=raw", f"data.image_size={args.size}",
              f"seed={args.seed}", "trainer.precision=32-true", "trainer.enable_progress_bar=false"]
    pretrained = {
        "ssl": medal(["pretrain", "pretrain=ssl", *common, f"pretrain.unlabelled={pool / 'boneage-training-dataset'}",
                      f"trainer.max_epochs={args.ssl_epochs}", f"hydra.run.dir={root / 'runs' / 'ssl'}"], root),
        "supervised": medal(["pretrain", "pretrain=supervised", *common, f"pretrain.source.root={root / 'data' / 'source'}",
                             f"pretrain.source.n={args.source_n}", "pretrain.source.image_size=128",
                             f"trainer.max_epochs={args.supervised_epochs}",
                             f"hydra.run.dir={root / 'runs' / 'supervised'}"], root),
    }
    results: dict[tuple[str, str], dict[str, float]] = {}
    for mode in MODES:
        for init in INITS:
            weights = [] if init == "random" else [f"model.weights={root / 'runs' / init / 'backbone.safetensors'}"]
            results[init, mode] = medal(["boneage", *common, *weights, f"finetune={mode}", "scheduler=null",
                                         "model.sex_input=true", f"trainer.max_epochs={args.finetune_epochs}",
                                         "evaluation.plots=false", f"hydra.run.dir={root / 'runs' / f'{init}_{mode}'}"],
                                        root)

    rows = []
    for mode in MODES:
        base = results["random", mode]
        for init in INITS[1:]:
            run = results[init, mode]
            rows.append(BenchRow(f"bone age test MAE, {init} init, finetune={mode}", run["test/mae"], "months",
                                 f"random init, finetune={mode}", base["test/mae"], higher_is_better=False,
                                 extra={"val/mae": run["val/mae"], "random val/mae": base["val/mae"],
                                        "test/mae_mean_predictor": run["test/mae_mean_predictor"]}))
    for init in INITS[1:]:
        probe = pretrained[init]
        rows.append(BenchRow(f"kNN probe val MAE of pooled features after {init} pretraining", probe["probe/val_mae"],
                             "months", "the same backbone before pretraining (random init)",
                             probe["probe/val_mae_before"], higher_is_better=False,
                             extra={k: v for k, v in probe.items() if k.startswith(("source/", "pretrain/", "train/loss_"))
                                    and "epoch" not in k}))
    notes = (f"Phantoms: target n={args.target_n} (default profile), unlabelled pool n={args.pool_n} (same profile, "
             f"seed 11), supervised source n={args.source_n} (conf/pretrain/supervised.yaml's profile). model={args.model} "
             f"at {args.size} px; SSL {args.ssl_epochs} epochs, supervised {args.supervised_epochs} epochs; fine-tuning "
             f"{args.finetune_epochs} epochs, scheduler=null, sex input, seed {args.seed}, one split for all runs. "
             f"Total {time.perf_counter() - started:.0f} s; load average at the end "
             f"{Path('/proc/loadavg').read_text().split()[0]}. One seed: differences smaller than a few months are noise.")
    path = write_bench("pretrain", rows, notes)
    print(f"written {path}")


if __name__ == "__main__":
    main()
