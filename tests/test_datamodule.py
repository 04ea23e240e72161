"""Bone age DataModule: split, cohorts, batches, image sources, strictness, sampler, augmentation, config."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.rsna_layouts import make_kaggle, make_official, rewrite_train_csv, truncate, write_png
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medal.config import CONF_DIR
from medal.data.augment import AugmentOptions, augment, build_augmentation
from medal.data.datamodule import BoneAgeDataModule, build_boneage_datamodule
from medal.data.progressive import ProgressiveOptions
from medal.data.sampling import SamplerOptions, age_bins, make_sampler
from medal.data.split import SPLIT_FILE, SplitOptions, stratified_holdout
from medal.errors import MedalError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("rsna")
    return root, make_official(root, n_train=80, n_val=20, n_test=12, size=(36, 28), modes=("L", "I;16"))


def _module(root: Path, tmp_path: Path, **kwargs: object) -> BoneAgeDataModule:
    options = dict(work_dir=tmp_path / "work", output_dir=tmp_path / "out", image_size=32, batch_size=8,
                   cache_workers=1)
    dm = BoneAgeDataModule(root, **{**options, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _roles(dm: BoneAgeDataModule) -> dict[str, set[str]]:
    return {role: set(frame["id"]) for role, frame in dm.frames.items()}


def test_split_is_disjoint_complete_and_uses_official_test(dataset: tuple[Path, pd.DataFrame],
                                                           tmp_path: Path) -> None:
    root, truth = dataset
    roles = _roles(_module(root, tmp_path))
    saved = pd.read_csv(tmp_path / "out" / SPLIT_FILE, dtype=str)
    roles["calibration"] = set(saved.loc[saved["role"] == "calibration", "id"])  # in split.csv, never served
    assert not (roles["train"] & roles["val"] or roles["train"] & roles["test"] or roles["val"] & roles["test"])
    assert not roles["calibration"] & (roles["train"] | roles["val"] | roles["test"])
    assert roles["train"] | roles["val"] | roles["test"] | roles["calibration"] == set(truth["id"])
    assert roles["test"] == set(truth.loc[truth["split"] == "test", "id"])
    assert len(roles["val"]) == 10  # 10% of the 100 training + official validation images


def test_split_is_seeded_saved_and_reused(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = dataset
    first = _roles(_module(root, tmp_path / "a"))
    assert _roles(_module(root, tmp_path / "b")) == first  # same seed, fresh run -> same split
    assert _roles(_module(root, tmp_path / "c", split=SplitOptions(seed=1)))["val"] != first["val"]
    saved = pd.read_csv(tmp_path / "a" / "out" / SPLIT_FILE, dtype=str)
    assert set(saved.loc[saved["role"] == "val", "id"]) == first["val"]
    # a resumed run with other split options keeps the saved split: the split is fixed for the whole run
    assert _roles(_module(root, tmp_path / "a", split=SplitOptions(seed=7, val_fraction=0.3))) == first


def test_stratified_holdout_keeps_age_and_sex_mix() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "boneage": rng.gamma(6, 20, n).clip(1, 228),
                          "male": rng.random(n) < 0.55})
    held = stratified_holdout(frame, 0.2, seed=3, bins=10)
    assert held.sum() == 600
    val, train = frame[held], frame[~held]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(val["boneage"].quantile(q) - train["boneage"].quantile(q)) < 5.0
    assert abs(val["male"].mean() - train["male"].mean()) < 0.01
    shuffled = frame.sample(frac=1, random_state=1)
    assert set(shuffled[stratified_holdout(shuffled, 0.2, 3, 10)]["id"]) == set(val["id"])  # order-free


def test_cohort_filter_is_the_matching_half_of_the_pooled_split(dataset: tuple[Path, pd.DataFrame],
                                                                tmp_path: Path) -> None:
    root, truth = dataset
    pooled = _module(root, tmp_path / "all")
    males = set(truth.loc[truth["male"], "id"])
    for cohort, members in (("male", males), ("female", set(truth["id"]) - males)):
        dm = _module(root, tmp_path / cohort, cohort=cohort)
        for role, frame in dm.frames.items():
            assert set(frame["id"]) <= members
            assert set(frame["id"]) == set(pooled.frames[role]["id"]) & members
            assert (frame["male"] == (cohort == "male")).all()


def test_batches_follow_the_contract(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, truth = dataset
    dm = _module(root, tmp_path)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["boneage"].shape == (8,) and batch["male"].shape == (8,)
    assert isinstance(batch["id"], list) and all(isinstance(i, str) for i in batch["id"])
    expected = truth.set_index("id").loc[batch["id"]]
    np.testing.assert_allclose(batch["boneage"].numpy(), expected["boneage"].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(batch["male"].numpy(), expected["male"].to_numpy(dtype=np.float32))
    assert len(dm.train_dataloader()) == len(dm.datasets["train"]) // 8


def test_uncached_loader_gives_the_same_images(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = dataset
    dm = _module(root, tmp_path, cache=True)
    cached = next(iter(dm.val_dataloader()))
    decoded = next(iter(_module(root, tmp_path, cache=False).val_dataloader()))
    assert cached["id"] == decoded["id"]
    torch.testing.assert_close(cached["image"], decoded["image"], atol=1e-3, rtol=0)
    plain = next(iter(DataLoader(dm.datasets["val"], batch_size=8)))  # someone else's loader, default collate
    assert plain["id"] == cached["id"] and torch.equal(plain["image"], cached["image"])
    torch.testing.assert_close(plain["boneage"], cached["boneage"])


def test_kaggle_layout_holds_out_a_test_split(tmp_path: Path) -> None:
    truth = make_kaggle(tmp_path / "kaggle", n_train=40)
    roles = _roles(_module(tmp_path / "kaggle", tmp_path))
    assert len(roles["test"]) == 4 and roles["test"] <= set(truth.loc[truth["split"] == "train", "id"])
    assert not roles["test"] & roles["train"]


def test_roi_folder_source(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, truth = dataset
    roi = tmp_path / "roi"
    with pytest.raises(MedalError, match=r"run `medal segment` first or set data.images=raw") as err:
        _module(root, tmp_path, images=str(roi))
    assert str(roi) in str(err.value)
    for i in truth["id"]:  # RoIs of a constant grey: the loader must read these, not the raw images
        write_png(roi / f"{i}.png", np.random.default_rng(0), "L", size=(20, 20))
    batch = next(iter(_module(root, tmp_path, images=str(roi)).val_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32)
    assert all(str(roi) in p for p in _module(root, tmp_path, images=str(roi)).frames["val"]["path"])


def test_strict_refuses_and_lenient_skips_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bad"
    truth = make_official(root, n_train=40, n_val=0, n_test=6)

    def spoil(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[3, "boneage"] = "abc"
        return t

    truncate(root / "boneage-training-dataset" / "1010.png")
    with pytest.raises(MedalError, match=r"1010.png: unreadable or truncated"):
        _module(root, tmp_path)
    rewrite_train_csv(root, spoil)
    with pytest.raises(MedalError, match=r"train.csv:5: id 1003: bone age 'abc'"):
        _module(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="medal.data"):
        dm = _module(root, tmp_path, strict=False)
    saved = pd.read_csv(tmp_path / "out" / SPLIT_FILE, dtype=str)
    calibration = set(saved.loc[saved["role"] == "calibration", "id"])  # never served, but not skipped either
    ids = set().union(*_roles(dm).values()) | (calibration - {"1010"})
    assert ids == set(truth["id"]) - {"1003", "1010"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1003" in w for w in warned) and any("1010.png" in w for w in warned)


def test_balanced_sampler_draws_bins_evenly() -> None:
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.uniform(0, 40, 20), rng.uniform(40, 200, 400), rng.uniform(200, 228, 30)])
    options = SamplerOptions(balanced=True, bins=[40, 80, 120, 160, 200], samples_per_epoch=6000)
    draws = np.array(list(make_sampler(ages, options, seed=0)))
    counts = np.bincount(age_bins(ages[draws], options.bins), minlength=6)
    expected = len(draws) / 6
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # 5 degrees of freedom, p = 0.001
    plain = np.array(list(make_sampler(ages, SamplerOptions(balanced=False, bins=options.bins), seed=0)))
    assert sorted(plain) == list(range(len(ages)))  # off: one shuffled pass
    plain_counts = np.bincount(age_bins(ages[plain], options.bins), minlength=6)
    assert ((plain_counts - len(plain) / 6) ** 2 / (len(plain) / 6)).sum() > 100  # the skew is still there
    again = np.array(list(make_sampler(ages, options, seed=0)))
    np.testing.assert_array_equal(draws, again)  # seeded


def test_sampler_sets_epoch_length(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = dataset
    dm = _module(root, tmp_path, sampler=SamplerOptions(balanced=True, bins=4, samples_per_epoch=40))
    assert len(dm.train_dataloader()) == 5
    with pytest.raises(MedalError, match="data.sampler.bins"):
        make_sampler(np.arange(10.0), SamplerOptions(bins=[50, 10]), seed=0)


def _blobs(n: int, size: int = 64) -> torch.Tensor:
    """Images of one off-centre ellipse each (asymmetric, so a flip or rotation moves it)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = []
    for k in range(n):
        cy, cx = -0.3 + 0.1 * (k % 3), 0.35 - 0.05 * k
        images.append(torch.exp(-(((yy - cy) / 0.25) ** 2 + ((xx - cx) / 0.45) ** 2)))
    return torch.stack(images)[:, None]


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    torch.manual_seed(0)
    image = _blobs(8)
    mask = (image > 0.5).float()
    pipeline = build_augmentation(AugmentOptions(rotation=[-30, 30], scale=[0.8, 1.2], shear=15, hflip=0.5, p=1.0))
    out_image, out_mask = augment(pipeline, image, mask)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}  # masks resampled nearest-neighbour
    moved = (out_mask != mask).flatten(1).float().mean(1)
    assert (moved > 0).all() and moved.mean() > 0.03  # every sample was transformed
    redrawn = out_image > 0.5
    inter = (redrawn & (out_mask > 0.5)).flatten(1).sum(1).float()
    union = (redrawn | (out_mask > 0.5)).flatten(1).sum(1).float()
    assert (inter / union).min() > 0.9


def test_augmentation_runs_after_transfer_in_training_only(dataset: tuple[Path, pd.DataFrame],
                                                           tmp_path: Path) -> None:
    root, _ = dataset
    dm = _module(root, tmp_path, augment=AugmentOptions(p=1.0, hflip=1.0))
    batch = next(iter(dm.val_dataloader()))
    original = batch["image"].clone()
    assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["image"], original)  # no trainer
    dm.trainer = SimpleNamespace(training=False, current_epoch=0)
    assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["image"], original)
    dm.trainer = SimpleNamespace(training=True, current_epoch=0)
    assert not torch.allclose(dm.on_after_batch_transfer(dict(batch), 0)["image"], original)
    off = _module(root, tmp_path, augment=AugmentOptions(enabled=False))
    off.trainer = SimpleNamespace(training=True, current_epoch=0)
    assert torch.equal(off.on_after_batch_transfer(dict(batch), 0)["image"], original)


def test_progressive_resizing_shrinks_early_training_batches_only(dataset: tuple[Path, pd.DataFrame],
                                                                   tmp_path: Path) -> None:
    root, _ = dataset
    dm = _module(root, tmp_path, augment=AugmentOptions(enabled=False), progressive=ProgressiveOptions(16, 2))
    batch = next(iter(dm.val_dataloader()))
    original = batch["image"].clone()
    sizes = {}
    for training, epoch in ((True, 0), (True, 1), (True, 2), (False, 0)):
        dm.trainer = SimpleNamespace(training=training, current_epoch=epoch)
        sizes[training, epoch] = dm.on_after_batch_transfer(dict(batch), 0)["image"]
    assert sizes[True, 0].shape[-2:] == sizes[True, 1].shape[-2:] == (16, 16)
    # each output pixel is the mean of the 2x2 input block it covers
    assert torch.allclose(sizes[True, 0], original.unflatten(-1, (16, 2)).unflatten(-3, (16, 2)).mean((-1, -3)))
    assert torch.equal(sizes[True, 2], original) and torch.equal(sizes[False, 0], original)  # later, and validation
    for schedule in (ProgressiveOptions(32, 2), ProgressiveOptions(4, 2), ProgressiveOptions(16, 0)):
        with pytest.raises(MedalError, match=rf"^data.progressive.size={schedule.size}, data.progressive.epochs="):
            _module(root, tmp_path, progressive=schedule)


def _compose(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The bone age task's config on raw images, without Hydra's runtime."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("boneage", [f"paths.root={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                                   "data.images=raw", *overrides])


def test_config_factory_and_bad_values(dataset: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = dataset
    base = [f"data.root={root}", "cohort=male", "data.image_size=32", "data.augment.rotation=[-5,5]",
            "data.sampler.bins=[60,120,180]"]
    dm = build_boneage_datamodule(_compose(base, tmp_path))
    assert dm.cohort == "male" and dm.image_size == 32 and dm.sampler_options.bins == [60, 120, 180]
    assert dm.augmentation is not None
    for override, message in (("cohort.name=bogus", "cohort.name='bogus': choose one of all, male, female"),
                              ("data.fit=crop", "data.fit='crop'"),
                              ("+data.augment.rotate=5", "data.augment.rotate: unknown key"),
                              ("data.augment.scale=1.1", "data.augment.scale=1.1: give a range"),
                              ("data.split.val_fraction=1.5", "data.split.val_fraction=1.5")):
        with pytest.raises(MedalError, match=message.replace("[", r"\[").replace(".", r"\.")):
            build_boneage_datamodule(_compose([*base, override], tmp_path))


def test_phantoms_load_cleanly(tiny_phantoms: Path, tmp_path: Path) -> None:
    dm = _module(tiny_phantoms, tmp_path, image_size=64)
    assert sum(len(ds) for ds in dm.datasets.values()) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 64, 64) and batch["image"].std() > 0.01
