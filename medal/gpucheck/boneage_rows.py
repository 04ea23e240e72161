"""Bone age rows: the matmul peak, a batch-size search per backbone, training fed by medal's own DataModule
(eager, and with torch.compile), and the loader alone.

The training rows build exactly what `medal boneage model=<backbone> finetune=all` builds (`build_boneage_datamodule`,
`build_module`, the `finetune` callback, the `trainer` config: bf16-mixed on a GPU, channels_last from
`conf/boneage.yaml`), fed from the memory-mapped cache with kornia augmentation on the device
(`on_after_batch_transfer`), and time every step after it finished on the device (`timing.StepTimer`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medal.boneage.experiment import build_finetune_callback, build_module
from medal.boneage.module import BoneAgeModule
from medal.data.augment import augment
from medal.data.datamodule import BoneAgeDataModule, build_boneage_datamodule
from medal.gpucheck.context import Context
from medal.gpucheck.record import Row
from medal.gpucheck.sizes import TRAIN_GOAL_IMG_S
from medal.gpucheck.timing import StepTimer, sync

log = logging.getLogger("medal.gpucheck")
MEMORY_FILL = 0.85  # stop growing the batch once a step's peak passes this share of the GPU's memory
MIN_GAIN = 1.05  # ... or once doubling it gains less than 5% images/s


def matmul_peak(ctx: Context, deadline: float) -> Row:
    """The device's measured matrix-multiply rate in the training dtype (bf16 on a GPU): the ceiling the
    training rows are compared with."""
    n = ctx.sizes.matmul_n
    dtype = torch.bfloat16 if ctx.bf16 else torch.float32
    a, b = (torch.randn(n, n, device=ctx.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(ctx.device)
    reps, started = 0, time.perf_counter()
    while reps < 10 and (reps < 2 or time.perf_counter() < deadline):
        a @ b
        sync(ctx.device)
        reps += 1
    tflops = 2 * n**3 * reps / (time.perf_counter() - started) / 1e12
    ctx.facts["matmul_tflops"] = tflops
    return Row("", tflops, "TFLOP/s", note=f"{reps} products of two {n}x{n} {str(dtype).removeprefix('torch.')} "
               "matrices", detail={"dtype": str(dtype), "n": n, "reps": reps})


def _overrides(ctx: Context, backbone: str) -> list[str]:
    """`medal boneage` on the check's phantoms: raw radiographs, every layer trained (`finetune=all`)."""
    size = [f"data.image_size={ctx.sizes.image_size}"] if ctx.sizes.image_size else []
    return [f"data.root={ctx.phantoms}", "data.images=raw", f"model={backbone}", "finetune=all", *size]


def _synthetic_batch(ctx: Context, cfg: DictConfig, batch: int) -> dict[str, torch.Tensor]:
    size = int(cfg.data.image_size)
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    return {"image": torch.rand(batch, 1, size, size, device=ctx.device, generator=generator),
            "male": (torch.arange(batch, device=ctx.device) % 2).float(),
            "boneage": torch.linspace(1.0, 228.0, batch, device=ctx.device)}


def train_step(ctx: Context, module: BoneAgeModule, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One update as Lightning does it at `ctx.precision`: autocast forward and loss, backward, step."""
    with ctx.autocast():
        loss, _ = module._step(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def flops_per_image(ctx: Context, module: BoneAgeModule, cfg: DictConfig) -> float:
    """FLOPs of one training image (forward + backward), counted by torch's FlopCounterMode on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = _synthetic_batch(ctx, cfg, 2)
    with FlopCounterMode(display=False) as counter, ctx.autocast():
        loss, _ = module._step(batch)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def _timed_steps(ctx: Context, module: BoneAgeModule, optimizer: torch.optim.Optimizer,
                 batch: dict[str, torch.Tensor], steps: int) -> float:
    """Images per second of `steps` updates after two warm-up ones."""
    for _ in range(2):
        train_step(ctx, module, optimizer, batch)
    sync(ctx.device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(ctx, module, optimizer, batch)
    sync(ctx.device)
    return steps * len(batch["boneage"]) / (time.perf_counter() - started)


def search_batch(ctx: Context, backbone: str, deadline: float) -> Row:
    """The batch size that fills the device: grow it while it fits in memory and still pays (device-resident
    synthetic batches, so the loader does not hide the model's own rate). Records the choice for the DataModule
    row, and the FLOPs of one image for the bf16-peak fraction."""
    cfg = ctx.compose("boneage", f"search_{backbone}", _overrides(ctx, backbone))
    module = build_module(cfg, np.array([1.0, 228.0])).to(ctx.device).train()
    optimizer = instantiate(cfg.optimizer)(module.parameters())
    total = torch.cuda.get_device_properties(ctx.device).total_memory if ctx.device.type == "cuda" else None
    tried: list[dict[str, Any]] = []
    for size in ctx.sizes.batch_sizes:
        if tried and time.perf_counter() > deadline:
            break
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            rate = _timed_steps(ctx, module, optimizer, _synthetic_batch(ctx, cfg, size), steps=3)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            tried.append({"batch": size, "out_of_memory": True})
            break
        peak = torch.cuda.max_memory_allocated(ctx.device) if total else None
        tried.append({"batch": size, "img_s": rate, "peak_gib": peak / 2**30 if peak else None})
        rates = [t["img_s"] for t in tried if "img_s" in t]
        if (len(rates) > 1 and rates[-1] < MIN_GAIN * max(rates[:-1])) or (total and peak > MEMORY_FILL * total):
            break
    measured = [t for t in tried if "img_s" in t]
    if not measured:
        raise RuntimeError(f"batch {ctx.sizes.batch_sizes[0]} does not fit on {ctx.device}")
    best = max(measured, key=lambda t: t["img_s"])
    ctx.facts[f"batch/{backbone}"] = best["batch"]
    ctx.facts[f"flops/{backbone}"] = flops_per_image(ctx, module, cfg)
    gflops = ctx.facts[f"flops/{backbone}"] / 1e9
    note = f"batch {best['batch']} (tried {', '.join(str(t['batch']) for t in tried)}); {gflops:.1f} GFLOP per image"
    return Row("", best["img_s"], "img/s", note=note, detail={"chosen_batch": best["batch"], "tried": tried,
                                                              "gflops_per_image": gflops,
                                                              "input": "synthetic, already on the device"})


def boneage_datamodule(ctx: Context, backbone: str, run: str,
                       workers: int | None = None) -> tuple[DictConfig, BoneAgeDataModule]:
    """The bone age DataModule of the check's phantoms at the backbone's chosen batch (cache built on first use),
    with `workers` loader processes (None: the check's `--workers`, else the config's default)."""
    batch = ctx.facts.get(f"batch/{backbone}", ctx.sizes.batch_sizes[0])
    workers = ctx.workers if workers is None else workers
    loader = [] if workers is None else [f"data.num_workers={workers}"]
    cfg = ctx.compose("boneage", run, [*_overrides(ctx, backbone), f"data.batch_size={batch}", *loader,
                                       f"data.sampler.samples_per_epoch={batch * 10_000}"])
    datamodule = build_boneage_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def datamodule_training(ctx: Context, backbone: str, deadline: float, compile_model: bool = False,
                        goal: float | None = None) -> Row:
    """Images/s of `medal boneage`'s training loop (Lightning, DataModule, augmentation on the device)."""
    cfg, datamodule = boneage_datamodule(ctx, backbone, f"train_{backbone}{'_compiled' if compile_model else ''}")
    module = build_module(cfg, datamodule.frames["train"]["boneage"].to_numpy())
    if compile_model:
        module.model = torch.compile(module.model, backend=ctx.sizes.compile_backend)
    warmup = ctx.sizes.warmup_steps + (3 if compile_model else 0)
    timer = StepTimer(deadline, lambda batch: len(batch["boneage"]), min_steps=warmup + 2)
    trainer = instantiate(cfg.trainer, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                          enable_checkpointing=False, enable_model_summary=False,
                          callbacks=[build_finetune_callback(cfg.finetune), timer])
    trainer.fit(module, datamodule=datamodule)
    rate = timer.rate(warmup)
    detail: dict[str, Any] = {"batch": datamodule.batch_size, "num_workers": datamodule.num_workers,
                              "steps": timer.steps, "warmup_steps": min(warmup, timer.steps - 1),
                              "median_step_s": timer.step_seconds(warmup), "first_step_s": timer.marks[1] - timer.marks[0],
                              "precision": str(cfg.trainer.precision), "channels_last": bool(cfg.channels_last),
                              "compiled": ctx.sizes.compile_backend if compile_model else None, "image_size": int(cfg.data.image_size)}
    flops, peak = ctx.facts.get(f"flops/{backbone}"), ctx.facts.get("matmul_tflops")
    if flops and peak:
        detail["achieved_tflops"] = rate * flops / 1e12
        detail["fraction_of_matmul_peak"] = rate * flops / 1e12 / peak
    ctx.facts[f"rate/{backbone}{'/compiled' if compile_model else ''}"] = rate
    eager = ctx.facts.get(f"rate/{backbone}")
    if compile_model and eager:
        detail["speedup_over_eager"] = rate / eager
    note = f"batch {detail['batch']}, {detail['num_workers']} loader workers"
    if "fraction_of_matmul_peak" in detail:
        note += f", {detail['fraction_of_matmul_peak']:.0%} of the matmul peak"
    if "speedup_over_eager" in detail:
        note += f", {detail['speedup_over_eager']:.2f}x eager (first step {detail['first_step_s']:.0f} s)"
    return Row("", rate, "img/s", goal=goal, note=note, detail=detail)


def loader_alone(ctx: Context, backbone: str, deadline: float) -> Row:
    """The training loader with nothing to feed: memmap rows -> device -> kornia augmentation, images/s, with
    the training row's loader workers and, for comparison, with none (everything in the main process)."""
    _, datamodule = boneage_datamodule(ctx, backbone, f"loader_{backbone}")
    workers = datamodule.num_workers
    rates = {workers: _loader_rate(ctx, datamodule, (time.perf_counter() + deadline) / 2 if workers else deadline)}
    if workers:
        rates[0] = _loader_rate(ctx, boneage_datamodule(ctx, backbone, f"loader_{backbone}", 0)[1], deadline)
    batch = datamodule.batch_size
    note = f"batch {batch}; " + ", ".join(f"{w} workers: {r:.0f} img/s" for w, r in rates.items())
    return Row("", rates[workers], "img/s", goal=TRAIN_GOAL_IMG_S, note=note,
               detail={"num_workers": workers, "img_s_by_workers": rates, "batch": batch})


def _loader_rate(ctx: Context, datamodule: BoneAgeDataModule, deadline: float) -> float:
    seen, started = 0, None
    for n, batch in enumerate(datamodule.train_dataloader()):
        image = batch["image"].to(ctx.device, non_blocking=True)
        if datamodule.augmentation is not None:
            image = augment(datamodule.augmentation, image)
        sync(ctx.device)
        if started is None:  # the first batch waits for the workers to start
            started = time.perf_counter()
            continue
        seen += image.shape[0]
        if n >= ctx.sizes.loader_batches or time.perf_counter() > deadline:
            break
    if not seen:
        raise RuntimeError("the training loader gave fewer than 2 batches")
    return seen / (time.perf_counter() - started)
