"""Active pool persistence, crash and resume of the round loop, the human (folder) oracle, the AL folder's
settings record, and the committee behind the `SegModel` protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medal.active.loop import ActiveLearner, ALConfig
from medal.active.oracles import FolderOracle, OracleWaiting, QueryContext, SimulatedOracle
from medal.active.pool import ActivePool
from medal.active.scoring import QBC
from medal.data.images import write_png
from medal.errors import MedalError
from medal.segment.committee import Committee
from medal.segment.data import SegData
from medal.segment.model import CommitteeModel
from medal.segment.train import RoundTraining

S = 32
NET = dict(first_conv=4, growth=4, down_layers=(1, 1, 1), bottleneck_layers=2, dropout=0.0)
AUGMENT_OFF = dict(enabled=False, rotation=0, scale=[1.0, 1.0], shear=0, hflip=0.0, p=0.0, padding="zeros")


def _data(n: int = 24) -> tuple[SegData, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:S, :S]
    masks = np.stack([(yy - rng.integers(10, 22)) ** 2 + (xx - rng.integers(10, 22)) ** 2 < 36 for _ in range(n)])
    images = (0.1 + 0.6 * masks + 0.05 * rng.random((n, S, S))).astype(np.float32)
    split = np.array(["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2)
    return SegData([f"{i:03d}" for i in range(n)], split, images, [f"{i:03d}.png" for i in range(n)],
                   np.zeros(n, bool), False, masks, np.ones(n, bool)), masks


def _ctx(data: SegData) -> QueryContext:
    return QueryContext(lambda i: (S, S), lambda i: data.images[data.rows[i]], lambda i: data.images[data.rows[i]] > 0.4)


def _al(tmp: Path, **over) -> ALConfig:
    values = dict(dir=str(tmp / "al"), initial=4, per_round=3, budget=10, patience=9, min_delta=0.0,
                  reset_weights=False, committee_size=3, member_init="independent", member_data="shared",
                  val_limit=None, score_batch_size=8, fast_scoring=False, seed=0)
    return ALConfig(**{**values, **over})


class ToyModel:
    """A `SegModel` without a network: members see the image through different gains; features are image
    statistics that members weigh differently. Its one "weight" counts the fits, so checkpoints are visible."""

    def __init__(self, fit=None) -> None:
        self.weight = torch.zeros(1)
        self._fit = fit

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        self.weight += 1
        return self._fit(images, masks) if self._fit is not None else {}

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))
        return torch.stack([torch.sigmoid(g * (x - 0.4)) for g in (5.0, 10.0, 20.0)])

    def features(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(images, dtype=np.float32)).flatten(1)
        stats = torch.stack([x.mean(1), x.std(1), x.max(1).values], dim=1)
        return torch.stack([stats * torch.tensor(w) for w in ([1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0])])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.clone()}

    def load_state_dict(self, state) -> None:
        self.weight = state["weight"].clone()


def _learner(tmp: Path, data: SegData, oracle, fit=None, settings=None, **al) -> ActiveLearner:
    return ActiveLearner(data, lambda: ToyModel(fit), QBC("qbc", "bottleneck", 4), oracle, _ctx(data), _al(tmp, **al),
                         lambda model: {}, settings or {"run": 1})


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
    pool.end_round({"val/dice": 0.5}, min_delta=0.0)
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
    crashed = torch.load(tmp_path / "al" / "committee.pt", weights_only=True)
    assert crashed["labelled"] == 4 and crashed["state_dict"]["weight"].item() == 1  # the first round's model
    saved = json.loads((tmp_path / "al" / "pool.json").read_text())
    assert len(saved["labelled"]) == 7 and saved["round"] == 1  # initial 4 + the 3 queried before the crash
    result = _learner(tmp_path, data, CountingOracle(), _no_training).run()
    pool = result.pool
    assert result.model.weight.item() == 3  # resumed from the checkpoint: trained on 7 and on 10 labels
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
    oracle = FolderOracle("folder", tmp_path / "al", None)
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
    oracle = FolderOracle("folder", tmp_path, None)
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
    oracle = FolderOracle("folder", tmp_path, None)
    with pytest.raises(OracleWaiting):
        oracle.answer(0, ["002"], _ctx(data))
    Image.fromarray(masks[2].astype(np.uint8)).save(oracle.round_dir(0) / "002_bin.png")  # values 0/1
    assert np.array_equal(oracle.answer(0, ["002"], _ctx(data))["002"], masks[2])
    write_png(tmp_path / "gt" / "003.png", masks[3])
    got = SimulatedOracle("simulated", tmp_path / "gt").answer(0, ["003"], _ctx(data))
    assert np.array_equal(got["003"], masks[3])
    with pytest.raises(MedalError, match="not found"):
        SimulatedOracle("simulated", tmp_path / "gt").answer(0, ["004"], _ctx(data))


def test_committee_goes_back_to_the_run_device_after_every_fit(tmp_path: Path) -> None:
    """Lightning returns a fitted module on the CPU; scoring and evaluation must run on the run's device."""
    data, masks = _data()
    events: list[str] = []

    class Tracked(Committee):
        def to(self, *args, **kwargs):
            events.append(f"to {args[0] if args else kwargs.get('device')}")
            return super().to(*args, **kwargs)

    class NoTraining(RoundTraining):
        def fit(self, committee, images, masks) -> dict[str, float]:
            events.append("fit")
            return {}

    class CountingQBC(QBC):
        def score(self, model, candidates, generator):
            events.append("score")
            return super().score(model, candidates, generator)

    def make_model() -> CommitteeModel:
        committee = Tracked(net=NET, size=3, seed=0, lr=1e-3, weight_decay=0.0, augment=AUGMENT_OFF,
                            channels_last=False, arch="fc_densenet", shared_init=False)
        training = NoTraining(1, 2, lambda: None, data.images[:0], data.images[:0], False, 0)
        return CommitteeModel(committee, training, device="cpu", fast=False, batch_size=8)

    learner = ActiveLearner(data, make_model, CountingQBC("qbc", "bottleneck", 4), SimulatedOracleFor(masks, data),
                            _ctx(data), _al(tmp_path), lambda model: {}, {"run": 1})
    learner.run()
    assert events.count("fit") == 3 and events.count("score") == 2
    for i, event in enumerate(events):
        if event == "fit":
            assert events[i + 1] == "to cpu", events


def test_committee_model_predicts_members_first_in_batches() -> None:
    data, _ = _data()
    committee = Committee(net=NET, size=3, seed=0, lr=1e-3, weight_decay=0.0, augment=AUGMENT_OFF,
                          channels_last=False, arch="fc_densenet", shared_init=False)
    model = CommitteeModel(committee, RoundTraining(1, 2, lambda: None, data.images[:0], data.images[:0], False, 0),
                           device="cpu", fast=False, batch_size=5)
    probs, features = model.predict_probs(data.images[:7]), model.features(data.images[:7])
    assert probs.shape == (3, 7, S, S) and probs.dtype == torch.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    assert features.shape[:2] == (3, 7)
    with torch.no_grad():  # the same as one forward pass over all seven: batching changes nothing
        logits, whole = committee.eval()(torch.from_numpy(data.images[:7])[:, None])
    assert torch.allclose(probs, torch.sigmoid(logits)[:, :, 0], atol=1e-5)
    assert torch.allclose(features, whole, atol=1e-5)


def test_al_folder_refuses_other_settings_naming_the_key_and_keeps_its_files(tmp_path: Path) -> None:
    data, masks = _data()
    oracle = SimulatedOracleFor(masks, data)
    settings = {"segment": {"lr": 0.001, "image_size": 32}, "seed": 0}
    _learner(tmp_path, data, oracle, settings=settings, budget=7).run()
    before = sorted(p.name for p in (tmp_path / "al").iterdir())
    assert {"pool.json", "committee.pt", "labels"} <= set(before)
    again = _learner(tmp_path, data, oracle, settings=settings, budget=7).run()  # same settings: resumes
    assert len(again.pool.labelled) == 7
    with pytest.raises(MedalError) as err:
        _learner(tmp_path, data, oracle, settings={**settings, "segment": {"lr": 0.01, "image_size": 32}})
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "al") in message and "(segment.lr)" in message
    assert sorted(p.name for p in (tmp_path / "al").iterdir()) == before  # nothing deleted


def test_al_folder_without_a_settings_record_is_refused(tmp_path: Path) -> None:
    data, masks = _data()
    (tmp_path / "al").mkdir()
    (tmp_path / "al" / "pool.json").write_text("{}")
    with pytest.raises(MedalError, match=r"pool.json without a record of the settings"):
        _learner(tmp_path, data, SimulatedOracleFor(masks, data))


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


@pytest.mark.parametrize(("value", "words"), [(0.0, "the mask is empty"), (1.0, "the mask is all white")])
def test_folder_oracle_refuses_an_empty_or_all_white_answer_naming_the_file(tmp_path: Path, value: float,
                                                                           words: str) -> None:
    data, masks = _data()
    oracle = FolderOracle("folder", tmp_path, 0.5)
    with pytest.raises(OracleWaiting):
        oracle.answer(0, ["000"], _ctx(data))
    write_png(oracle.round_dir(0) / "000_bin.png", np.full((S, S), value, np.float32))
    with pytest.raises(MedalError) as err:
        oracle.answer(0, ["000"], _ctx(data))
    message = str(err.value)
    assert "\n" not in message and words in message and str(oracle.round_dir(0) / "000_bin.png") in message


def test_folder_oracle_cuts_an_anti_aliased_answer_at_its_threshold(tmp_path: Path) -> None:
    data, masks = _data()
    soft = masks[5].astype(np.float32) * 0.9
    soft[1:-1, 1:-1] += 0.05 * (masks[5][2:, 1:-1] ^ masks[5][:-2, 1:-1])  # grey edge pixels, as a brush leaves
    oracle = FolderOracle("folder", tmp_path, 0.5)
    with pytest.raises(OracleWaiting):
        oracle.answer(0, ["005"], _ctx(data))
    write_png(oracle.round_dir(0) / "005_bin.png", soft)
    assert np.array_equal(oracle.answer(0, ["005"], _ctx(data))["005"], soft > 0.5)
    with pytest.raises(MedalError, match="not binary"):  # threshold null: refused as before
        FolderOracle("folder", tmp_path, None).answer(0, ["005"], _ctx(data))
    with pytest.raises(MedalError, match=r"^oracle.threshold=1.5: a share of white in \(0, 1\), or null$"):
        FolderOracle("folder", tmp_path, 1.5)


def test_loop_records_the_score_spread_and_the_editing_effort_of_every_round(tmp_path: Path) -> None:
    data, masks = _data()
    pool = _learner(tmp_path, data, SimulatedOracleFor(masks, data), _no_training).run().pool
    assert [h["labelled"] for h in pool.history] == [4, 7, 10]
    for record in pool.history[:-1]:  # every round that was followed by a query
        assert record["query/cv"] > 0 and record["query/top_k_over_median"] >= 1
    assert "query/cv" not in pool.history[-1]  # the budget was reached: nothing scored after it
    for record in pool.history:  # the toy proposal (image > 0.4) against the true disc
        assert 0 < record["oracle/edit_dice"] <= 1 and 0 <= record["oracle/changed_share"] < 1
    answered = [i for i, r in pool.labelled.items() if r == 1]
    proposal = data.images[[data.rows[i] for i in answered]] > 0.4
    truth = masks[[data.rows[i] for i in answered]]
    assert pool.history[1]["oracle/changed_share"] == pytest.approx(float((proposal != truth).mean()))
    saved = json.loads((tmp_path / "al" / "pool.json").read_text())
    assert set(saved["edits"]) == set(pool.labelled)  # per answer, kept across a restart


def test_shared_members_start_equal_and_bootstrap_members_draw_their_own_images() -> None:
    from medal.segment.train import member_draws

    def weights(shared: bool) -> list[torch.Tensor]:
        committee = Committee(net=NET, size=3, seed=0, lr=1e-3, weight_decay=0.0, augment=AUGMENT_OFF,
                              channels_last=False, arch="fc_densenet", shared_init=shared)
        return [next(iter(m.parameters())).detach() for m in committee.members]

    shared, independent = weights(True), weights(False)
    assert all(torch.equal(shared[0], w) for w in shared[1:])
    assert not torch.equal(independent[0], independent[1])
    assert torch.equal(independent[0], shared[0])  # member 0 is seed's network either way
    draws = member_draws(20, 400, 3, bootstrap=True, seed=0)
    assert draws.shape == (400, 3) and np.array_equal(draws, member_draws(20, 400, 3, bootstrap=True, seed=0))
    unique = [set(col.tolist()) for col in draws.T]
    assert all(len(u) < 20 for u in unique) and len({frozenset(u) for u in unique}) == 3  # bootstrap resamples
    assert member_draws(20, 400, 1, bootstrap=True, seed=0).shape == (400, 1)  # one network: no resampling


def test_mc_dropout_samples_one_member_reproducibly_and_needs_dropout() -> None:
    data, _ = _data()

    def model(dropout: float) -> CommitteeModel:
        committee = Committee(net={**NET, "dropout": dropout}, size=3, seed=0, lr=1e-3, weight_decay=0.0,
                              augment=AUGMENT_OFF, channels_last=False, arch="fc_densenet", shared_init=False)
        return CommitteeModel(committee, RoundTraining(1, 2, lambda: None, data.images[:0], data.images[:0],
                                                       False, 0), device="cpu", fast=False, batch_size=5)

    sampler = model(0.3)
    sampler.committee.eval()
    samples = sampler.mc_probs(data.images[:7], 4, seed=1)
    assert samples.shape == (4, 7, S, S)
    assert not torch.allclose(samples[0], samples[1])  # each sample its own dropout mask
    assert torch.equal(samples, sampler.mc_probs(data.images[:7], 4, seed=1))
    assert not any(m.training for m in sampler.committee.modules())  # every layer back in the mode it was in
    with pytest.raises(MedalError, match=r"^strategy=bald source=mc_dropout: the network has no dropout"):
        model(0.0).mc_probs(data.images[:2], 4, seed=1)
