"""How much the demo's CAM measures depend on the training seed: its bone age stage retrained over seeds.

    make demo                                             # first: the phantoms and the enhanced RoIs
    python scripts/cam_seeds.py [--seeds 1 2 3 4 5 6] [--image-size 128] [--jobs 2] [--root outputs/cam_seeds]

Each seed runs `medal boneage` with the demo's own bone age overrides (read from conf/experiment/demo.yaml,
so this script follows the demo) on the demo's phantom set and `gan_l1` RoIs, then `medal cam` on its best
checkpoint, one torch thread per process, `--jobs` at a time. Only the seed (initialisation, data order,
augmentation) changes; the split is the same in every run (`data.split.seed`). `--image-size` trains at
another input size, which changes the CAM's grid (at output stride 8: 16x16 at 128 px, 32x32 at 256 px).

Per seed it reports the test MAE, the share of positive CAM mass on the hand (`cam/hand_fraction`, the
issue-12 measure; goal >= 0.7), on the hand or within one grid cell of it (`cam/hand_near`), what the hand
itself scores at the map's grid (`cam/hand_grid`), on the bones, and the map's **background level**: its
value on an image of empty background (the RoIs' zero), as a share of the mean absolute map value on the
test images. A linear head's CAM is exact only up to that level: a constant on the background moves
nothing but the head's bias, so training leaves its sign to chance, and a positive one spreads positive mass
over the whole background. Writes `<root>/cam_seeds_<size>px.md|json`, and `<root>/cam_seeds.png`: the hand
fraction against the background level for every size measured so far under `<root>`.

Resumable: a finished seed is returned by `medal boneage`'s own record, an interrupted one continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from medal.atomic import write_text
from medal.boneage.cam import linear_cam
from medal.boneage.cam_experiment import load_trained, run_data_config, training_settings
from medal.data.datamodule import build_boneage_datamodule
from medal.pipeline.plan import compose_task_config

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.7  # issue 12: the demo's CAM hand fraction
CAM_KEYS = ("cam/hand_fraction", "cam/hand_near", "cam/hand_grid", "cam/bone_fraction", "cam/bone_area")  # of `medal cam`


def demo_settings() -> tuple[str, str, list[str]]:
    """The demo's phantom folder, enhancer and bone age stage overrides (conf/experiment/demo.yaml)."""
    demo = OmegaConf.load(REPO / "conf" / "experiment" / "demo.yaml")
    root = OmegaConf.to_container(demo.data, resolve=False)["root"].replace("${paths.data_root}",
                                                                             str(REPO / "outputs" / "data"))
    return root, str(demo.pipeline.enhance), [str(o) for o in demo.pipeline.stages.boneage]


def train_and_map(seed: int, run: Path, common: list[str]) -> subprocess.Popen:
    """`medal boneage` for one seed, then `medal cam` on its best checkpoint, one process chain in the background."""
    medal = [sys.executable, "-m", "medal"]
    train = shlex.join([*medal, "boneage", *common, f"seed={seed}", f"hydra.run.dir={run}"])
    best = f"{shlex.quote(str(run / 'checkpoints'))}/best-*.ckpt"
    cam = shlex.join([*medal, "cam", "cam.max_overlays=4", f"hydra.run.dir={run / 'cam'}"])
    script = f"set -e; {train}; {cam} ckpt=$(ls {best} | head -1)"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (run.parent / f"s{seed}.log").open("a") as fh:
        return subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def background_level(run: Path) -> float:
    """The CAM of an all-background image (centre cell) over the mean |CAM| of the run's test images."""
    ckpt = sorted((run / "checkpoints").glob("best-*.ckpt"))[0]
    _, settings = training_settings(ckpt)
    loader_cfg = OmegaConf.create({"data": {"batch_size": 50, "num_workers": 0, "cache_workers": 1}})
    datamodule = build_boneage_datamodule(run_data_config(loader_cfg, settings, run / "cam"))
    datamodule.setup("test")
    model = load_trained(ckpt).eval().model
    magnitudes, levels = [], []
    for batch in datamodule.test_dataloader():
        image, male = batch["image"].float(), batch["male"]
        magnitudes.append(linear_cam(model, image, male).maps.abs().flatten(1).mean(1))
        blank = linear_cam(model, torch.zeros_like(image), male).maps
        levels.append(blank[:, blank.shape[1] // 2, blank.shape[2] // 2])
    return float(torch.cat(levels).mean() / torch.cat(magnitudes).mean())


def summary(values: list[float]) -> dict[str, float]:
    """Mean, sd, min, max and how many reach the goal.

    Examples:
        >>> summary([0.6, 0.8])
        {'mean': 0.7, 'sd': 0.1414, 'min': 0.6, 'max': 0.8, 'reach_goal': 1, 'n': 2}
    """
    finite = [v for v in values if math.isfinite(v)]
    return {"mean": round(statistics.fmean(finite), 4), "sd": round(statistics.stdev(finite), 4) if len(finite) > 1
            else float("nan"), "min": min(finite), "max": max(finite), "reach_goal": sum(v >= GOAL for v in finite),
            "n": len(finite)}


def report(rows: list[dict[str, Any]], size: int, overrides: list[str], seconds: float) -> str:
    """The markdown page: one row per seed, then the hand fraction's spread and its link to the level."""
    lines = [f"# CAM over seeds: the demo's bone age stage at {size} px",
             "", f"`medal boneage {' '.join(overrides)} seed=S` on the demo's phantoms, then `medal cam`; "
             f"{len(rows)} seeds, {seconds / 60:.0f} min. Goal (issue 12): hand fraction >= {GOAL}.", "",
             "| seed | test MAE (months) | CAM mass on the hand | on it or within one cell | the hand itself at "
             "the map's grid | on the bones (area share) | background level |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['test/mae']:.2f} | {r['cam/hand_fraction']:.3f} | {r['cam/hand_near']:.3f} | "
                     f"{r['cam/hand_grid']:.3f} | {r['cam/bone_fraction']:.3f} ({r['cam/bone_area']:.3f}) | "
                     f"{r['background_level']:+.3f} |")
    hand = summary([r["cam/hand_fraction"] for r in rows])
    lines += ["", f"Hand fraction: mean {hand['mean']:.3f} ± {hand['sd']:.3f} (min {hand['min']:.3f}, max "
              f"{hand['max']:.3f}); {hand['reach_goal']} of {hand['n']} seeds reach {GOAL}."]
    if len(rows) > 2:
        levels = np.array([r["background_level"] for r in rows])
        fractions = np.array([r["cam/hand_fraction"] for r in rows])
        corr = float(np.corrcoef(levels, fractions)[0, 1])
        lines.append(f"Correlation of the background level with the hand fraction over seeds: {corr:+.2f}.")
    return "\n".join(lines) + "\n"


def plot(root: Path) -> Path:
    """One scatter of every `cam_seeds_<size>px.json` under `root`: hand fraction against background level,
    a colour per input size, with the goal and each size's grid reference (the hand itself at its map's grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medal.plotting import save_figure

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, path in enumerate(sorted(root.glob("cam_seeds_*px.json"), key=lambda p: int(p.stem.split("_")[-1][:-2]))):
        rows, colour = json.loads(path.read_text())["rows"], f"C{i}"
        size = path.stem.split("_")[-1]
        ax.scatter([r["background_level"] for r in rows], [r["cam/hand_fraction"] for r in rows], color=colour,
                   label=f"{size}: {len(rows)} seeds")
        for r in rows:
            ax.annotate(str(r["seed"]), (r["background_level"], r["cam/hand_fraction"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points", color=colour)
        ax.axhline(rows[0]["cam/hand_grid"], color=colour, linestyle=":", linewidth=1,
                   label=f"{size}: the hand itself at the map's grid")
    ax.axhline(GOAL, color="grey", linestyle="--", linewidth=1, label=f"goal {GOAL}")
    ax.set_xlabel("background level (CAM on empty background / mean |CAM|)")
    ax.set_ylabel("share of positive CAM mass on the hand")
    ax.set_title("The demo's CAM over training seeds")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, root / "cam_seeds.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the demo's)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once (one torch thread each)")
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "cam_seeds")
    parser.add_argument("overrides", nargs="*", help="extra `medal boneage` overrides, e.g. trainer.max_epochs=2")
    args = parser.parse_args()

    data_root, enhancer, stage = demo_settings()
    if not Path(data_root, "boneage-training-dataset").is_dir():
        raise SystemExit(f"{data_root}: no demo phantom set; run `make demo` first")
    common = ["data=phantom", f"data.root={data_root}", f"enhance={enhancer}", "cohort=all", *stage,
              *([f"data.image_size={args.image_size}"] if args.image_size else []), *args.overrides]
    size = int(compose_task_config("boneage", common).data.image_size)  # --image-size, else the demo's
    folder = args.root.resolve() / f"{size}px"
    folder.mkdir(parents=True, exist_ok=True)
    started, pending, running = time.time(), list(args.seeds), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            print(f"== seed {seed}: medal boneage {' '.join(common)} seed={seed}", flush=True)
            running[seed] = train_and_map(seed, folder / f"s{seed}", common)
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                del running[seed]
                if proc.returncode != 0:
                    raise SystemExit(f"seed {seed} failed (see {folder}/s{seed}.log); rerun to resume")
                print(f"== seed {seed} done", flush=True)
        time.sleep(2)

    rows = []
    for seed in args.seeds:
        run = folder / f"s{seed}"
        trained = json.loads((run / "metrics.json").read_text())
        mapped = json.loads((run / "cam" / "metrics.json").read_text())
        rows.append({"seed": seed, "test/mae": trained["test/mae"], **{k: mapped[k] for k in CAM_KEYS},
                     "background_level": background_level(run)})
    out = args.root.resolve() / f"cam_seeds_{size}px"
    write_text(out.with_suffix(".json"), json.dumps({"overrides": common, "rows": rows, "hand_fraction":
                                                     summary([r["cam/hand_fraction"] for r in rows])}, indent=1))
    page = report(rows, size, common, time.time() - started)
    write_text(out.with_suffix(".md"), page)
    print(page)
    print(f"figure: {plot(args.root.resolve())}")


if __name__ == "__main__":
    main()
