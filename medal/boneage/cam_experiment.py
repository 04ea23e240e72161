"""`medal cam`: class activation maps of a trained bone age model on the held-out split of its run.

Writes `overlays/<id>.png` (image + normalised map), `average_{male,female}.png` (mean image with the mean
normalised map of the cohort) and `cam_by_sex.png` (both side by side, as the paper's Figure 13). On a
phantom set, which knows its hands and bones, it also measures where each map's positive mass lies
(`cam_regions.py`): `cam_regions.csv` per image and `cam/{bone,centre,hand}_{fraction,area,grid,near}` in
the metrics.
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
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from medal.atomic import atomic_path  # noqa: E402
from medal.boneage.cam import class_activation_map, normalise, overlay  # noqa: E402
from medal.boneage.cam_regions import RegionTally, region_maps  # noqa: E402
from medal.boneage.experiment import check_recorded_split, run_marker  # noqa: E402
from medal.boneage.module import BoneAgeModule  # noqa: E402
from medal.config import to_plain  # noqa: E402
from medal.data.split import SPLIT_FILE  # noqa: E402
from medal.errors import MedalError  # noqa: E402
from medal.hardware import inference_device  # noqa: E402
from medal.loggers import build_loggers, log_figure  # noqa: E402
from medal.plotting import save_figure  # noqa: E402

log = logging.getLogger("medal.boneage")
ARTIFACTS = {"cam_by_sex": "cam_by_sex.png", "average_male": "average_male.png", "average_female": "average_female.png"}  # outputs by name, in the run folder
REGIONS_FILE = "cam_regions.csv"  # per-image region fractions (phantom sets only)


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


#: The training run's data settings CAM uses; a cam config may name one only to agree with the run.
FROM_RUN: tuple[str, ...] = ("data.name", "data.root", "data.work_dir", "data.images", "data.image_size",
                             "data.fit", "data.split", "cohort.name", "enhance.name")
_PATH_KEYS = ("data.root", "data.work_dir", "data.images")


def training_settings(ckpt: Path) -> tuple[Path, dict[str, Any]]:
    """The run dir of a checkpoint (`<run>/checkpoints/<name>.ckpt`) and the settings its record holds."""
    if not ckpt.is_file():
        raise MedalError(f"ckpt={ckpt}: no such checkpoint; give a run's checkpoints/best-*.ckpt or last.ckpt")
    run = ckpt.resolve().parent.parent
    marker = run_marker(run)
    record = marker.read()
    if record is None or "parts" not in record:
        raise MedalError(f"ckpt={ckpt}: no record of the run that trained it ({marker.path}); give a checkpoint "
                         "inside its `medal boneage` run folder (<run>/checkpoints/), where CAM finds the images "
                         "the model was trained on")
    check_recorded_split(record["parts"], run)
    return run, record["parts"]


def _lookup(settings: dict[str, Any], key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _same(key: str, given: Any, trained: Any) -> bool:
    if key in _PATH_KEYS and given != "raw" and trained not in (None, "raw"):
        return Path(str(given)).expanduser().resolve() == Path(str(trained)).expanduser().resolve()
    return given == trained


def check_against_run(cfg: DictConfig, settings: dict[str, Any], run: Path) -> None:
    """Refuse a data setting of the cam config that contradicts the training run's (null or absent = the run's).

    Computing maps of a GAN-trained model on un-enhanced images (or at another size, on another split) would
    explain a model that never existed, so a contradiction stops the task instead of being overridden quietly.
    """
    for key in FROM_RUN:
        given = to_plain(OmegaConf.select(cfg, key))
        if given is None:
            continue
        trained = _lookup(settings, key)
        if not _same(key, given, trained):
            raise MedalError(f"{key}={given}: the model in {run} was trained with {key}={trained}, and CAM uses "
                             "the training run's data settings; drop this override (or give the ckpt of a run "
                             "trained that way)")


def run_data_config(cfg: DictConfig, settings: dict[str, Any], out_dir: Path) -> DictConfig:
    """The run's data, cohort and seed with CAM's own loader settings: what `build_boneage_datamodule` reads."""
    data = {**settings["data"], "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
            "cache_workers": cfg.data.cache_workers,
            "progressive": {"size": None, "epochs": 0}}  # a training schedule; maps are made at the run's full size
    return OmegaConf.create({"data": data, "cohort": settings["cohort"], "seed": settings["seed"],
                             "paths": {"output_dir": str(out_dir)}})


def _save_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp)


def run_cam(cfg: DictConfig) -> dict[str, Any]:
    """CAM (or Grad-CAM) overlays and male/female averages on the held-out split of the checkpoint's run."""
    from medal.data.datamodule import build_boneage_datamodule

    ckpt = Path(str(cfg.ckpt)).expanduser()
    run, settings = training_settings(ckpt)
    check_against_run(cfg, settings, run)
    split = str(cfg.cam.split)
    if split not in ("test", "val"):
        raise MedalError(f"cam.split={split!r}: choose test or val (maps of training images are not reported)")
    device = torch.device(inference_device(str(cfg.cam.device), "cam.device"))
    module = load_trained(ckpt).eval().to(device)
    out_dir = Path(cfg.paths.output_dir)
    if (run / SPLIT_FILE).is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / SPLIT_FILE, out_dir / SPLIT_FILE)  # the training run's held-out images
    data_cfg = run_data_config(cfg, settings, out_dir)
    log.info("CAM of %s on %s (%s, %d px, cohort %s), as trained", ckpt.name, data_cfg.data.images,
             settings["enhance"]["name"], data_cfg.data.image_size, data_cfg.cohort.name)
    datamodule = build_boneage_datamodule(data_cfg)
    datamodule.setup("test")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()

    references = region_maps(data_cfg.data.root, str(data_cfg.data.images), data_cfg.data.work_dir,
                             int(data_cfg.data.image_size), str(data_cfg.data.fit))
    tally = RegionTally()
    sums: dict[str, dict[str, Any]] = {s: {"image": 0.0, "map": 0.0, "n": 0} for s in ("male", "female")}
    written, method = 0, "cam"
    for batch in tqdm(loader, desc=f"cam {split}"):
        image = batch["image"].to(device, torch.float32).contiguous(memory_format=module.memory_format)
        result = class_activation_map(module.model, image, batch["male"].to(device))
        method = result.method
        if references is not None:  # the raw map: its positive part is the evidence that raised the estimate
            tally.add(list(batch["id"]), ["M" if float(m) >= 0.5 else "F" for m in batch["male"]], result.upsampled,
                      [references.regions(str(i)) for i in batch["id"]], tuple(result.maps.shape[-2:]))
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
        raise MedalError(f"cam.split={split}: no images in that split for cohort {data_cfg.cohort.name}")

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
    metrics = {"cam/n_male": sums["male"]["n"], "cam/n_female": sums["female"]["n"],
               "cam/exact": float(method == "cam"), "cam/overlays": written,
               "cam/image_size": float(data_cfg.data.image_size)}
    if tally.rows:
        tally.write(out_dir / REGIONS_FILE)
        metrics.update(tally.metrics())
        log.info("positive CAM mass on the hand %.3f (its area %.3f, the hand drawn at the map's grid %.3f; on it or "
                 "within one cell %.3f), on the bones %.3f (area %.3f, grid %.3f)",
                 metrics.get("cam/hand_fraction", float("nan")), metrics["cam/hand_area"], metrics["cam/hand_grid"],
                 metrics.get("cam/hand_near", float("nan")), metrics.get("cam/bone_fraction", float("nan")),
                 metrics["cam/bone_area"], metrics["cam/bone_grid"])
    return metrics
