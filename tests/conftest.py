"""Shared fixtures: composed task configs in tmp dirs, a tiny phantom data set, offline loggers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402
from helpers.hydra_compose import compose_task  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two xdist workers on two cores: don't oversubscribe


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg("boneage", ["model=tiny"])` -> composed config whose outputs go to tmp_path."""

    def make(task_config: str, overrides: list[str] | None = None) -> DictConfig:
        return compose_task(task_config, overrides or [], tmp_path)

    return make


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom data set in the RSNA layout (+ masks/, gold/), shared by the whole session."""
    from medal.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, n=64, seed=0, image_size=128, workers=1)
    return root


@pytest.fixture(scope="session")
def raw_regressor(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny `medal boneage` run on whole radiographs of `tiny_phantoms`, with a sex input (so the sex
    is needed), 30 % validation images and 30 % calibration images (the bundles' calibration images, which no model
    trained on or was selected with); trained once per session."""
    from helpers.bundles import train_regressor

    root = tmp_path_factory.mktemp("raw_regressor")
    return train_regressor(tiny_phantoms, root / "train", "model.sex_input=true", "data.split.val_fraction=0.3",
                           "data.split.calibration=0.3")


@pytest.fixture(scope="session")
def gated_bundle(raw_regressor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny regressor exported with an OOD threshold its 19 calibration images can calibrate (10 %
    false rejects; 1 % needs 99 images); shared by the gate's tests and the gate benchmark's, which only read it."""
    import numpy as np
    from helpers.bundles import export

    path, metrics = export([raw_regressor], tmp_path_factory.mktemp("gated"), "export.gate.false_reject=0.1")
    assert np.isfinite(metrics["export/ood_threshold"]) and metrics["export/ood_calibration_images"] >= 15
    return path


@pytest.fixture
def one_thread():
    """Tiny nets on a shared 2-core machine: one intra-op thread is faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
