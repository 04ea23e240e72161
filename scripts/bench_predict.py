"""Benchmark `medal predict`'s chain on a CPU: where its time goes, step by step, and the shared regressor pass
against the reference chain, both measured in the same run.

    python scripts/bench_predict.py [--sizes demo paper] [--n 64] [--paper-n 8] [--batch 16] [--threads 1 2]
                                    [--workers 0] [--bundle DIR]

Bundles with fresh weights at two sets of sizes, each composed from medal's own configs so that they follow them:
- `demo`: conf/experiment/demo.yaml's stage overrides: 256 px phantoms, a committee of three small FC-DenseNets at
  64 px, 256 px RoIs, the `gan_l1` generator at 96 px, experiment=boneage_cpu's ResNet at 256 px (output stride 8,
  sex input);
- `paper`: the tasks' defaults: three 192-map FC-DenseNets at 256 px, 512 px RoIs, the generator at 256 px,
  Xception at 299 px, on 1,024 px phantoms.
Speed does not depend on what the weights are, except that a fresh committee finds no hand and the chain would stop
there: its members' last layer gets a bias of +4, so every image goes through the whole chain (its mask is then
most of the radiograph, and the RoI the whole image). `--bundle DIR` measures a real bundle instead.

Both paths run over the same images in one process, interleaved batch by batch (which goes first alternates), so
that load from other jobs, which drifts over seconds, falls on both alike: `reference` is
`ChainModule(reference=True)`, the regressor step as first written (a backbone pass per sex, another per mirror
image, and the CAM image by image in float32) at a given torch thread count; `shared` is the chain `medal predict`
runs (one backbone pass per regressor and batch serves both sexes and the CAM) at a count, or with
`predict.threads=auto`. Rows: both at 1 thread, both at 2, and the defaults before and now (torch's own count,
the cores, against auto). Per path: images/s and seconds per image by step (`decode`: the DataLoader's time,
`committee` ... `cam`: the chain's `StepClock`; the interval and the rows make up the rest). Both paths'
estimates are compared (the largest difference in months) and their CAM overlays (the largest difference of the
0-255 RGB pictures). Precision is each network's recorded setting (`predict.bf16=as_trained`: `auto`, bf16 where
the CPU has it natively); onnxruntime's float32 graphs (`export.onnx=true`) are timed against it per network.
PNG writing is left out.
Writes outputs/bench/predict.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from medal.bench import BenchRow, write_bench
from medal.bundle.load import Bundle, load_bundle
from medal.bundle.spec import ChainSpec, EnhancerSpec, RegressorSpec, SegmenterSpec
from medal.config import CONF_DIR
from medal.data.phantom import generate_dataset
from medal.data.rsna import read_index
from medal.hardware import cpu_has_native_bf16
from medal.pipeline.plan import compose_task_config, override_list
from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate
from medal.predict.clock import STEPS

HAND_BIAS = 4.0  # added to a fresh committee's last-layer bias: sigmoid(4) = 0.98, so it marks a "hand"


@dataclass(frozen=True)
class Sizes:
    """One set of sizes: the phantoms' side and the stage overrides the bundle is composed with."""

    name: str
    phantom_size: int
    segment: list[str]
    enhance: list[str]
    boneage: list[str]


def demo_sizes() -> Sizes:
    """The demo's sizes, read from conf/experiment/demo.yaml (its phantoms' side and its stage overrides)."""
    demo = OmegaConf.load(Path(CONF_DIR) / "experiment" / "demo.yaml").pipeline
    stages = {k: override_list(demo.stages[k], f"pipeline.stages.{k}") for k in ("segment", "enhance", "boneage")}
    return Sizes("demo", int(demo.phantoms.image_size), stages["segment"], [f"enhance={demo.enhance}",
                                                                             *stages["enhance"]], stages["boneage"])


PAPER = Sizes("paper", 1024, [], ["enhance=gan"], [])


def _specs(sizes: Sizes, cohorts: tuple[str, ...]) -> tuple[SegmenterSpec, EnhancerSpec, list[RegressorSpec]]:
    """The chain's settings as `medal export` records them from runs with these overrides (a regressor per
    cohort)."""
    seg = compose_task_config("segment", sizes.segment)
    enh = compose_task_config("enhance", sizes.enhance).enhance
    bone = compose_task_config("boneage", sizes.boneage)
    segmenter = SegmenterSpec(arch=str(seg.segmenter.arch), members=int(seg.al.committee_size),
                              net=OmegaConf.to_container(seg.segment.net), channels_last=bool(seg.segment.channels_last),
                              image_size=int(seg.segment.image_size),
                              normalise_polarity=bool(seg.segment.normalise_polarity),
                              border=float(seg.segment.coarse.border), postprocess=bool(seg.segment.postprocess),
                              roi_size=int(seg.segment.roi.size), margin=float(seg.segment.roi.margin),
                              batch_size=int(seg.al.score_batch_size), fast=seg.al.fast_scoring, labelled=64)
    enhancer = EnhancerSpec(method="gan", image_size=int(enh.image_size),
                            generator=OmegaConf.to_container(enh.generator), residual=bool(enh.residual),
                            channels_last=bool(enh.inference.channels_last), weights="models/generator.safetensors")
    module = {"model_cfg": OmegaConf.to_container(bone.model, resolve=True), "target_shift": 127.3,
              "target_scale": 41.2, "loss": str(bone.loss), "optimizer": OmegaConf.to_container(bone.optimizer),
              "scheduler": None, "channels_last": bool(bone.channels_last)}
    regressors = [RegressorSpec(name=cohort, cohort=cohort, image_size=int(bone.data.image_size),
                                fit=str(bone.data.fit), bf16=bone.evaluation.bf16, batch_size=int(bone.data.batch_size),
                                module=module, weights=f"models/regressor_{cohort}.safetensors") for cohort in cohorts]
    return segmenter, enhancer, regressors


def fresh_bundle(root: Path, sizes: Sizes, cohorts: tuple[str, ...] = ("all",), head_gain: float = 1.0) -> Bundle:
    """A bundle of `sizes` with fresh weights (the committee biased to find a hand), a regressor per cohort,
    and a flat calibration. `head_gain` scales the regressors' last layer: fresh weights give nearly the same
    months for every image, and the tests want estimates that differ between images and sexes."""
    from medal.boneage.module import BoneAgeModule
    from medal.enhance.module import build_generator
    from medal.segment.committee import Committee

    seg, enh, regs = _specs(sizes, cohorts)
    torch.manual_seed(0)
    committee = Committee(net=seg.net, size=seg.members, seed=0, lr=0.0, weight_decay=0.0, augment={"enabled": False},
                          channels_last=seg.channels_last, arch=seg.arch, shared_init=False)
    with torch.no_grad():
        for member in committee.members:
            member.head.bias += HAND_BIAS
    nets = {seg.weights: committee, enh.weights: build_generator(enh.generator, bool(enh.residual))}
    for reg in regs:
        model = BoneAgeModule(**reg.module).model
        with torch.no_grad():
            model.head.output_layer.weight *= head_gain
        nets[reg.weights] = model
    for rel, net in nets.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / rel))
    estimates = [100.0 + r for r in range(1, 60)]  # residuals 1..59 months against references of 100
    averaged = {"none": estimates, "flip": estimates} if any(r.sex_input for r in regs) else None  # unknown sex
    calibration = {"schema": 2, "images": 59, "source": {"kind": "synthetic"},
                   "settings": {"method": "sex", "min_cohort": 50, "min_band": 30, "edges": None, "difficulty": None},
                   "cases": {"id": [str(r) for r in range(59)], "male": [1.0, 0.0] * 29 + [1.0], "reference": [100.0] * 59,
                             "known": {"none": estimates, "flip": estimates}, "unknown": averaged,
                             "spread": None},
                   "qc": {"mask_fraction": [None, None], "agreement": [None, None]}}
    return Bundle(root, {"name": f"{sizes.name} sizes (fresh weights)", "versions": {}, "files": {}},
                  ChainSpec(regressors=regs, segmenter=seg, enhancer=enh), calibration)


def phantoms(root: Path, n: int, size: int) -> pd.DataFrame:
    """`n` phantom radiographs of side `size` (made once, kept under root) as a predict input table."""
    data = root / f"phantoms_{size}px_{n}"
    generate_dataset(data, n=n, seed=0, image_size=size, workers=1)
    index = read_index(data, strict=True).head(n)
    return pd.DataFrame({"id": index["id"], "path": index["path"], "male": index["male"].astype(float),
                         "sex_source": "labels", "reference": index["boneage"]})


@dataclass
class Pass:
    """One run of the chain over the images: seconds, per-step seconds, rows and overlays."""

    seconds: float
    steps: dict[str, float]
    rows: list[dict[str, Any]]
    overlays: list[np.ndarray | None]


def run_chain(module: ChainModule, frame: pd.DataFrame, batch: int, workers: int) -> Pass:
    """The whole chain over `frame`, `batch` images per call, as `Trainer.predict` feeds it (decode included)."""
    module.clock.reset()
    loader = DataLoader(InputImages(frame, module.chain, "input"), batch_size=batch, collate_fn=collate,
                        num_workers=workers)
    rows, overlays = [], []
    started = fetched = time.perf_counter()
    for part in loader:
        module.clock.add("decode", time.perf_counter() - fetched)
        for m in module.measure(part):
            rows.append(module.finish(m))
            overlays.append(m.overlay)
        fetched = time.perf_counter()
    seconds = time.perf_counter() - started
    bad = sorted({r["status"] for r in rows if r["status"] != "ok"})
    if bad:
        raise SystemExit(f"{len(frame)} images: statuses {bad}; the benchmark needs every image through the chain")
    return Pass(seconds, dict(module.clock.seconds), rows, overlays)


def compare(ref: Pass, new: Pass) -> dict[str, float]:
    """The largest difference of the estimates (months) and of the CAM overlays (0-255) between two passes."""
    estimates = max(abs(a["boneage"] - b["boneage"]) for a, b in zip(ref.rows, new.rows, strict=True))
    cams = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(ref.overlays, new.overlays, strict=True)
            if a is not None and b is not None]
    return {"max_abs_diff_months": float(estimates),
            "overlay_max_abs_diff": float(max(c.max() for c in cams)) if cams else float("nan"),
            "overlay_mean_abs_diff": float(np.mean([c.mean() for c in cams])) if cams else float("nan")}


@dataclass(frozen=True)
class Setting:
    """A row's two paths: the reference's torch threads and the shared path's (`predict.threads`: a count, or auto)."""

    name: str
    reference_threads: int
    shared_threads: int | str


def run_interleaved(modules: dict[str, ChainModule], threads: dict[str, int | None], frame: pd.DataFrame,
                    batch: int, workers: int, first: int) -> dict[str, Pass]:
    """Every path over `frame`, batch by batch in turn (which path goes first alternates from batch to batch), so
    that load from other jobs, which drifts over seconds, falls on all paths alike. `threads`: the torch threads
    set before a path's batch (None: the path sets its own, `predict.threads`)."""
    names = list(modules)
    loaders = {name: iter(DataLoader(InputImages(frame, modules[name].chain, "input"), batch_size=batch,
                                     collate_fn=collate, num_workers=workers)) for name in names}
    out = {name: Pass(0.0, {}, [], []) for name in names}
    for module in modules.values():
        module.clock.reset()
    for index in range((len(frame) + batch - 1) // batch):
        order = names if (index + first) % 2 == 0 else names[::-1]
        for name in order:
            module, done = modules[name], out[name]
            if threads[name] is not None:
                torch.set_num_threads(threads[name])
            started = time.perf_counter()
            part = next(loaders[name])
            module.clock.add("decode", time.perf_counter() - started)
            for m in module.measure(part):
                done.rows.append(module.finish(m))
                done.overlays.append(m.overlay)
            done.seconds += time.perf_counter() - started
    for name, done in out.items():
        done.steps = dict(modules[name].clock.seconds)
        bad = sorted({r["status"] for r in done.rows if r["status"] != "ok"})
        if bad:
            raise SystemExit(f"{name}: statuses {bad}; the benchmark needs every image through the chain")
    return out


def measure(bundle: Bundle, frame: pd.DataFrame, batch: int, workers: int, repeats: int, tta: str,
            setting: Setting) -> dict[str, Any]:
    """Reference and shared paths over `frame`, interleaved batch by batch, `repeats` times; times summed over the
    repeats (the first pass of each path, a warm-up over one batch, is left out)."""
    options = ChainOptions(tta=tta, sex="input", coverage=0.9, bf16="as_trained", cam=True)
    modules = {"reference": ChainModule(bundle, options, reference=True).eval(),
               "shared": ChainModule(bundle, options, threads=setting.shared_threads).eval()}
    threads: dict[str, int | None] = {"reference": setting.reference_threads, "shared": None}
    for module in modules.values():
        torch.set_num_threads(setting.reference_threads)  # the shared path's own choice applies from its batches on
        module.prepare()
    run_interleaved(modules, threads, frame.head(batch), batch, workers, 0)  # warm-up: allocator, oneDNN kernels
    passes = [run_interleaved(modules, threads, frame, batch, workers, k) for k in range(repeats)]
    n = len(frame) * repeats
    total = {name: sum(p[name].seconds for p in passes) for name in modules}
    steps = {name: {s: sum(p[name].steps.get(s, 0.0) for p in passes) / n for s in STEPS} | {"total": total[name] / n}
             for name in modules}
    chosen = modules["shared"].threads
    print(f"  reference {n / total['reference']:.2f} img/s, shared {n / total['shared']:.2f} img/s", flush=True)
    return {"img_s": {name: n / total[name] for name in modules}, "seconds_per_image": steps,
            "agreement": compare(passes[-1]["reference"], passes[-1]["shared"]),
            "threads": {"reference": setting.reference_threads, "shared": setting.shared_threads,
                        "shared_chosen": chosen.chosen, "shared_measured_s_per_image": chosen.seconds}}


def worker_rates(bundle: Bundle, frame: pd.DataFrame, batch: int, repeats: int, workers: int) -> dict[int, float]:
    """Images/s of the shared path with decoding in the main process (0) and in `workers` DataLoader processes,
    alternately, the faster pass of each kept."""
    module = ChainModule(bundle, ChainOptions(tta="none", sex="input", coverage=0.9, bf16="as_trained", cam=True))
    module.eval().prepare()
    run_chain(module, frame.head(batch), batch, 0)
    best: dict[int, float] = {}
    for _ in range(repeats):
        for count in (0, workers):
            done = run_chain(module, frame, batch, count)
            best[count] = max(best.get(count, 0.0), len(frame) / done.seconds)
    return best


def _per_image(call: Any, batch: int, repeats: int) -> float:
    """Seconds per image of `call` on a batch, after one warm-up call."""
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats / batch


def onnx_rates(bundle: Bundle, root: Path, batch: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per network of the bundle: seconds per image through PyTorch (its recorded precision and memory format, as
    the chain calls it) and through onnxruntime (the float32 graph `export.onnx=true` writes), on one batch."""
    import onnxruntime as ort

    from medal.bundle.onnx import export_onnx
    from medal.hardware import use_bf16

    files = export_onnx(bundle, root)
    chain, generator = bundle.chain, torch.Generator().manual_seed(0)
    options = ChainOptions(tta="none", sex="input", coverage=0.9, bf16="as_trained", cam=False)
    module = ChainModule(bundle, options).eval()
    module.prepare()
    seg, enh, reg = chain.segmenter, chain.enhancer, chain.regressors[0]

    def image(size: int) -> torch.Tensor:
        return torch.rand(batch, 1, size, size, generator=generator)

    male = torch.ones(batch)
    calls = {"committee": (lambda x: module._seg_model.predict_probs(x[:, 0].numpy()), image(seg.image_size)),
             "generator": (lambda x: module._enhance(x), image(int(enh.image_size))),
             f"regressor_{reg.name}": (lambda x: module._months(module.regressors[0], use_bf16(reg.bf16, "cpu"), x,
                                                                male), image(reg.image_size))}
    out = {}
    for name, (torch_call, x) in calls.items():
        options_ = ort.SessionOptions()
        options_.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(root / files[name]["file"]), options_, providers=["CPUExecutionProvider"])
        feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), (x, male), strict=False)}
        timings = {"torch": _per_image(partial(torch_call, x), batch, repeats),
                   "onnxruntime": _per_image(partial(session.run, None, feeds), batch, repeats)}
        out[name] = timings
        print(f"  {name}: torch {1000 * timings['torch']:.1f} ms/image, onnxruntime "
              f"{1000 * timings['onnxruntime']:.1f}", flush=True)
    return out


def profile_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: milliseconds per image by step, one column per (sizes, threads, path)."""
    columns = [(key, path) for key, r in results.items() for path in r["seconds_per_image"]]
    lines = ["| step | " + " | ".join(f"{key} {path}" for key, path in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for step in (*STEPS, "total"):
        cells = [results[key]["seconds_per_image"][path][step] * 1000 for key, path in columns]
        lines.append(f"| {step} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--n", type=int, default=64, help="images at the demo's sizes")
    parser.add_argument("--paper-n", type=int, default=8, help="images at the paper's sizes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--paper-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads both paths are also measured at, each (the paper's sizes: the first)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding (predict.num_workers)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes per setting (times summed)")
    parser.add_argument("--tta", default="none", choices=["none", "flip"])
    parser.add_argument("--bundle", type=Path, default=None, help="a real bundle (its own sizes) instead")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_predict"))
    args = parser.parse_args()
    default_threads = torch.get_num_threads()  # torch's own choice: what `medal predict` ran with before
    results: dict[str, dict[str, Any]] = {}
    rows: list[BenchRow] = []
    onnx: dict[str, dict[str, float]] = {}
    for name in ["bundle"] if args.bundle else args.sizes:
        sizes = demo_sizes() if name == "demo" else PAPER
        n, batch = (args.paper_n, args.paper_batch) if name == "paper" else (args.n, args.batch)
        batch = min(batch, n)
        frame = phantoms(args.root, n, sizes.phantom_size if name != "bundle" else 256)
        bundle = load_bundle(args.bundle) if args.bundle else fresh_bundle(args.root / f"bundle_{name}", sizes)
        settings = [Setting(f"{t} thread{'s' if t > 1 else ''}", t, t)
                    for t in (args.threads[:1] if name == "paper" else args.threads)]
        if name != "paper":
            settings.insert(0, Setting(f"defaults ({default_threads} threads before; predict.threads=auto now)",
                                       default_threads, "auto"))
        for setting in settings:
            key = f"{name}, {setting.name}"
            print(f"== {key}: {n} images, batches of {batch}", flush=True)
            results[key] = r = measure(bundle, frame, batch, args.workers, args.repeats, args.tta, setting)
            rows.append(BenchRow(f"predict chain at the {name} sizes, {setting.name}, batches of {batch}",
                                 r["img_s"]["shared"], "img/s", "reference chain", r["img_s"]["reference"],
                                 extra={"images": n, **r["agreement"], **r["threads"]}))
            print(json.dumps(r, indent=1), flush=True)
        if name == "demo":
            torch.set_num_threads(args.threads[0])
            print(f"== DataLoader workers, {args.threads[0]} thread(s)", flush=True)
            loaders = worker_rates(bundle, frame, batch, args.repeats, max(1, args.workers))
            rows.append(BenchRow(f"shared chain at the demo sizes, {args.threads[0]} thread(s): decoding in "
                                 f"{max(1, args.workers)} DataLoader worker(s)", loaders[max(1, args.workers)],
                                 "img/s", "decoding in the main process", loaders[0]))
            print(f"== onnxruntime against torch, {args.threads[0]} thread(s)", flush=True)
            onnx = onnx_rates(bundle, args.root / "onnx_demo", batch)
            rows += [BenchRow(f"{net} at the demo sizes, batch of {batch}, {args.threads[0]} thread(s): onnxruntime "
                              "(float32)", 1 / t["onnxruntime"], "img/s", "PyTorch as the chain runs it (bf16 where "
                              "native)", 1 / t["torch"]) for net, t in onnx.items()]
    notes = ("Per-step profile, milliseconds per image (decode: the DataLoader's time in the main process with "
             f"{args.workers} workers; paths interleaved batch by batch, {args.repeats} passes summed; the rest of "
             "`total` is the interval and the rows):\n\n" + profile_table(results) + "\n\n"
             f"CPU bf16 native: {cpu_has_native_bf16()}; each network at its recorded precision (auto: bf16 where "
             f"native); test-time augmentation: {args.tta}. Shared path with predict.threads=auto chose "
             + ", ".join(f"{k}: {r['threads']['shared_chosen']}" for k, r in results.items()
                         if r["threads"]["shared"] == "auto")
             + ". Estimates of the two paths, largest difference: "
             + ", ".join(f"{k} {r['agreement']['max_abs_diff_months']:.2g} months" for k, r in results.items())
             + f". Load average at the end: {Path('/proc/loadavg').read_text().split()[0]} "
             "(other jobs share the cores).")
    path = write_bench("predict", rows, notes=notes)
    payload = json.loads(path.read_text())
    payload.update(results=results, onnx=onnx)
    path.write_text(json.dumps(payload, indent=2))
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
