"""The prediction chain's shared regressor pass (one backbone pass per batch for both sexes, the mirror image's mean
and the CAM) against the reference chain (a pass per sex, per mirror image and per image's CAM): the same
estimates and intervals, and the same CAM overlays within a tolerance. Bundles at tiny sizes with fresh weights,
built as scripts/bench_predict.py builds its bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.scripts import load_script
from torch.utils.data import DataLoader

from medal.data.rsna import read_index
from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate

MONTHS = 0.05  # the estimates' tolerance between the two paths (issue 22)
IMAGES = 12  # two batches: one full, one short


def _bench():
    return load_script("bench_predict")


def _tiny(*boneage: str):
    """Sizes a CPU runs in seconds: a 32 px committee, 64 px RoIs, the generator at 32 px, `model=tiny` at 64 px
    with a sex input (plus `boneage` overrides)."""
    return _bench().Sizes(
        "tiny", 128,
        ["segment.image_size=32", "segment.net.first_conv=8", "segment.net.growth=4",
         "segment.net.down_layers=[1,1,1]", "segment.net.bottleneck_layers=2", "segment.roi.size=64"],
        ["enhance=gan", "enhance.image_size=32", "enhance.generator.depth=2", "enhance.generator.width=8"],
        ["model=tiny", "data.image_size=64", "model.sex_input=true", *boneage])


@pytest.fixture(scope="module")
def frame(tiny_phantoms: Path) -> pd.DataFrame:
    index = read_index(tiny_phantoms, strict=True).head(IMAGES)
    return pd.DataFrame({"id": index["id"], "path": index["path"], "male": index["male"].astype(float),
                         "sex_source": "labels", "reference": index["boneage"]})


def _run(bundle: Any, frame: pd.DataFrame, reference: bool, sex: str = "input", **options: Any) -> tuple[
        list[dict[str, Any]], list[np.ndarray | None], ChainModule]:
    chosen = {"tta": "none", "sex": sex, "coverage": 0.9, "bf16": "as_trained", "cam": True, **options}
    module = ChainModule(bundle, ChainOptions(**chosen), reference=reference).eval()
    module.prepare()
    loader = DataLoader(InputImages(frame, bundle.chain, sex), batch_size=8, collate_fn=collate)
    measured = [m for batch in loader for m in module.measure(batch)]
    return [module.finish(m) for m in measured], [m.overlay for m in measured], module


@pytest.mark.parametrize(("tta", "sex"), [("none", "input"), ("flip", "input"), ("flip", "unknown")])
def test_the_shared_pass_gives_the_reference_estimates_and_intervals(
        tmp_path: Path, frame: pd.DataFrame, one_thread: None, tta: str, sex: str) -> None:
    """Three regressors (all, male, female) with a sex input: both sexes, the cohorts, the mirror image and the
    averaged unknown sex all come out of the one pass as they do out of the reference's several."""
    bundle = _bench().fresh_bundle(tmp_path / "b", _tiny(), cohorts=("all", "male", "female"), head_gain=30.0)
    if sex == "unknown":
        frame = frame.assign(male=np.nan)
    ref, _, _ = _run(bundle, frame, True, sex, tta=tta)
    new, _, module = _run(bundle, frame, False, sex, tta=tta)
    assert [r["status"] for r in new] == [r["status"] for r in ref] == ["ok"] * IMAGES
    estimates = np.array([r["boneage"] for r in ref])
    assert np.ptp(estimates) > 1.0  # the images' estimates differ, so a mixed-up image or sex would show
    for key in ("boneage", "low", "high", "spread"):
        assert np.allclose([r[key] for r in new], [r[key] for r in ref], atol=MONTHS, rtol=0), key
    assert [r["sex"] for r in new] == [r["sex"] for r in ref]
    steps = set(module.clock.seconds)
    assert {"committee", "roi", "enhancer", "regressor", "cam"} <= steps and ("tta" in steps) == (tta == "flip")


def test_a_sex_swap_would_show(tmp_path: Path, frame: pd.DataFrame, one_thread: None) -> None:
    """The guard of the test above: these fresh weights give another estimate for the other sex (read before the
    valid-range cut, which the large head gain sends some girls' estimates past)."""
    bundle = _bench().fresh_bundle(tmp_path / "b", _tiny(), head_gain=30.0)
    module = ChainModule(bundle, ChainOptions(tta="none", sex="input", coverage=0.9, bf16="as_trained", cam=False),
                         reference=False).eval()
    module.prepare()
    loader = DataLoader(InputImages(frame, bundle.chain, "input"), batch_size=8, collate_fn=collate)
    measured = [m for batch in loader for m in module.measure(batch)]
    boys = np.array([m.predictions["none"][True][0] for m in measured])
    girls = np.array([m.predictions["none"][False][0] for m in measured])
    assert len(boys) == IMAGES and np.min(np.abs(boys - girls)) > 10 * MONTHS


@pytest.mark.parametrize("hidden", [[], [8]], ids=["cam", "grad_cam"])
def test_the_shared_pass_draws_the_reference_cams(tmp_path: Path, frame: pd.DataFrame, one_thread: None,
                                                   hidden: list[int]) -> None:
    """In float32 both paths' overlays agree to a few grey levels (batched and single-image convolutions round
    differently); with the recorded precision (bf16 where the CPU has it natively) the shared pass's maps come from
    bf16 features and the reference's from float32 ones: measured on an avx512_bf16 CPU, 2.4 grey levels apart on
    average, 26 at the 99th percentile."""
    bundle = _bench().fresh_bundle(tmp_path / "b", _tiny(f"model.head.hidden={hidden}"), cohorts=("all", "male"),
                                   head_gain=30.0)
    for bf16, p99, mean in ((False, 3, 0.1), ("as_trained", 40, 4.0)):
        _, ref, _ = _run(bundle, frame, True, bf16=bf16)
        _, new, _ = _run(bundle, frame, False, bf16=bf16)
        assert all(o is not None for o in ref + new)
        diffs = np.concatenate([np.abs(a.astype(int) - b.astype(int)).ravel() for a, b in zip(ref, new, strict=True)])
        assert np.percentile(diffs, 99) <= p99 and diffs.mean() <= mean, (bf16, np.percentile(diffs, 99), diffs.mean())


@pytest.mark.parametrize("slow_at", [1, 2])
def test_auto_threads_keep_the_count_that_ran_faster(slow_at: int) -> None:
    """After a warm-up batch, one batch at 1 thread and one at torch's default (2 here) are timed; the faster count
    stays for every later batch, and `restore` gives torch its count back. The batches' cost is planted (a sleep
    where the count is `slow_at`), so the choice is known."""
    import time

    import torch

    from medal.predict.threads import ThreadChoice

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        choice = ThreadChoice("auto", "cpu")
        ran = []
        for _ in range(5):
            with choice.batch(4):
                ran.append(torch.get_num_threads())
                time.sleep(0.05 if torch.get_num_threads() == slow_at else 0.0)
        faster = 3 - slow_at
        assert ran == [2, 1, 2, faster, faster] and choice.chosen == faster and set(choice.seconds) == {1, 2}
        torch.set_num_threads(2)  # another path set it meanwhile: the choice is applied again at the next batch
        with choice.batch(4):
            assert torch.get_num_threads() == faster
        choice.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_settings_are_checked_and_a_gpu_measures_nothing() -> None:
    from medal.errors import MedalError
    from medal.predict.threads import ThreadChoice

    with pytest.raises(MedalError, match=r"predict.threads='two': use auto"):
        ThreadChoice("two", "cpu")
    assert ThreadChoice("auto", "cuda").pending == []
