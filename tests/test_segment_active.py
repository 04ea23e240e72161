"""Active pool persistence, crash and resume of the round loop, and the human (folder) oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medal.active.loop import ActiveLearner, ALConfig, QueryContext, SegData
from medal.active.oracles import FolderOracle, OracleWaiting, SimulatedOracle
from medal.active.pool import ActivePool
from medal.data.images import write_png
from medal.errors import MedalError
from medal.segment.committee import Committee

S = 32
NET = dict(first_conv=4, growth=4, down_layers=(1, 1, 1), bottleneck_layers=2, dropout=0.0)


def _data(n: int = 24) -> tuple[SegData, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:S, :S]
    masks = np.stack([(yy - rng.integers(10, 22)) ** 2 + (xx - rng.integers(10, 22)) ** 2 < 36 for _ in range(n)])
    images = (0.1 + 0.6 * masks + 0.05 * rng.random((n, S, S))).astype(np.float32)
    split = np.array(["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2)
    return SegData([f"{i:03d}" for i in range(n)], split, images, masks, np.ones(n, bool)), masks


def _ctx(data: SegData) -> QueryContext:
    return QueryContext(lambda i: (S, S), lambda i: data.images[data.rows[i]], lambda i: data.images[data.rows[i]] > 0.4)


def _learner(tmp: Path, data: SegData, oracle, fit, **al) -> ActiveLearner:
    cfg = ALConfig(**{"initial": 4, "per_round": 3, "budget": 10, "patience": 9, "strategy": "qbc",
                      "fast_scoring": False, **al})
    return ActiveLearner(data, oracle, _ctx(data), lambda: Committee(net=NET, size=3, channels_last=False), fit,
                         cfg, tmp / "al")


def _no_training(*args) -> dict[str, float]:
    return {}


def test_pool_refuses_double_queries_and_unqueried_answers(tmp_path: Path) -> None:
    pool = ActivePool(["a", "b", "c"], tmp_path / "pool.json")
    pool.query(["a"])
    with pytest.raises(MedalError, match="still waits"):
        pool.query(["b"])
    with pytest.raises(MedalError, match="not queried"):
        pool.label("b", "x.png")
    pool.label("a", "a.png")
    pool.end_round({"val/dice": 0.5}, patience=1)
    with pytest.raises(MedalError, match="already queried"):
        pool.query(["a"])
    resumed = ActivePool.open(["a", "b", "c"], tmp_path / "pool.json")
    assert resumed.state_dict() == pool.state_dict()
    with pytest.raises(MedalError, match="different pool"):
        ActivePool.open(["a", "b"], tmp_path / "pool.json")


def test_round_loop_survives_a_crash_and_resumes_without_losing_or_repeating_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data, masks = _data()
    answered: list[str] = []

    class CountingOracle:
        def answer(self, round_no, ids, ctx):
            answered.extend(ids)
            return {i: masks[data.rows[i]] for i in ids}

    calls = {"n": 0}

    def crash_in_second_round(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return {}

    with pytest.raises(RuntimeError, match="power cut"):
        _learner(tmp_path, data, CountingOracle(), crash_in_second_round).run()
    saved = json.loads((tmp_path / "al" / "pool.json").read_text())
    assert len(saved["labelled"]) == 7 and saved["round"] == 1  # initial 4 + the 3 queried before the crash
    result = _learner(tmp_path, data, CountingOracle(), _no_training).run()
    pool = result.pool
    assert pool.stopped == "budget" and len(pool.labelled) == 10
    assert all(pool.labelled[i] == r for i, r in saved["labelled"].items())  # earlier labels kept as they were
    assert len(answered) == len(set(answered)) == 10  # every image asked for exactly once
    assert sorted(pool.labelled) == sorted(answered)
    assert [h["labelled"] for h in pool.history] == [4, 7, 10]
    assert all((tmp_path / "al" / "labels" / f"{i}.png").is_file() for i in pool.labelled)
    assert set(pool.scores) == {1, 2} and all(len(s) > 0 for s in pool.scores.values())


def _answer(folder: Path, image_id: str, mask: np.ndarray) -> Path:
    return write_png(folder / f"{image_id}_bin.png", mask.astype(np.float32))


def test_folder_oracle_round_trip_through_the_loop(tmp_path: Path) -> None:
    data, masks = _data()
    oracle = FolderOracle(tmp_path / "al")
    first = _learner(tmp_path, data, oracle, _no_training, budget=7).run()
    assert first.waiting is not None and "_bin.png" in first.waiting and "round_00" in first.waiting
    folder = tmp_path / "al" / "round_00"
    queried = json.loads((folder / "queried.json").read_text())["ids"]
    assert len(queried) == 4
    for i in queried:
        assert (folder / f"{i}.png").is_file() and (folder / f"{i}_start.png").is_file()
        _answer(folder, i, masks[data.rows[i]])
    second = _learner(tmp_path, data, oracle, _no_training, budget=7).run()
    assert second.waiting is not None and "round_01" in second.waiting
    assert sorted(second.pool.labelled) == sorted(queried)
    folder1 = tmp_path / "al" / "round_01"
    for i in json.loads((folder1 / "queried.json").read_text())["ids"]:
        _answer(folder1, i, masks[data.rows[i]])
    third = _learner(tmp_path, data, oracle, _no_training, budget=7).run()
    assert third.waiting is None and third.pool.stopped == "budget" and len(third.pool.labelled) == 7


def _bad_wrong_size(folder: Path, image_id: str) -> None:
    write_png(folder / f"{image_id}_bin.png", np.ones((S, S + 4), np.float32))


def _bad_not_binary(folder: Path, image_id: str) -> None:
    write_png(folder / f"{image_id}_bin.png", np.tile(np.linspace(0, 1, S, dtype=np.float32), (S, 1)))


def _bad_unknown_id(folder: Path, image_id: str) -> None:
    write_png(folder / f"{image_id}_bin.png", np.ones((S, S), np.float32))
    write_png(folder / "nobody_bin.png", np.ones((S, S), np.float32))


def _bad_unreadable(folder: Path, image_id: str) -> None:
    (folder / f"{image_id}_bin.png").write_bytes(b"\x89PNG not really")


@pytest.mark.parametrize(
    ("make_bad", "words"),
    [(_bad_wrong_size, "image's size"), (_bad_not_binary, "not binary"), (_bad_unknown_id, "nobody"),
     (_bad_unreadable, "unreadable")],
)
def test_folder_oracle_rejects_bad_answer_files_with_one_line(tmp_path: Path, make_bad, words: str) -> None:
    data, masks = _data()
    oracle = FolderOracle(tmp_path)
    ids = ["000", "001"]
    with pytest.raises(OracleWaiting):
        oracle.answer(0, ids, _ctx(data))
    folder = oracle.round_dir(0)
    _answer(folder, "001", masks[1])
    make_bad(folder, "000")
    with pytest.raises(MedalError) as err:
        oracle.answer(0, ids, _ctx(data))
    message = str(err.value)
    assert "\n" not in message and words in message and str(folder) in message


def test_folder_oracle_accepts_0_1_masks_and_simulated_oracle_reads_masks(tmp_path: Path) -> None:
    data, masks = _data()
    oracle = FolderOracle(tmp_path)
    with pytest.raises(OracleWaiting):
        oracle.answer(0, ["002"], _ctx(data))
    Image.fromarray(masks[2].astype(np.uint8)).save(oracle.round_dir(0) / "002_bin.png")  # values 0/1
    assert np.array_equal(oracle.answer(0, ["002"], _ctx(data))["002"], masks[2])
    write_png(tmp_path / "gt" / "003.png", masks[3])
    got = SimulatedOracle(tmp_path / "gt").answer(0, ["003"], _ctx(data))
    assert np.array_equal(got["003"], masks[3])
    with pytest.raises(MedalError, match="not found"):
        SimulatedOracle(tmp_path / "gt").answer(0, ["004"], _ctx(data))


def test_committee_goes_back_to_the_run_device_after_every_fit(tmp_path: Path, monkeypatch) -> None:
    """Lightning returns a fitted module on the CPU; scoring and evaluation must run on `al.device`."""
    data, masks = _data()
    events: list[str] = []

    class Tracked(Committee):
        def to(self, *args, **kwargs):
            events.append(f"to {args[0] if args else kwargs.get('device')}")
            return super().to(*args, **kwargs)

    def fit(*args) -> dict[str, float]:
        events.append("fit")
        return {}

    import medal.active.loop as loop

    real_score = loop.score_pool
    monkeypatch.setattr(loop, "score_pool", lambda *a, **k: (events.append("score"), real_score(*a, **k))[1])
    cfg = ALConfig(initial=4, per_round=3, budget=10, patience=9, strategy="qbc", fast_scoring=False, device="cpu")
    learner = ActiveLearner(data, SimulatedOracleFor(masks, data), _ctx(data),
                            lambda: Tracked(net=NET, size=3, channels_last=False), fit, cfg, tmp_path / "al")
    learner.run()
    assert events.count("fit") == 3 and events.count("score") == 2
    for i, event in enumerate(events):
        if event == "fit":
            assert events[i + 1] == "to cpu", events


class SimulatedOracleFor:
    def __init__(self, masks: np.ndarray, data: SegData) -> None:
        self.masks, self.data = masks, data

    def answer(self, round_no, ids, ctx):
        return {i: self.masks[self.data.rows[i]] for i in ids}


@pytest.mark.parametrize(("accelerator", "cuda", "expected"),
                         [("cpu", True, "cpu"), ("gpu", False, "cuda"), ("cuda", True, "cuda"),
                          ("auto", True, "cuda"), ("auto", False, "cpu")])
def test_inference_device_follows_the_trainer_accelerator(accelerator, cuda, expected, monkeypatch) -> None:
    from medal.hardware import inference_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert inference_device(accelerator) == expected


def test_inference_device_rejects_an_unknown_setting_naming_the_key() -> None:
    from medal.hardware import inference_device

    with pytest.raises(MedalError, match=r"^cam.device='tpu': medal predicts on cpu, gpu \(cuda\), mps or auto"):
        inference_device("tpu", "cam.device")
