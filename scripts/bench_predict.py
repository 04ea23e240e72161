"""Benchmark `medal predict`'s chain: images/s batched against the same chain called image by image.

    python scripts/bench_predict.py [--n 64] [--batch 16] [--threads 0] [--bundle DIR]

Without `--bundle`, builds a bundle at the demo's sizes (conf/experiment/demo.yaml: 256 px radiographs, a
committee of 3 small FC-DenseNets at 64 px, 256 px RoIs, the GAN generator (depth 3, width 16) at 96 px, the
tiny regressor at 128 px) with freshly initialised weights: speed does not depend on what the weights are.
Generates `n` phantoms (resumable), then times the whole chain (decode, polarity, committee, RoI, enhancer,
regressor, interval, CAM) over every image twice in the same run: in batches of `--batch` and one image per
call. Writes outputs/bench/predict.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from medal.bench import BenchRow, write_bench
from medal.bundle.load import Bundle, load_bundle
from medal.bundle.spec import ChainSpec, EnhancerSpec, RegressorSpec, SegmenterSpec
from medal.config import CONF_DIR
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate

DEMO_NET = {"first_conv": 8, "growth": 4, "down_layers": [2, 2, 2], "bottleneck_layers": 4, "up_layers": None,
            "dropout": 0.2, "feature": "flatten"}


def demo_bundle(root: Path) -> Bundle:
    """A bundle with the demo's architectures and sizes, fresh weights and a flat calibration table."""
    from omegaconf import OmegaConf

    from medal.boneage.module import BoneAgeModule
    from medal.enhance.module import build_generator
    from medal.segment.committee import Committee

    task = OmegaConf.load(Path(CONF_DIR) / "boneage.yaml")
    model = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "tiny.yaml"))
    module_kwargs = {"model_cfg": model, "target_shift": 127.0, "target_scale": 41.0, "loss": "l1",
                     "optimizer": OmegaConf.to_container(task.optimizer), "scheduler": None, "channels_last": True}
    seg = SegmenterSpec(arch="fc_densenet", members=3, net=DEMO_NET, channels_last=True, image_size=64,
                        normalise_polarity=True, border=0.05, postprocess=True, roi_size=256, margin=0.05,
                        batch_size=16, fast="auto", labelled=64)
    enh = EnhancerSpec(method="gan", image_size=96, generator={"depth": 3, "width": 16, "dropout": 0.0,
                                                              "norm": "batch"},
                       residual=True, channels_last=True, weights="models/generator.safetensors")
    reg = RegressorSpec(name="all", cohort="all", image_size=128, fit="pad", bf16="auto", batch_size=16,
                        module=module_kwargs, weights="models/regressor_all.safetensors")
    chain = ChainSpec(regressors=[reg], segmenter=seg, enhancer=enh)
    nets = {seg.weights: Committee(net=DEMO_NET, size=3, seed=0, lr=0.0, weight_decay=0.0, augment={"enabled": False},
                                   channels_last=True, arch="fc_densenet", shared_init=False),
            enh.weights: build_generator(enh.generator, True), reg.weights: BoneAgeModule(**module_kwargs).model}
    for rel, net in nets.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / rel))
    estimates = [100.0 + r for r in range(1, 60)]  # residuals 1..59 months against references of 100
    calibration = {"schema": 2, "images": 59, "source": {"kind": "synthetic"},
                   "settings": {"method": "sex", "min_cohort": 50, "min_band": 30, "edges": None, "difficulty": None},
                   "cases": {"id": [str(r) for r in range(59)], "male": [1.0, 0.0] * 29 + [1.0], "reference": [100.0] * 59,
                             "known": {"none": estimates, "flip": estimates}, "unknown": None, "spread": None},
                   "qc": {"mask_fraction": [None, None], "agreement": [None, None]}}
    return Bundle(root, {"name": "demo-sized (fresh weights)", "versions": {}, "files": {}}, chain, calibration)


def run_chain(module: ChainModule, frame: pd.DataFrame, batch: int) -> float:
    """Seconds for the whole chain over `frame`, `batch` images per call (decode included)."""
    loader = DataLoader(InputImages(frame, module.chain, "input"), batch_size=batch, collate_fn=collate)
    started = time.perf_counter()
    rows = [module.finish(m) for b in loader for m in module.measure(b)]
    seconds = time.perf_counter() - started
    bad = [r["status"] for r in rows if r["status"] != "ok"]
    assert len(rows) == len(frame), (len(rows), len(frame))
    print(f"batch {batch}: {len(rows)} images in {seconds:.1f} s ({len(bad)} without estimate)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bundle", type=Path, default=None, help="a real bundle instead of the demo-sized one")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_predict"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.root / "phantoms"
    generate_dataset(data, n=args.n, seed=0, image_size=256, workers=1)
    index = read_index(data, strict=True)
    frame = pd.DataFrame({"id": index["id"], "path": index["path"], "male": index["male"].astype(float),
                          "sex_source": "labels", "reference": index["boneage"]})
    bundle = load_bundle(args.bundle) if args.bundle else demo_bundle(args.root / "bundle")
    options = ChainOptions(tta="none", sex="input", coverage=0.9, bf16="as_trained", cam=True)
    module = ChainModule(bundle, options).eval()
    module.prepare()
    run_chain(module, frame.head(args.batch), args.batch)  # warm-up: allocator, oneDNN kernels
    batched = run_chain(module, frame, args.batch)
    single = run_chain(module, frame, 1)
    n = len(frame)
    rows = [BenchRow(f"medal predict chain, batches of {args.batch} ({'bundle ' + str(args.bundle) if args.bundle else 'demo sizes'})",
                     n / batched, "img/s", "the same chain, one image per call", n / single)]
    notes = (f"{n} phantom radiographs at 256 px; decode, polarity, committee (3 FC-DenseNets, 64 px), RoI 256 px, "
             "GAN generator at 96 px, tiny regressor at 128 px, interval, CAM; CPU, torch threads "
             f"{torch.get_num_threads()}.")
    path = write_bench("predict", rows, notes=notes)
    print(json.dumps(json.loads(path.read_text())["rows"], indent=1))


if __name__ == "__main__":
    main()
