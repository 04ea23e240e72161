"""`medal enhance` end to end on synthetic pairs: every RoI gets an enhanced file, metrics, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.enhance_fixtures import pairs_data_set, write_pairs
from helpers.hydra_compose import compose_task
from omegaconf import DictConfig

from medal.data.images import read_image, write_png
from medal.enhance.experiment import run_enhance
from medal.errors import MedalError
from medal.hardware import use_bf16
from medal.runs import read_metrics
from medal.tasks.runner import run_task

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_GAN = [
    "enhance.generator.depth=2", "enhance.generator.width=8", "enhance.discriminator.width=8",
    "enhance.image_size=64", "enhance.epochs=2", "enhance.batch_size=4", "enhance.sample_every_n_epochs=1",
    "trainer.precision=32-true", "trainer.enable_progress_bar=false", "logger=csv",
]


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg("enhance", [...])` with every path under tmp_path (Hydra's runtime node set read-write), on the
    data set the RoIs of `work` come from (the enhancer reads its test holdout, which no pair may include)."""
    root = pairs_data_set(tmp_path / "rsna", n=12)
    return lambda task, overrides=(): compose_task(task, [f"data.root={root}", *overrides], tmp_path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A data set work dir with 12 RoI pairs (96 px) and one RoI that has no gold standard."""
    root = tmp_path / "work"
    write_pairs(root, n=12, size=96, seed=1)
    write_png(root / "roi" / "777.png", np.random.default_rng(0).uniform(size=(80, 80)))
    return root


def _ids(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def test_gan_trains_enhances_every_roi_and_resumes(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    cfg = make_cfg("enhance", ["enhance=gan", f"data.work_dir={work}", *TINY_GAN])
    metrics = run_enhance(cfg)
    out = Path(cfg.enhance.images_dir)
    assert out == work / "enhanced" / "gan"
    assert _ids(out) == _ids(work / "roi")  # the RoI without gold is enhanced too
    assert read_image(out / "777.png").shape == (80, 80)  # written at the RoI's own size
    for key in ("val/psnr", "val/ssim", "test/psnr", "test/ssim", "test/psnr_std", "enhance/images_per_s"):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["test/ssim"] <= 1
    assert metrics["enhance/written"] == 13
    assert list((Path(cfg.paths.output_dir) / "samples").glob("epoch_*.png"))
    assert len(list((work / "enhancer").glob("gan_*/generator.safetensors"))) == 1

    again = run_enhance(cfg)  # same config: the generator and every written file are reused
    assert again["enhance/skipped"] == 13 and again["enhance/written"] == 0
    assert again["test/psnr"] == pytest.approx(metrics["test/psnr"], abs=1e-4)


@pytest.mark.parametrize("grid", ["[4,4]", "4"])
def test_clahe_enhances_every_roi(make_cfg: Callable[..., DictConfig], work: Path, grid: str) -> None:
    cfg = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.clip_limit=3",
                               f"enhance.grid={grid}", "enhance.image_size=64"])
    metrics = run_enhance(cfg)
    assert _ids(work / "enhanced" / "clahe") == _ids(work / "roi")
    assert metrics["enhance/written"] == 13 and np.isfinite(metrics["test/psnr"])


def test_changed_clahe_setting_rewrites_stale_outputs(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    first = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=64"])
    run_enhance(first)
    before = read_image(work / "enhanced" / "clahe" / "1000.png")
    second = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=64",
                                  "enhance.clip_limit=8"])
    assert run_enhance(second)["enhance/written"] == 13
    assert not np.allclose(before, read_image(work / "enhanced" / "clahe" / "1000.png"))
    third = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=32",
                                 "enhance.clip_limit=8"])
    assert run_enhance(third)["enhance/written"] == 13  # another working size is another result


def test_rewritten_rois_are_enhanced_again(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    cfg = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=64"])
    assert run_enhance(cfg)["enhance/written"] == 13
    assert run_enhance(cfg)["enhance/written"] == 0  # same setting, same RoIs: kept
    write_png(work / "roi" / "1003.png", np.random.default_rng(5).uniform(size=(96, 96)))  # segmentation redone
    again = run_enhance(cfg)
    assert again["enhance/written"] == 13 and again["enhance/skipped"] == 0  # the folder is one consistent set


def test_an_interrupted_enhancement_continues_where_it_stopped(make_cfg: Callable[..., DictConfig], work: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import medal.enhance.run as run

    real, written = run.write_png, []

    def killed_at_the_fifth_file(path, *args, **kwargs):
        if len(written) == 4:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, *args, **kwargs)

    cfg = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=64"])
    monkeypatch.setattr(run, "write_png", killed_at_the_fifth_file)
    with pytest.raises(KeyboardInterrupt):
        run_enhance(cfg)
    assert len(_ids(work / "enhanced" / "clahe")) == 4
    monkeypatch.setattr(run, "write_png", real)
    metrics = run_enhance(cfg)  # same settings, same RoIs: the four files stay, the rest are written
    assert (metrics["enhance/written"], metrics["enhance/skipped"]) == (9, 4)


def test_enhancing_into_the_input_folder_is_refused(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    cfg = make_cfg("enhance", ["enhance=clahe", f"data.work_dir={work}", "enhance.image_size=64",
                               "enhance.images_dir=${data.work_dir}/roi"])
    with pytest.raises(MedalError, match=r"enhance.images_dir=.*/roi: is the input folder itself"):
        run_enhance(cfg)
    assert len(_ids(work / "roi")) == 13  # nothing deleted


def test_none_passes_the_rois_through(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    cfg = make_cfg("enhance", ["enhance=none", f"data.work_dir={work}", "enhance.image_size=64"])
    run_task(run_enhance, cfg)
    metrics = read_metrics(cfg.paths.output_dir)
    assert metrics["status"] == "ok"
    assert Path(cfg.enhance.images_dir) == work / "roi"  # contract 6: later stages read the RoIs in place
    assert _ids(Path(cfg.enhance.images_dir)) == {str(1000 + i) for i in range(12)} | {"777"}
    assert not (work / "enhanced").exists()
    assert metrics["test/psnr"] > 0 and "enhance/images_per_s" not in metrics


def test_bf16_setting_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    assert use_bf16(True) is True and use_bf16(False) is False
    assert use_bf16("auto", "cpu") == any(f in Path("/proc/cpuinfo").read_text() for f in ("avx512_bf16", "amx_bf16"))


def test_gan_without_gold_standards_is_a_clear_error(make_cfg: Callable[..., DictConfig], work: Path) -> None:
    cfg = make_cfg("enhance", ["enhance=gan", f"data.work_dir={work}", "enhance.pairs.gold_dir=/nonexistent"])
    with pytest.raises(MedalError, match="gold_dir=/nonexistent: not found"):
        run_enhance(cfg)
