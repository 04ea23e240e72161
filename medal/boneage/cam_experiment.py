"""`medal cam`: class activation maps of a trained bone age model on the held-out split of its run.

Writes `overlays/<id>.png` (image + normalised map), `average_{male,female}.png` (mean image with the mean
normalised map of the cohort) and `cam_by_sex.png` (both side by side, as the paper's Figure 13).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from medal.atomic import atomic_path  # noqa: E402
from medal.boneage.cam import class_activation_map, normalise, overlay  # noqa: E402
from medal.boneage.module import BoneAgeModule  # noqa: E402
from medal.errors import MedalError  # noqa: E402
from medal.hardware import inference_device  # noqa: E402
from medal.loggers import build_loggers, log_figure  # noqa: E402
from medal.plotting import save_figure

log = logging.getLogger("medal.boneage")
ARTIFACTS = {"cam_by_sex": "cam_by_sex.png", "average_male": "average_male.png", "average_female": "average_female.png"}  # outputs by name, in the run folder


def load_trained(ckpt: str | Path) -> BoneAgeModule:
    """A trained BoneAgeModule from its Lightning checkpoint (weights-only load; no download, no weights file)."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise MedalError(f"ckpt={path}: no such checkpoint; give a run's checkpoints/best-*.ckpt or last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = dict(checkpoint["hyper_parameters"])
        state = checkpoint["state_dict"]
    except Exception as err:
        raise MedalError(f"ckpt={path}: not a medal bone age checkpoint ({type(err).__name__}: {err})") from None
    hparams["model_cfg"] = {**hparams["model_cfg"], "weights": None, "pretrained": False}
    module = BoneAgeModule(**hparams)
    module.load_state_dict(state)
    return module


def _training_run(ckpt: Path) -> Path | None:
    """The run dir a checkpoint was written in (`<run>/checkpoints/x.ckpt`), when it looks like one."""
    run = ckpt.resolve().parent.parent
    return run if (run / "split.csv").is_file() or (run / ".hydra").is_dir() else None


def _image_size(cfg: DictConfig, run: Path | None, module: BoneAgeModule) -> int:
    if cfg.data.get("image_size"):
        return int(cfg.data.image_size)
    saved = run / ".hydra" / "config.yaml" if run else None
    if saved is not None and saved.is_file():
        return int(OmegaConf.load(saved).data.image_size)
    return int(module.hparams.model_cfg.get("image_size", 299))


def _save_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp)


def run_cam(cfg: DictConfig) -> dict[str, Any]:
    from medal.data.datamodule import build_boneage_datamodule

    ckpt = Path(str(cfg.ckpt)).expanduser()
    device = torch.device(inference_device(str(cfg.cam.device), "cam.device"))
    module = load_trained(ckpt).eval().to(device)
    out_dir = Path(cfg.paths.output_dir)
    run = _training_run(ckpt)
    if run is not None and (run / "split.csv").is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "split.csv", out_dir / "split.csv")  # the training run's held-out images
    with open_dict(cfg):
        cfg.data.image_size = _image_size(cfg, run, module)
    datamodule = build_boneage_datamodule(cfg)
    datamodule.setup("test")
    split = str(cfg.cam.split)
    if split not in ("test", "val"):
        raise MedalError(f"cam.split={split!r}: choose test or val (maps of training images are not reported)")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()

    sums: dict[str, dict[str, Any]] = {s: {"image": 0.0, "map": 0.0, "n": 0} for s in ("male", "female")}
    written, method = 0, "cam"
    for batch in tqdm(loader, desc=f"cam {split}"):
        image = batch["image"].to(device, torch.float32).contiguous(memory_format=module.memory_format)
        result = class_activation_map(module.model, image, batch["male"].to(device))
        method = result.method
        heat = normalise(result.upsampled).cpu().numpy()
        grey = batch["image"][:, 0].numpy()
        for i, ident in enumerate(batch["id"]):
            cohort = "male" if float(batch["male"][i]) >= 0.5 else "female"
            sums[cohort]["image"] = sums[cohort]["image"] + grey[i]
            sums[cohort]["map"] = sums[cohort]["map"] + heat[i]
            sums[cohort]["n"] += 1
            if written < int(cfg.cam.max_overlays):
                _save_png(out_dir / "overlays" / f"{ident}.png", overlay(grey[i], heat[i], float(cfg.cam.alpha)))
                written += 1
    if not sums["male"]["n"] and not sums["female"]["n"]:
        raise MedalError(f"cam.split={split}: no images in that split for cohort {cfg.cohort.name}")

    loggers = build_loggers(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, (cohort, acc) in zip(axes, sums.items(), strict=True):
        ax.axis("off")
        if not acc["n"]:
            ax.set_title(f"{cohort}: no images")
            continue
        rgb = overlay(acc["image"] / acc["n"], acc["map"] / acc["n"], float(cfg.cam.alpha))
        path = out_dir / f"average_{cohort}.png"
        _save_png(path, rgb)
        log_figure(loggers, f"cam/average_{cohort}", path)
        ax.imshow(rgb)
        ax.set_title(f"{cohort} (n={acc['n']})")
    fig.suptitle(f"average {'CAM' if method == 'cam' else 'Grad-CAM'} on the {split} split")
    figure = save_figure(fig, out_dir / "cam_by_sex.png")
    log_figure(loggers, "cam/by_sex", figure)
    log.info("%s maps of %d images written to %s", method, sums["male"]["n"] + sums["female"]["n"], out_dir)
    return {"cam/n_male": sums["male"]["n"], "cam/n_female": sums["female"]["n"],
            "cam/exact": float(method == "cam"), "cam/overlays": written}
