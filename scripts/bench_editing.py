"""Editing effort saved by the proposal, on phantoms: the share of pixels a person must change per queried image
starting from the proposal `medal annotate` shows (the folder oracle's `<id>_start.png`: the coarse Otsu mask in
round 0, the committee's mask after), against starting from an empty canvas (painting the whole hand), per round.

Runs `medal segment`'s own loop (conf/segment.yaml at small sizes, strategy qbc, simulated oracle: the phantoms'
masks stand for the person's answers) on a generated phantom set; every answer's `edit_effort` is in the pool's
history (`oracle/changed_share`, `oracle/empty_share`, `oracle/edit_dice`).

    python scripts/bench_editing.py                 # ~3 CPU minutes on 2 cores
    python scripts/bench_editing.py --n 200 --budget 64
Writes outputs/bench/editing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from medal.bench import BenchRow, write_bench
from medal.config import CONF_DIR
from medal.data.phantom import generate_dataset
from medal.segment.experiment import run_segment


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=120, help="phantoms to generate")
    p.add_argument("--raw-size", type=int, default=128, help="phantom image size")
    p.add_argument("--size", type=int, default=64, help="segmentation working size")
    p.add_argument("--initial", type=int, default=8)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per round")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "phantoms", n=args.n, seed=args.seed, image_size=args.raw_size, workers=1,
                         progress=False)
        overrides = [
            f"paths.root={root}", f"paths.output_dir={root / 'run'}", f"data.root={root / 'phantoms'}",
            f"segment.image_size={args.size}", f"segment.steps_per_round={args.steps}", "segment.batch_size=4",
            "segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[2,2,2]",
            "segment.net.bottleneck_layers=4", f"segment.roi.size={args.size}", "segment.figures=false",
            "segment.workers=1", f"al.initial={args.initial}", f"al.per_round={args.per_round}",
            f"al.budget={args.budget}", "al.patience=99", "al.val_limit=8", f"seed={args.seed}",
            "trainer.precision=32-true", "trainer.enable_progress_bar=false", "logger=csv",
        ]
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name="segment", overrides=overrides)
        run_segment(cfg)
        history = json.loads((Path(cfg.al.dir) / "pool.json").read_text())["history"]
    rows = []
    for record in history:
        if "oracle/changed_share" not in record:
            continue
        proposal = "coarse Otsu mask" if record["round"] == 0 else "committee's mask"
        rows.append(BenchRow(
            f"round {int(record['round'])} ({int(record['labelled'])} labels; proposal: {proposal}): share of "
            "pixels to change per image", 100 * record["oracle/changed_share"], "% of pixels",
            "from an empty canvas (the whole hand painted)", 100 * record["oracle/empty_share"],
            higher_is_better=False, extra={"edit_dice": record["oracle/edit_dice"],
                                           "test_dice": record.get("test/dice")}))
    write_bench("editing", rows, notes=f"phantoms, simulated oracle, strategy qbc; settings: {vars(args)}")
    for row in rows:
        print(f"{row.figure}: {row.value:.2f}% vs {row.baseline_value:.2f}% from empty "
              f"(ratio {row.ratio:.3f}; proposal Dice {row.extra['edit_dice']:.3f})")


if __name__ == "__main__":
    main()
