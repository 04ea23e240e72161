"""The bone age DataModule: index -> fixed split -> cohort -> cached images -> balanced, augmented batches.

Batches are dicts: `image` float (B, 1, H, W) in [0, 1], `boneage` float months (B,), `male` float 0/1 (B,),
`id` list[str]. The split is drawn once per run over the whole data set (saved as `split.csv`) and the
cohort filter is applied after it, so the male and female test sets are exactly the two halves of the
pooled one. A k-fold run (`cv`, `medal.data.split.CVOptions`) also serves its held-out fold (`oof_dataloader`),
which it predicts and never trains on or selects with. Augmentation runs on the device after transfer, in training only, after the batch has been
downscaled where `data.progressive` says so (`medal.data.progressive`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, default_collate

from medal.config import options_from
from medal.data.augment import AugmentOptions, augment, build_augmentation
from medal.data.cache import FITS, build_cache, load_resized
from medal.data.progressive import ProgressiveOptions, downscale
from medal.data.rsna import read_index
from medal.data.sampling import SamplerOptions, make_sampler
from medal.data.split import CVOptions, HoldoutOptions, SplitOptions, fixed_holdout, load_or_make_split
from medal.errors import MedalError

log = logging.getLogger("medal.data")

COHORTS = ("all", "male", "female")
ROLES = ("train", "val", "test", "oof")  # what the loaders serve; `calibration` images are left to `medal export`


class BoneAgeDataset(Dataset):
    """Images of `frame` (id, path, boneage, male[, row]) from a cache file, or decoded per item without one."""

    def __init__(self, frame: pd.DataFrame, image_size: int, fit: str = "pad", cache_path: Path | None = None):
        self.ids = frame["id"].astype(str).tolist()
        self.paths = frame["path"].astype(str).tolist()
        self.ages = frame["boneage"].to_numpy(dtype=np.float32)
        self.males = frame["male"].to_numpy(dtype=np.float32)
        self.rows = frame["row"].to_numpy() if cache_path is not None else None
        self.image_size, self.fit, self.cache_path = image_size, fit, cache_path
        self._images: np.ndarray | None = None  # opened lazily: each loader worker maps the file itself

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}  # never pickle the mapped array into workers

    def _image(self, i: int) -> np.ndarray:
        if self.cache_path is None:
            return load_resized(self.paths[i], self.image_size, self.fit)
        return self._cache()[self.rows[i]]

    def _cache(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.cache_path, mmap_mode="r")
        return self._images

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.from_numpy(np.asarray(self._image(i), dtype=np.float32))
        return {"image": image[None], "boneage": torch.tensor(self.ages[i]), "male": torch.tensor(self.males[i]),
                "id": self.ids[i]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A whole batch at once (the DataLoader calls this): one read of the cache, collated already."""
        if self.cache_path is None:
            return [self[i] for i in indices]
        idx = np.asarray(indices)
        images = torch.from_numpy(self._cache()[self.rows[idx]].astype(np.float32))
        return CollatedBatch({"image": images[:, None], "boneage": torch.from_numpy(self.ages[idx]),
                              "male": torch.from_numpy(self.males[idx]), "id": [self.ids[i] for i in idx]})


class CollatedBatch(list):
    """Samples that are also kept collated: any `collate_fn` sees a list of sample dicts (views, no copies),
    `collate_batches` takes the collated batch as it is and skips stacking images one by one."""

    def __init__(self, batch: dict[str, Any]):
        super().__init__({key: value[j] for key, value in batch.items()} for j in range(len(batch["id"])))
        self.batch = batch


def collate_batches(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate_fn` of the bone age loaders: `default_collate`, free for batches read whole from the cache."""
    return samples.batch if isinstance(samples, CollatedBatch) else default_collate(samples)


class BoneAgeDataModule(pl.LightningDataModule):
    """Bone age data for one cohort; see the module docstring for what it guarantees."""

    def __init__(self, root: str | Path, work_dir: str | Path, output_dir: str | Path | None = None,
                 cohort: str = "all", images: str = "raw", image_size: int = 299, fit: str = "pad",
                 cache: bool = True, strict: bool = True, split: SplitOptions | None = None,
                 holdout: HoldoutOptions | None = None,
                 sampler: SamplerOptions | None = None, augment: AugmentOptions | None = None,
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0, cache_workers: int | None = None,
                 progressive: ProgressiveOptions | None = None, cv: CVOptions | None = None):
        super().__init__()
        if cohort not in COHORTS:
            raise MedalError(f"cohort.name={cohort!r}: choose one of {', '.join(COHORTS)}")
        if fit not in FITS:
            raise MedalError(f"data.fit={fit!r}: choose one of {', '.join(FITS)}")
        if int(image_size) < 8 or int(batch_size) < 1 or int(num_workers) < 0:
            raise MedalError(f"data.image_size={image_size}, data.batch_size={batch_size}, "
                             f"data.num_workers={num_workers}: need image_size >= 8, batch_size >= 1, workers >= 0")
        self.root, self.work_dir = Path(root), Path(work_dir)
        self.output_dir = Path(output_dir) if output_dir else None
        self.cohort, self.images, self.image_size, self.fit = cohort, str(images), int(image_size), fit
        self.use_cache, self.strict, self.seed = cache, strict, seed
        self.split_options = split or SplitOptions()
        self.holdout_options = holdout or HoldoutOptions()
        self.cv = cv or CVOptions()
        self.sampler_options = sampler or SamplerOptions()
        self.augmentation = build_augmentation(augment or AugmentOptions())
        self.progressive = progressive or ProgressiveOptions()
        self.progressive.check(self.image_size)
        self.batch_size, self.num_workers, self.cache_workers = int(batch_size), int(num_workers), cache_workers
        self.frames: dict[str, pd.DataFrame] | None = None
        self.datasets: dict[str, BoneAgeDataset] = {}
        self.calibration: pd.DataFrame | None = None  # the calibration role's rows: served by no loader, kept so
        # that what may add images to training (pretraining's unlabelled folder) can refuse copies of them

    # -- building the tables ------------------------------------------------------------------------
    def _image_paths(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Point rows at `data.images` (a folder of `<id>.png` RoIs) unless it is `raw`."""
        if self.images == "raw":
            return frame
        folder = Path(self.images)
        paths = [folder / f"{i}.png" for i in frame["id"]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MedalError(f"data.images={folder}: {len(missing)} of {len(paths)} images missing "
                             f"(e.g. {missing[0].name}); run `medal segment` first or set data.images=raw")
        return frame.assign(path=[str(p) for p in paths])

    def _attach_cache(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, Path | None]:
        if not self.use_cache:
            return frame, None
        built = build_cache(frame["id"].tolist(), frame["path"].tolist(), self.work_dir, self.image_size,
                            self.fit, workers=self.cache_workers)
        frame = frame.assign(row=np.arange(len(frame)))
        if built.failed:
            lines = [f"{i}: {why}" for i, why in built.failed.items()]
            if self.strict:
                raise MedalError(f"{lines[0]}" + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")
                                 + "; fix or remove the file, or set data.strict=false to skip it")
            log.warning("data.strict=false: skipping %d unreadable image(s):\n  %s", len(lines), "\n  ".join(lines))
            frame = frame[~frame["id"].isin(built.failed.keys())]
        return frame, built.path

    def _load(self) -> None:
        if self.frames is not None:
            return
        index = read_index(self.root, strict=self.strict)
        holdout = fixed_holdout(index, self.work_dir, self.holdout_options)
        roles = load_or_make_split(index, self.split_options, self.output_dir, holdout, self.cv)
        frame = self._image_paths(index.loc[roles.index].assign(role=roles))
        frame, cache_path = self._attach_cache(frame)
        if self.cohort != "all":
            frame = frame[frame["male"] == (self.cohort == "male")]
        # every labelled image is cached (one cache for every split seed); the loaders serve train, val, test and
        # (k-fold) the held-out fold only: calibration images are neither trained, selected nor tested on
        self.frames = {role: frame[frame["role"] == role].reset_index(drop=True) for role in ROLES}
        self.calibration = frame[frame["role"] == "calibration"].reset_index(drop=True)
        self.datasets = {role: BoneAgeDataset(f, self.image_size, self.fit, cache_path)
                         for role, f in self.frames.items()}
        log.info("bone age data (%s cohort): %s", self.cohort,
                 ", ".join(f"{role} {len(ds)}" for role, ds in self.datasets.items() if role != "oof" or self.cv.enabled))
        if not len(self.datasets["train"]):
            raise MedalError(f"data.root={self.root}: no labelled training images for cohort {self.cohort}")

    # -- Lightning hooks ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Draw and save the split and build the cache once (rank 0); `setup` then only reads them."""
        self._load()

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        sampler = make_sampler(train.ages, self.sampler_options, seed=self.seed)
        return self._loader(train, sampler=sampler, drop_last=len(sampler) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"])

    def oof_dataloader(self) -> DataLoader:
        """The fold a k-fold run holds out (empty without `cv`): its out-of-fold predictions."""
        return self._loader(self.datasets["oof"])

    def _loader(self, dataset: BoneAgeDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_batches, persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(), **kwargs)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if self.trainer is None or not self.trainer.training:
            return batch
        size = self.progressive.size_at(self.trainer.current_epoch, self.image_size)
        batch["image"] = downscale(batch["image"], size)  # before augmenting: kornia then works on fewer pixels
        if self.augmentation is not None:
            batch["image"] = augment(self.augmentation, batch["image"])
        return batch


def build_boneage_datamodule(cfg: DictConfig, cv: CVOptions | None = None) -> BoneAgeDataModule:
    """The DataModule of a composed task config (`cfg.data`, `cfg.cohort.name`, `cfg.paths.output_dir`, `cfg.seed`);
    `cv` (the `medal boneage` config's `cv` node, read by the caller) folds it for k-fold cross-validation.

    Every key is read as it is: the YAML holds the defaults, so a renamed or missing key fails loudly.
    """
    data = cfg.data
    return BoneAgeDataModule(
        root=data.root, work_dir=data.work_dir, output_dir=cfg.paths.output_dir, cohort=cfg.cohort.name,
        images=data.images, image_size=data.image_size, fit=data.fit, cache=data.cache, strict=data.strict,
        split=options_from(SplitOptions, data.split, "data.split"),
        holdout=options_from(HoldoutOptions, data.holdout, "data.holdout"),
        sampler=options_from(SamplerOptions, data.sampler, "data.sampler"),
        augment=options_from(AugmentOptions, data.augment, "data.augment"),
        batch_size=data.batch_size, num_workers=data.num_workers, seed=cfg.seed, cache_workers=data.cache_workers,
        progressive=options_from(ProgressiveOptions, data.progressive, "data.progressive"), cv=cv,
    )
