"""Stratified querying (medal/active/stratified.py) on planted pools: the acquisition-balanced random draws rare
acquisition types as often as common ones, the stratified power variant keeps random_stratified's strata and leans
to entropy within them, and the allocation gives every stratum its share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medal.active.scoring import Candidates, Entropy, select
from medal.active.stratified import AcquisitionRandom, StratifiedPower, allocate, eta_squared, stratified_pick
from medal.errors import MedalError

S = 16


def _images(ordinary: int, framed: int) -> np.ndarray:
    """Dark radiographs with a bright hand in the middle; the `framed` ones (last) also have a bright border."""
    x = np.zeros((ordinary + framed, S, S), np.float32)
    x[:, 5:11, 6:10] = 0.8
    x[ordinary:, :2, :] = x[ordinary:, -2:, :] = x[ordinary:, :, :2] = x[ordinary:, :, -2:] = 0.9
    x += np.random.default_rng(0).uniform(0, 0.05, x.shape).astype(np.float32)
    return x


def _candidates(images: np.ndarray, k: int, round_no: int = 1) -> Candidates:
    return Candidates([str(i) for i in range(len(images))], images, 8, images[:0], k, round_no)


@pytest.mark.parametrize(("allocation", "framed_per_batch"), [("equal", 2.0), ("proportional", 4 * 4 / 24)])
def test_acquisition_random_draws_rare_acquisitions_by_its_allocation(allocation: str, framed_per_batch: float) -> None:
    images = _images(ordinary=20, framed=4)
    strategy = AcquisitionRandom("random_acquisition", 2, allocation, ["border", "median", "contrast"])
    counts = []
    for seed in range(40):
        picks = select(strategy.score(None, _candidates(images, k=4), torch.Generator().manual_seed(seed)), 4)
        counts.append(sum(p >= 20 for p in picks))
        assert len(set(picks)) == 4
    if allocation == "equal":
        assert counts == [2] * 40  # two strata, two queries each, whatever the draw
    else:
        assert np.mean(counts) == pytest.approx(framed_per_batch, abs=0.35) and max(counts) <= 2


def test_acquisition_random_refuses_an_unknown_statistic_when_built() -> None:
    with pytest.raises(MedalError, match="strategy.statistics: unknown 'sharpness'"):
        AcquisitionRandom("random_acquisition", 4, "equal", ["border", "sharpness"])
    with pytest.raises(MedalError, match="strategy.allocation='optimal'"):
        AcquisitionRandom("random_acquisition", 4, "optimal", ["border"])


class Planted:
    """A model whose probability maps are looked up by the image's value (image i is filled with i)."""

    def __init__(self, probs: torch.Tensor) -> None:
        self.probs = probs

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        return self.probs[:, [int(round(float(im[0, 0]))) for im in images]]


def test_stratified_power_keeps_the_size_strata_and_leans_to_entropy_within_them() -> None:
    n = 12
    probs = torch.full((2, n, S, S), 0.02)
    probs[:, :8, :, :2] = 0.9  # 8 small hands ...
    probs[:, 8:, :, :10] = 0.9  # ... and 4 large ones
    for i in range(n):  # entropy grows with the index inside each stratum; the background stays background
        probs[:, i, : 2 * (i % 8), 10:] = 0.5
    images = np.stack([np.full((S, S), float(i), np.float32) for i in range(n)])
    strategy = StratifiedPower("entropy_power_stratified", Entropy("entropy"), beta=1.0, growth=0.5, strata=2,
                               allocation="proportional")
    picks = [select(strategy.score(Planted(probs), _candidates(images, k=3), torch.Generator().manual_seed(s)), 3)
             for s in range(100)]
    assert all(sum(p < 8 for p in batch) == 2 for batch in picks)  # 2 of 3 from the stratum of 8, as in proportion
    small = np.bincount([p for batch in picks for p in batch if p < 8], minlength=8)
    assert small[7] > 2 * small[0] and (small > 0).sum() >= 5  # stochastic, but leaning to entropy
    assert strategy.beta_at(0) == 1.0 and strategy.beta_at(2) == pytest.approx(2.25)
    greedy = StratifiedPower("g", Entropy("entropy"), beta=1.0, growth=1e3, strata=2, allocation="proportional")
    late = select(greedy.score(Planted(probs), _candidates(images, k=3, round_no=3), torch.Generator()), 3)
    assert sorted(late) == [6, 7, 11]  # beta grown: the most uncertain of each stratum


def test_allocation_gives_each_stratum_its_share_and_never_more_than_it_holds() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        sizes = torch.randint(0, 12, (5,), generator=gen).tolist()
        k = int(torch.randint(0, 20, (1,), generator=gen))
        for allocation in ("equal", "proportional"):
            quotas = allocate(sizes, k, allocation, gen)
            assert sum(quotas) == min(k, sum(sizes)) and all(q <= s for q, s in zip(quotas, sizes, strict=True))
            if allocation == "equal":  # one level for all: those with room differ by at most one, none above them
                roomy = [q for q, s in zip(quotas, sizes, strict=True) if q < s]
                assert not roomy or (max(roomy) - min(roomy) <= 1 and max(quotas) <= min(roomy) + 1)


def test_stratified_pick_takes_exactly_the_quota_per_stratum() -> None:
    strata = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    keys = torch.rand(15, generator=torch.Generator().manual_seed(0))
    picks = torch.topk(stratified_pick(strata, keys, 6, "equal", torch.Generator().manual_seed(0)), 6).indices
    assert np.bincount(strata[picks].numpy(), minlength=3).tolist() == [2, 2, 2]
    assert eta_squared(np.array([0.9] * 10 + [0.2] * 5), strata.numpy()) == pytest.approx(1.0)
