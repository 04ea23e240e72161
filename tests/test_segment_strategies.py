"""Every query strategy on planted inputs (through the `Strategy` classes the loop calls), and QBC's spread on a
real phantom pool: the common-space descriptor separates images, the paper's bottleneck vectors barely do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers.scripts import load_script

from medal.active import strategies
from medal.active.scoring import (
    BALD,
    QBC,
    Candidates,
    CoreSet,
    Entropy,
    Hybrid,
    Power,
    StratifiedRandom,
    VoteEntropy,
    select,
)
from medal.errors import MedalError

N, S = 12, 8


class Planted:
    """A `SegModel` (and `MCDropoutModel`) that looks its outputs up: image i is filled with the value i, and
    `probs` (M, N, S, S), `features` (M, N, D) and `mc` (T, N, S, S) are what the test planted for it."""

    def __init__(self, probs: torch.Tensor, features: torch.Tensor | None = None, mc: torch.Tensor | None = None):
        self.probs, self.feats, self.mc = probs, features, mc

    @staticmethod
    def rows(images: np.ndarray) -> list[int]:
        return [int(round(float(im[0, 0]))) for im in images]

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        return self.probs[:, self.rows(images)]

    def features(self, images: np.ndarray) -> torch.Tensor:
        return self.feats[:, self.rows(images)]

    def mc_probs(self, images: np.ndarray, samples: int, seed: int) -> torch.Tensor:
        return self.mc[:samples, self.rows(images)]


def _candidates(n: int = N, labelled: list[int] | None = None, k: int = 3, chunk: int = 5) -> Candidates:
    images = np.stack([np.full((S, S), float(i), np.float32) for i in range(n + len(labelled or []))])
    return Candidates([f"{i}" for i in range(n)], images[:n], chunk, images[n:], k, 0)


def _agreeing(m: int = 3, n: int = N) -> torch.Tensor:
    """Members that all say the same confident mask: a hand in the left half of every image."""
    probs = torch.full((m, n, S, S), 0.02)
    probs[..., : S // 2] = 0.98
    return probs


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_qbc_on_probability_maps_ranks_the_planted_disagreement_first() -> None:
    probs = _agreeing()
    probs[2, 7] = probs[2, 7].flip(-1)  # member 2 puts image 7's hand on the other side
    probs[1, 4, :2] = 0.5  # a small disagreement elsewhere
    scores = QBC("qbc", "probs", 4).score(Planted(probs), _candidates(), _gen())
    assert select(scores, 2) == [7, 4] and scores.shape == (N,)
    assert float(scores[0]) == pytest.approx(0.0, abs=1e-6)


def test_qbc_on_bottleneck_features_ranks_the_planted_disagreement_first_and_needs_features() -> None:
    features = torch.randn(1, N, 16).expand(3, N, 16).clone()
    features[1, 5] = -features[1, 5] + torch.randn(16)
    scores = QBC("qbc", "bottleneck", 4).score(Planted(_agreeing(), features), _candidates(), _gen())
    assert select(scores, 1) == [5]
    with pytest.raises(MedalError, match="no feature vector; use strategy.descriptor=probs"):
        QBC("qbc", "bottleneck", 4).score(Planted(_agreeing(), torch.zeros(3, N, 0)), _candidates(), _gen())


def test_entropy_and_vote_entropy_tell_uncertain_members_from_disagreeing_ones() -> None:
    probs = _agreeing()
    probs[:, 3] = 0.45  # every member unsure, all voting background: high entropy, no disagreement in votes
    probs[0, 9], probs[1, 9] = probs[0, 9].flip(-1), probs[1, 9].flip(-1)  # confident members that disagree
    entropy = Entropy("entropy").score(Planted(probs), _candidates(), _gen())
    votes = VoteEntropy("vote_entropy", 0.5).score(Planted(probs), _candidates(), _gen())
    assert select(entropy, 1) == [3]
    assert select(votes, 1) == [9] and float(votes[3]) == pytest.approx(0.0, abs=1e-9)


def test_bald_is_zero_for_identical_samples_and_ranks_disagreement_first() -> None:
    same = torch.rand(1, N, S, S).expand(6, N, S, S).clone()
    assert torch.allclose(strategies.bald(same), torch.zeros(N), atol=1e-9)
    probs = _agreeing()
    probs[1, 2] = probs[1, 2].flip(-1)
    ensemble = BALD("bald", "committee", 4).score(Planted(probs), _candidates(), _gen())
    assert select(ensemble, 1) == [2] and bool((ensemble >= -1e-9).all())
    mc = same.clone()
    mc[::2, 6] = 1.0 - mc[::2, 6]  # every other dropout sample flips image 6
    dropout = BALD("bald_mc", "mc_dropout", 6).score(Planted(probs, mc=mc), _candidates(), _gen())
    assert select(dropout, 1) == [6]
    assert float(dropout[0]) == pytest.approx(0.0, abs=1e-9)  # identical samples elsewhere: BALD 0


def test_bald_with_mc_dropout_refuses_a_model_that_cannot_sample() -> None:
    class NoDropout:
        def predict_probs(self, images):
            return _agreeing()[:, Planted.rows(images)]

    with pytest.raises(MedalError, match="NoDropout cannot sample with dropout"):
        BALD("bald_mc", "mc_dropout", 4).score(NoDropout(), _candidates(), _gen())
    with pytest.raises(MedalError, match=r"strategy.samples=1: MC dropout needs >= 2"):
        BALD("bald_mc", "mc_dropout", 1)


@pytest.mark.parametrize("descriptor", ["projected", "full"])
def test_coreset_picks_the_far_cluster_first(descriptor: str) -> None:
    near = torch.randn(N - 2, 4, generator=_gen()) * 0.5  # around the labelled images, ~1 from them
    far = torch.tensor([[6.0, 6.0, 0.0, 0.0], [6.1, 6.0, 0.0, 0.0]])
    features = torch.cat([near, far])[None].expand(2, N, 4)  # two members, same space here
    labelled = torch.zeros(2, 2, 4)  # two labelled images at the near cluster's centre
    model = Planted(_agreeing(2), torch.cat([features, labelled], 1))
    scores = CoreSet("coreset", descriptor, 512).score(model, _candidates(labelled=[0, 1], k=3), _gen())
    picks = select(scores, 3)
    assert picks[0] in (N - 2, N - 1)  # first, one image of the far cluster
    assert len({p for p in picks if p >= N - 2}) == 1  # never both: the second is close to the first


@pytest.mark.parametrize("descriptor", ["projected", "full"])
def test_hybrid_keeps_to_the_uncertain_shortlist_and_spreads_within_it(descriptor: str) -> None:
    probs = _agreeing()
    for i, level in ((0, 0.5), (1, 0.49), (2, 0.48), (5, 0.47)):  # four uncertain images, most to least
        probs[:, i] = level
    features = torch.zeros(3, N, 2)
    features[:, 1] = torch.tensor([0.0, 0.01])  # image 1 is a near-copy of image 0
    features[:, 2] = torch.tensor([4.0, 0.0])
    features[:, 5] = torch.tensor([0.0, 4.0])
    features[:, 11] = torch.tensor([50.0, 50.0])  # the most diverse image, but a certain one
    model = Planted(probs, torch.cat([features, torch.zeros(3, 1, 2)], 1))
    candidates = _candidates(labelled=[0], k=2)
    scores = Hybrid("hybrid", Entropy("entropy"), 2.0, descriptor, 512).score(model, candidates, _gen())
    picks = set(select(scores, 2))
    assert picks <= {0, 1, 2, 5}  # stage 1: only the 2 x 2 most uncertain
    assert 11 not in picks and not {0, 1} <= picks  # stage 2: not both near-copies
    greedy = set(select(Entropy("entropy").score(model, candidates, _gen()), 2))
    assert greedy == {0, 1}  # what uncertainty alone would have taken


def test_power_sampling_is_seeded_prefers_high_scores_and_becomes_greedy() -> None:
    probs = _agreeing()
    for i in range(N):
        probs[:, i] = 0.02 + 0.04 * i  # entropy grows with the image index, 7-fold from first to last
    model, candidates = Planted(probs), _candidates(k=1)
    power = Power("entropy_power", Entropy("entropy"), 1.0, 0.0)
    first = power.score(model, candidates, _gen())
    assert torch.equal(first, power.score(model, candidates, _gen()))
    counts = np.bincount([select(power.score(model, candidates, torch.Generator().manual_seed(s)), 1)[0]
                          for s in range(300)], minlength=N)
    assert counts[N - 1] > 2 * counts[0] and (counts > 0).sum() > N // 2  # stochastic, but leaning to entropy
    greedy = Power("entropy_power", Entropy("entropy"), 1.0, 1e6)  # beta_r grows with the round: greedy later
    late = Candidates(candidates.ids, candidates.images, candidates.chunk, candidates.labelled, 3, round_no=2)
    assert select(greedy.score(model, late, _gen()), 3) == [N - 1, N - 2, N - 3]


def test_stratified_random_takes_every_size_stratum_in_proportion() -> None:
    probs = torch.full((2, N, S, S), 0.02)
    probs[:, :8, :, :1] = 0.9  # 8 small hands
    probs[:, 8:, :, :6] = 0.9  # 4 large ones
    model, strategy = Planted(probs), StratifiedRandom("random_stratified", 2)
    for seed in range(20):
        picks = select(strategy.score(model, _candidates(k=3), torch.Generator().manual_seed(seed)), 3)
        assert sum(p < 8 for p in picks) == 2  # 2 of 3 from the stratum of 8, 1 from the stratum of 4


def test_score_spread_flags_a_degenerate_score() -> None:
    flat = torch.full((50,), 2.87) + 1e-3 * torch.rand(50, generator=_gen())
    informative = torch.rand(50, generator=_gen())
    assert strategies.score_spread(flat, 5)["cv"] < 1e-3
    assert strategies.score_spread(informative, 5)["cv"] > 0.3
    assert strategies.score_spread(informative, 5)["top_k_over_median"] > 1.5


@pytest.mark.parametrize("shared", [False, True])
def test_qbc_spread_on_a_phantom_pool_is_far_larger_on_probability_maps(tiny_phantoms: Path, tmp_path: Path,
                                                                        one_thread, shared: bool) -> None:
    """Eq. 5-7 on the members' pooled probability maps separates the pool; on the paper's flattened bottleneck
    vectors (independent or shared starts alike) every image scores nearly the maximum. A ratio on a fixed seed."""
    from medal.data.rsna import read_index
    from medal.segment.committee import Committee
    from medal.segment.data import load_seg_data
    from medal.segment.model import CommitteeModel
    from medal.segment.train import RoundTraining

    index = read_index(tiny_phantoms)
    data = load_seg_data(index, tmp_path, 32, dict.fromkeys(index["id"], False), False, tiny_phantoms / "masks", 1)
    train = data.where("train")
    labelled, pool = train[:8], train[8:]
    net = dict(first_conv=8, growth=4, down_layers=[2, 2, 2], bottleneck_layers=4, dropout=0.0)
    augment = dict(enabled=False, rotation=0, scale=[1.0, 1.0], shear=0, hflip=0.0, p=0.0, padding="zeros")

    def trainer() -> pl.Trainer:
        return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)

    torch.manual_seed(0)
    committee = Committee(net=net, size=3, seed=0, lr=3e-3, weight_decay=0.0, augment=augment, channels_last=False,
                          arch="fc_densenet", shared_init=shared)
    model = CommitteeModel(committee, RoundTraining(40, 4, trainer, data.images[:0], data.images[:0],
                                                    bootstrap=shared, seed=0), "cpu", False, 16)
    model.fit(data.images[labelled], data.eval_masks[labelled].astype(np.float32))
    candidates = Candidates([data.ids[i] for i in pool], data.images[pool], 16, data.images[labelled], 8, 1)
    spread = {d: strategies.score_spread(QBC("qbc", d, 8).score(model, candidates, _gen()), 8)
              for d in ("bottleneck", "probs")}
    assert spread["bottleneck"]["cv"] < 0.05 and spread["bottleneck"]["top_k_over_median"] < 1.1
    assert spread["probs"]["cv"] > 10 * spread["bottleneck"]["cv"]
    assert spread["probs"]["top_k_over_median"] > 1.3


def test_the_benchmarks_oracle_upper_bound_queries_what_the_model_segments_worst(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """scripts/bench_segmentation.py's yardstick reads the truth: the worst-segmented image is asked first."""
    from medal.data.images import write_png

    bench = load_script("bench_segmentation")
    probs = _agreeing()  # every member: hand on the left half
    for i in range(N):
        truth = np.zeros((2 * S, 2 * S), bool)  # full size: twice the working size
        truth[:, : S if i != 6 else S // 2] = True  # image 6's hand is half as wide as predicted
        if i == 9:
            truth[:] = False
            truth[:, S:] = True  # image 9's hand is on the other side: Dice 0
        write_png(tmp_path / f"{i}.png", truth)
    scores = bench.WorstSegmented("oracle", str(tmp_path)).score(Planted(probs), _candidates(), _gen())
    assert select(scores, 2) == [9, 6]
    assert float(scores[0]) == pytest.approx(0.0, abs=1e-6) and float(scores[9]) == pytest.approx(1.0)
