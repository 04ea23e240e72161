"""Benchmark the enhancer on phantoms: quality of gan / gan_l1 / clahe / none against gold, and G's speed.

    python scripts/bench_enhance.py [--n 150] [--size 256] [--train-size 128] [--minutes 3] [--threads 1]

1. Generates `n` phantoms (resumable) under `<root>/phantoms` (default root outputs/bench_enhance).
2. Builds (input, gold) RoI pairs the way the segmentation stage does (contract 5) with the true masks
   (`medal.data.phantom.rois.true_mask_rois`): raw image with its polarity normalised, background zeroed by
   the true mask, cropped by `medal.preprocess.crop` with the same box as the gold image, square, `size` px,
   read in their stored range and written at 16 bits (`medal.data.images`).
3. Runs the real task body (`run_enhance`) for each method on the same seeded held-out pairs; each GAN
   trains for the same wall-clock budget. Reports PSNR and SSIM mean, std and 5th percentile over the
   held-out images, and every method's PSNR as a ratio to `none`.
4. Times G (contract size: depth 4, width 32) at 512 px: bf16 autocast + channels_last vs fp32.
Writes outputs/bench/enhance.{json,md} and outputs/bench/enhance_samples.png.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from medal.bench import BENCH_DIR, BenchRow, write_bench
from medal.config import CONF_DIR
from medal.data.phantom import generate_dataset
from medal.data.phantom.rois import true_mask_rois
from medal.enhance.experiment import held_out_pairs, run_enhance
from medal.enhance.module import save_sample_grid
from medal.enhance.pairs import PairDataset
from medal.enhance.run import clahe_method, generator_method
from medal.enhance.train import load_generator
from medal.hardware import use_bf16
from medal.models.unet import UNet

log = logging.getLogger("medal.bench")
METHODS = ("none", "clahe", "gan", "gan_l1")


def compose_enhance(method: str, root: Path, overrides: list[str]) -> DictConfig:
    """The `enhance` task config as `medal enhance` would compose it, all outputs under `root`; its data set is the
    bench's phantoms (`root/phantoms`), whose test holdout the pairs leave out."""
    GlobalHydra.instance().clear()
    run_dir, work = root / "runs" / method, root / "work"
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("enhance", return_hydra_config=True, overrides=[
            f"enhance={method}", f"paths.root={Path.cwd()}", f"paths.output_dir={run_dir}",
            f"data.root={root / 'phantoms'}", f"data.work_dir={work}", *overrides,
        ])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def time_generator(bf16: bool, channels_last: bool, size: int, batch: int, reps: int) -> float:
    """Images/s of the contract-size G at `size` px under inference_mode (one warm-up batch)."""
    torch.manual_seed(0)
    method = generator_method(UNet(depth=4, width=32), bf16=bf16, channels_last=channels_last)
    x = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        method(x)
        started = time.perf_counter()
        for _ in range(reps):
            method(x)
    return batch * reps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--size", type=int, default=256, help="phantom and RoI size (px)")
    parser.add_argument("--train-size", type=int, default=128, help="working size of every method (px)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of each GAN")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 beats 2 on a shared 2-core box)")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_enhance"), help="data, work and runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    data_root, work = args.root / "phantoms", args.root / "work"

    started = time.perf_counter()
    generate_dataset(data_root, n=args.n, seed=0, image_size=args.size, workers=2)
    n_pairs = len(list(true_mask_rois(data_root, work, args.size).glob("*.png")))
    log.info("data ready: %d pairs in %.0f s", n_pairs, time.perf_counter() - started)
    for stale in (work / "enhancer", work / "enhanced"):  # every bench run trains and enhances afresh
        shutil.rmtree(stale, ignore_errors=True)

    budget = time.strftime("00:%H:%M:%S", time.gmtime(args.minutes * 60))
    native_bf16 = use_bf16("auto")  # bf16 only where the hardware has it; emulated bf16 is ~2x slower
    precision = "bf16-mixed" if native_bf16 else "32-true"
    common = [f"enhance.image_size={args.train_size}", "trainer.enable_progress_bar=false", "logger=csv",
              f"trainer.precision={precision}"]
    gan = [
        "enhance.generator.width=16", "enhance.discriminator.width=32", "enhance.batch_size=8",
        "enhance.epochs=1000", f"+trainer.max_time={budget}", "enhance.sample_every_n_epochs=10",
    ]
    results, cfgs = {}, {}
    for method in METHODS:
        cfgs[method] = compose_enhance(method, args.root, common + (gan if method.startswith("gan") else []))
        t0 = time.perf_counter()
        results[method] = run_enhance(cfgs[method])
        log.info("%s: test PSNR %.2f dB, SSIM %.3f (%.0f s)", method, results[method]["test/psnr"],
                 results[method]["test/ssim"], time.perf_counter() - t0)

    rows = []
    none = results["none"]
    for method in METHODS:
        r = results[method]
        extra = {k: r[k] for k in ("test/psnr_std", "test/psnr_p5", "test/ssim", "test/ssim_std", "test/ssim_p5",
                                   "val/psnr")}
        rows.append(BenchRow(f"test PSNR, {method} (mean over held-out images)", r["test/psnr"], "dB",
                             "none", none["test/psnr"], extra=extra))
        rows.append(BenchRow(f"test SSIM, {method}", r["test/ssim"], "", "none", none["test/ssim"]))
        rows.append(BenchRow(f"test PSNR 5th percentile, {method}", r["test/psnr_p5"], "dB", "none",
                             none["test/psnr_p5"]))
        rows.append(BenchRow(f"test PSNR std over images, {method}", r["test/psnr_std"], "dB", "clahe",
                             results["clahe"]["test/psnr_std"], higher_is_better=False))

    speed = {(bf16, cl): time_generator(bf16, cl, 512, batch=1, reps=2) for bf16, cl in
             ((False, False), (True, True), (False, True))}
    info = {"generator": "UNet depth 4 width 32", "batch": 1, "native_bf16": native_bf16}
    rows.append(BenchRow("G throughput at 512 px, bf16 autocast + channels_last", speed[True, True], "images/s",
                         "fp32", speed[False, False], extra=info))
    rows.append(BenchRow("G throughput at 512 px, fp32 + channels_last", speed[False, True], "images/s",
                         "fp32", speed[False, False], extra=info))

    # sample grid: input | gan | gan_l1 | clahe | gold on four held-out pairs
    pairs = cfgs["gan"].enhance.pairs
    split = held_out_pairs(pairs, cfgs["gan"].data)  # the runs' own split (the data set's test holdout left out)
    data = PairDataset(pairs.input_dir, pairs.gold_dir, split.test[:4], args.train_size)
    x = torch.stack([d["input"] for d in data])
    y = torch.stack([d["gold"] for d in data])
    columns = [x]
    with torch.inference_mode():
        for method in ("gan", "gan_l1"):
            weights = next((work / "enhancer").glob(f"{method}_*/generator.safetensors"))
            columns.append(generator_method(load_generator(cfgs[method].enhance, weights), bf16=False,
                                            channels_last=False)(x).float())
        clahe_cfg = cfgs["clahe"].enhance
        columns.append(clahe_method(clahe_cfg.clip_limit, clahe_cfg.grid, clahe_cfg.keep_background)(x))
    grid_path = save_sample_grid(torch.cat([*columns, y], dim=3), BENCH_DIR / "enhance_samples.png")

    notes = (
        f"{n_pairs} phantom RoI pairs ({args.size} px, raw x true mask vs gold, same crop), seeded split "
        f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test; every method scored at "
        f"{args.train_size} px on the same {len(split.test)} held-out test pairs. GANs: U-Net G depth 4 width 16, "
        f"paper D (3 conv + FC), BCE adversarial, recon weight 100, {args.minutes} min of training each on "
        f"{args.threads} CPU threads ({precision}; native bf16: {native_bf16}). Std/p5 = spread over test images. Sample grid "
        f"(input | gan | gan_l1 | clahe | gold): {grid_path}. Total {time.perf_counter() - started:.0f} s."
    )
    path = write_bench("enhance", rows, notes)
    print(path.with_suffix(".md").read_text())
    print("mean ± std (p5) over test images:")
    for method in METHODS:
        r = results[method]
        print(f"  {method:7s} PSNR {r['test/psnr']:.2f} ± {r['test/psnr_std']:.2f} ({r['test/psnr_p5']:.2f}) dB"
              f"   SSIM {r['test/ssim']:.3f} ± {r['test/ssim_std']:.3f} ({r['test/ssim_p5']:.3f})")


if __name__ == "__main__":
    main()
