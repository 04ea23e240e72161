"""Test MAE of every fine-tune mode on phantoms with the tiny backbone, against the train-mean predictor.

    python scripts/finetune_modes.py [--root outputs/finetune_modes] [--n 200] [--epochs 20]

Runs `medal boneage model=tiny data.images=raw finetune=<mode>` in-process for the five fixed modes and PTL
(one run dir each under --root, skipped when already finished) and writes `<root>/finetune_modes.md`.
The backbone starts from random weights: this machine cannot download ImageNet weights, and the paper's
ordering of fine-tune modes (PTL best, head-only worst) rests on pretrained features, so these numbers
check the machinery, not the paper's claim.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from medal.boneage.experiment import run_boneage
from medal.config import CONF_DIR
from medal.models.stages import FINETUNE_MODES, PACED_MODE
from medal.runs import write_metrics

log = logging.getLogger("medal.boneage")


def ensure_phantoms(root: Path, n: int) -> Path:
    from medal.data.phantom import generate_dataset

    data = root / "phantoms"
    if not (data / "train.csv").is_file():
        generate_dataset(data, n=n, seed=0, image_size=128, workers=2)
    return data


def run_mode(root: Path, data: Path, mode: str, epochs: int) -> dict[str, float]:
    out = root / "runs" / mode
    overrides = [f"paths.root={root}", f"paths.output_dir={out}", f"data.root={data}", "model=tiny",
                 "data.images=raw", "data.image_size=64", f"finetune={mode}", f"trainer.max_epochs={epochs}",
                 "trainer.enable_progress_bar=false", "logger=csv"]
    if mode == PACED_MODE:
        overrides += ["finetune.patience=2", f"finetune.max_epochs_per_stage={max(1, epochs // 5)}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="boneage", overrides=overrides)
    metrics = run_boneage(cfg)
    write_metrics(out, metrics)
    return metrics


def table(results: dict[str, dict[str, float]], n: int, epochs: int) -> str:
    lines = [
        f"Test MAE (months) on {n} phantoms (tiny backbone `test_resnet`, random init, raw images at 64 px, "
        f"{epochs} epochs, CPU), against always predicting the training mean.", "",
        "| fine-tune mode | MAE all | MAE male | MAE female | train-mean predictor (all) | val MAE |",
        "|---|---|---|---|---|---|",
    ]
    for mode, m in results.items():
        lines.append(f"| {mode} | {m['test/mae']:.2f} | {m.get('test/mae_male', float('nan')):.2f} | "
                     f"{m.get('test/mae_female', float('nan')):.2f} | {m['test/mae_mean_predictor']:.2f} | "
                     f"{m['val/mae']:.2f} |")
    lines += ["", "The paper's ordering of fine-tune modes (Figure 12: PTL < all < above entry < ... < above FC) "
              "needs ImageNet-pretrained weights, which this machine cannot download (`model.pretrained=true` "
              "fails offline; use `model.weights=PATH`). From random weights, freezing blocks only freezes "
              "random features, so the head-only modes cannot beat the mean predictor by much.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/finetune_modes"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--modes", nargs="*", default=list(FINETUNE_MODES), choices=FINETUNE_MODES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.root.resolve()
    data = ensure_phantoms(root, args.n)
    results = {mode: run_mode(root, data, mode, args.epochs) for mode in args.modes}
    path = root / "finetune_modes.md"
    path.write_text(table(results, args.n, args.epochs))
    print(path.read_text())


if __name__ == "__main__":
    main()
