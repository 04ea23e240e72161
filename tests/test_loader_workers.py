"""Loader processes by hardware (`${loader_workers:...}`): none on a CPU, a few on a GPU, where preparing the next
batch in the main process would stall the device between steps. Worker counts never change a run's settings, and
a worker-fed loader gives the very batches the main process gives."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from medal.boneage.experiment import run_settings
from medal.data.datamodule import build_boneage_datamodule
from medal.hardware import loader_workers


def test_gpu_runs_get_loader_workers_and_cpu_runs_none(make_cfg) -> None:
    gpu = loader_workers("gpu")
    assert loader_workers("cpu") == 0 and gpu >= 1
    assert make_cfg("boneage", ["trainer=cpu"]).data.num_workers == 0
    assert make_cfg("boneage", ["trainer=gpu"]).data.num_workers == gpu
    assert make_cfg("enhance", ["trainer=gpu", "enhance=gan"]).enhance.num_workers == gpu
    cam = make_cfg("cam", ["ckpt=x.ckpt", "enhance=gan"])  # no trainer in CAM's config: the CPU's answer
    assert OmegaConf.to_container(cam.enhance, resolve=True)["num_workers"] == 0


def test_worker_counts_are_not_part_of_a_bone_age_runs_settings(make_cfg) -> None:
    base = make_cfg("boneage", ["enhance=gan"])
    more = make_cfg("boneage", ["enhance=gan", "data.num_workers=3", "enhance.num_workers=5"])
    assert run_settings(base) == run_settings(more)


def test_a_worker_fed_loader_gives_the_main_process_batches(make_cfg, tiny_phantoms: Path) -> None:
    batches = {}
    for workers in (0, 1):
        cfg = make_cfg("boneage", ["model=tiny", "data.images=raw", "data.image_size=32", f"data.root={tiny_phantoms}",
                                   f"data.num_workers={workers}", "data.batch_size=8", "data.cache_workers=1"])
        datamodule = build_boneage_datamodule(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches[workers] = list(datamodule.val_dataloader())
    assert [b["id"] for b in batches[0]] == [b["id"] for b in batches[1]]
    assert all(torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.float32
               for a, b in zip(batches[0], batches[1], strict=True))
