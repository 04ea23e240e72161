"""Segmentation at archive scale, by behaviour: the data set stays in its float16 cache and is read on demand, the
loop hands the pool to a strategy a chunk at a time, core-set's compact descriptor selects what the full one
selects, k-centre greedy agrees with the brute-force reference, and the final pass streams its maps. Memory itself
is measured by scripts/bench_al_memory.py, not here."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medal.active import strategies
from medal.active.loop import ActiveLearner, ALConfig
from medal.active.model import Rows
from medal.active.oracles import QueryContext
from medal.active.pool import ActivePool
from medal.active.scoring import Candidates, CoreSet, distance_distortion, select
from medal.segment.data import HeldOutMasks, SegData, WorkingImages, load_seg_data
from medal.segment.evaluate import mean_prob_maps, mean_probs
from medal.segment.infer import FinalOutputs, read_boxes, write_final

S = 8


class Recording:
    """An `ImageSource` over an array that records how many rows each read asked for, and in which phase."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.reads, self.phase = images, [], "other"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.images[key]
        self.reads.append((self.phase, len(out)))
        return out


class PixelModel:
    """A `SegModel` whose members see the image's pixels: features (M, b, S*S) are the pixels times a member's
    factor, probabilities the pixels themselves; fitting does nothing."""

    members = 2

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        return {}

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(images, np.float32))[None].expand(self.members, -1, -1, -1)

    def features(self, images: np.ndarray) -> torch.Tensor:
        flat = torch.from_numpy(np.asarray(images, np.float32)).flatten(1)
        return torch.stack([flat * (1 + m) for m in range(self.members)])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class Watched:
    """A strategy that marks the images' reads made while it scores."""

    def __init__(self, inner: Any, images: Recording) -> None:
        self.inner, self.images, self.name = inner, images, inner.name

    def score(self, model: Any, candidates: Candidates, generator: torch.Generator) -> torch.Tensor:
        self.images.phase = "score"
        try:
            return self.inner.score(model, candidates, generator)
        finally:
            self.images.phase = "other"


class Answers:
    """An oracle that answers every query with a blank-but-for-one-pixel mask at the working size."""

    name = "answers"

    def answer(self, round_no: int, ids: list[str], ctx: QueryContext) -> dict[str, np.ndarray]:
        mask = np.zeros((S, S), bool)
        mask[0, 0] = True
        return dict.fromkeys(ids, mask)


def _al(tmp_path: Path, chunk: int) -> ALConfig:
    return ALConfig(dir=str(tmp_path / "al"), initial=4, per_round=4, budget=12, patience=9, min_delta=0.0,
                    reset_weights=False, committee_size=2, member_init="independent", member_data="shared",
                    val_limit=None, score_batch_size=chunk, fast_scoring=False, seed=0)


def _learner(tmp_path: Path, images: Recording, strategy: Any, chunk: int = 5) -> ActiveLearner:
    n = len(images)
    data = SegData([f"{i:03d}" for i in range(n)], np.array(["train"] * n), images, [f"{i}.png" for i in range(n)],
                   np.zeros(n, bool), False)
    ctx = QueryContext(lambda i: (S, S), lambda i: images.images[data.rows[i]], lambda i: None)
    return ActiveLearner(data, PixelModel, Watched(strategy, images), Answers(), ctx, _al(tmp_path, chunk),
                         lambda model: {}, settings={})


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, S, S), dtype=np.float32)


# -- the data set stays on disk ------------------------------------------------------------------------------
def test_seg_data_reads_the_float16_cache_on_demand_with_polarity_and_masks_applied(tiny_phantoms: Path,
                                                                                   tmp_path: Path) -> None:
    from medal.data.rsna import read_index

    index = read_index(tiny_phantoms)
    ids = list(index["id"])
    inverted = {i: n % 3 == 0 for n, i in enumerate(ids)}
    masks = tmp_path / "masks"
    masks.mkdir()
    with_mask = ids[1::4]
    for i in with_mask:
        shutil.copy(tiny_phantoms / "masks" / f"{i}.png", masks / f"{i}.png")
    data = load_seg_data(index, tmp_path / "work", 16, inverted, True, masks, 1)

    assert isinstance(data.images, WorkingImages) and isinstance(data.images.array, np.memmap)
    assert data.images.array.dtype == np.float16 and data.images.shape == (len(ids), 16, 16)
    assert len(pickle.dumps(data.images)) < 20_000  # a path and the flags: never the pixels
    flips = np.array([inverted[i] for i in ids])
    whole = np.asarray(data.images.array, dtype=np.float32)
    whole[flips] = 1.0 - whole[flips]  # what loading everything as float32 and flipping used to give
    rows = np.array([9, 3, 3, 0, len(ids) - 1])
    assert np.array_equal(data.images[rows], whole[rows])  # any order, repeats too
    assert np.array_equal(data.images[2:7], whole[2:7]) and np.array_equal(data.images[5], whole[5])
    assert np.array_equal(data.images[flips], whole[flips]) and data.images[rows].dtype == np.float32

    assert isinstance(data.eval_masks, HeldOutMasks)
    assert list(np.flatnonzero(data.has_eval)) == [ids.index(i) for i in with_mask]
    lowres = np.load(data.eval_masks.path, mmap_mode="r")
    assert lowres.dtype == np.float16 and len(lowres) == len(with_mask)  # only the images that have one
    read = data.eval_masks[np.arange(len(ids))]
    assert read.dtype == bool and not read[~data.has_eval].any()
    assert np.array_equal(read[data.has_eval], np.asarray(lowres) > 0.5)


# -- the loop reads the pool a chunk at a time ---------------------------------------------------------------
@pytest.mark.parametrize("descriptor", ["projected", "full"])
def test_the_loop_hands_the_pool_to_coreset_a_chunk_at_a_time_never_whole(tmp_path: Path, descriptor: str) -> None:
    images = Recording(_pixels(40))
    learner = _learner(tmp_path, images, CoreSet("coreset", descriptor, 16), chunk=5)
    result = learner.run()
    assert result.pool.stopped == "budget" and len(result.pool.labelled) == 12
    scoring = [rows for phase, rows in images.reads if phase == "score"]
    assert max(scoring) <= 5  # al.score_batch_size rows per read while scoring
    # each query round reads the free pool and the labelled images once: 36 + 4, then 32 + 8
    assert sum(scoring) == (40 - 4 + 4) + (40 - 8 + 8)


def test_importing_a_round_of_answers_writes_the_pool_state_once(tmp_path: Path, monkeypatch) -> None:
    learner = _learner(tmp_path, Recording(_pixels(20)), CoreSet("coreset", "projected", 16))
    learner._draw_initial()
    saves = []
    monkeypatch.setattr(ActivePool, "save", lambda pool: saves.append(len(pool.labelled)))
    learner._import_answers()
    assert saves == [4]  # once, after the last answer (pool.json is megabytes at 100,000 ids)
    monkeypatch.undo()
    learner.pool.save()
    assert len(ActivePool.open(learner.pool.ids, tmp_path / "al" / "pool.json").labelled) == 4


# -- the compact descriptor ----------------------------------------------------------------------------------
class Clusters:
    """A committee of 3 members whose bottleneck vectors (D values) put pool image i in cluster i // size: cluster
    j sits at distance 20 j from cluster 0 (where the labelled images are), each member in its own random basis,
    with a little noise per image. Images are filled with their row number, which is how the model finds them."""

    def __init__(self, clusters: int, size: int, dim: int, labelled: int) -> None:
        gen = torch.Generator().manual_seed(0)
        n = clusters * size
        cluster = torch.arange(n) // size
        radius = 20.0 * cluster.double()
        self.vectors = torch.zeros(3, n + labelled, dim, dtype=torch.float64)
        for m in range(3):
            directions = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=gen, dtype=torch.float64), dim=1)
            noise = 0.02 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
            self.vectors[m, :n] = radius[:, None] * directions[cluster] + noise
        self.vectors = self.vectors.float()
        self.cluster = cluster

    def features(self, images: np.ndarray) -> torch.Tensor:
        return self.vectors[:, [int(round(float(im[0, 0]))) for im in images]]


def test_coreset_on_the_compact_descriptor_picks_what_the_full_one_picks_on_a_planted_pool() -> None:
    clusters, size, labelled = 8, 10, 2
    model = Clusters(clusters, size, dim=4096, labelled=labelled)
    n = clusters * size
    images = np.stack([np.full((S, S), float(i), np.float32) for i in range(n + labelled)])
    candidates = Candidates([str(i) for i in range(n)], images[:n], 16, images[n:], clusters - 1, 1)
    picks = {d: select(CoreSet("coreset", d, 64).score(model, candidates, torch.Generator()), clusters - 1)
             for d in ("full", "projected")}
    # k-centre greedy from cluster 0: the farthest cluster first, then the next farthest, one image each
    expected = list(range(clusters - 1, 0, -1))
    assert [int(model.cluster[p]) for p in picks["full"]] == expected
    assert [int(model.cluster[p]) for p in picks["projected"]] == expected  # 4096 -> 64 values a member

    def radius(chosen: list[int]) -> float:
        """The covering radius of labelled + chosen over the pool, in the full space (what k-centre minimises)."""
        full = model.vectors.permute(1, 0, 2).flatten(1)
        centres = torch.cat([full[n:], full[chosen]])
        return float(torch.cdist(full[:n].double(), centres.double()).min(1).values.max())

    assert radius(picks["projected"]) <= 1.05 * radius(picks["full"])


def test_the_projection_keeps_pairwise_distances_within_a_few_percent() -> None:
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(2, 40, 8192, generator=gen)

    class Vectors:
        def features(self, images: np.ndarray) -> torch.Tensor:
            return vectors[:, [int(round(float(im[0, 0]))) for im in images]]

    images = np.stack([np.full((S, S), float(i), np.float32) for i in range(40)])
    distortion = distance_distortion(Vectors(), images, 16, 512)
    assert distortion["dim_in"] == 8192 and distortion["pairs"] == 40 * 39 / 2
    assert abs(distortion["ratio_mean"] - 1.0) < 0.01 and distortion["ratio_sd"] < 0.04  # ~1/sqrt(2 * 2 * 512)
    assert distortion["ratio_min"] > 0.85 and distortion["ratio_max"] < 1.15
    same = distance_distortion(Vectors(), images, 16, 8192)  # nothing to compress: the vectors themselves
    assert same["ratio_sd"] < 1e-6


def _reference_k_center(pool: torch.Tensor, labelled: torch.Tensor, k: int) -> torch.Tensor:
    """k-centre greedy as medal computed it before streaming: float64 copies and (N, L) distance matrices."""
    x = pool.double()
    nearest = torch.cdist(x, labelled.double()).min(1).values
    scores = nearest.clone()
    for _ in range(k):
        pick = int(nearest.argmax())
        scores[pick] = nearest[pick]
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick:pick + 1])[:, 0])
        nearest[pick] = -1.0
    left = nearest >= 0
    scores[left] = nearest[left]
    return scores.float()


def test_k_center_greedy_agrees_with_the_brute_force_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    pool, labelled = torch.randn(300, 24, generator=gen), torch.randn(5, 24, generator=gen)
    scores = strategies.k_center_greedy(pool, labelled, 20)
    reference = _reference_k_center(pool, labelled, 20)
    assert select(scores, 20) == select(reference, 20)
    assert torch.allclose(scores, reference, rtol=1e-5, atol=1e-5)
    blocked = strategies.nearest_distance(pool, labelled, rows=7)  # pool and centres in blocks of 7
    assert torch.allclose(blocked, torch.cdist(pool.double(), labelled.double()).min(1).values, atol=1e-5)


# -- the final pass streams ----------------------------------------------------------------------------------
def test_final_maps_are_predicted_a_batch_at_a_time_and_written_from_a_stream(tmp_path: Path) -> None:
    from medal.data.images import write_png

    images = Recording(_pixels(10))
    maps = list(mean_prob_maps(PixelModel(), images, 4))
    assert [rows for _, rows in images.reads] == [4, 4, 2] and len(maps) == 10
    assert np.array_equal(np.stack(maps), mean_probs(PixelModel(), images.images, 4))

    paths = []
    for i in range(3):
        raw = np.zeros((24, 20), np.float32)
        raw[4:20, 5:15] = 0.8
        paths.append(str(write_png(tmp_path / "raw" / f"{i}.png", raw)))
    probs = np.zeros((3, S, S), np.float32)
    probs[:, 2:6, 2:6] = 0.9
    boxes = {}
    for name, source in (("array", probs), ("stream", iter(probs))):
        out = FinalOutputs(tmp_path / name, roi_size=16, margin=0.0, postprocess=True)
        boxes[name] = read_boxes(write_final(out, ["a", "b", "c"], paths, source, inverted={}))
    assert boxes["stream"] == boxes["array"] and len(boxes["stream"]) == 3
    with pytest.raises(ValueError):  # a stream shorter than the ids is refused, not silently cut
        write_final(FinalOutputs(tmp_path / "short", 16, 0.0, True), ["a", "b", "c"], paths, iter(probs[:2]), {})


def test_rows_of_rows_read_through_to_the_source() -> None:
    images = Recording(_pixels(12))
    pool = Rows(images, np.array([11, 4, 7, 0]))
    inner = Rows(pool, np.array([2, 0]))
    assert np.array_equal(inner[0:2], images.images[[7, 11]]) and inner.shape == (2, S, S)
    assert images.reads[-1] == ("other", 2)  # one read of the two rows, nothing else


def test_every_chunk_hands_the_freed_heap_back(monkeypatch) -> None:
    """glibc keeps freed fragments of a chunk's arrays in its heap; `chunks` trims it after each chunk, so a pass
    over a pool does not grow with the pool (an entropy pass at 12,611 images reached 13.6 GB without)."""
    import medal.active.model as active_model

    calls = []
    monkeypatch.setattr(active_model, "_MALLOC_TRIM", lambda pad: calls.append(pad))
    assert [len(c) for c in active_model.chunks(_pixels(10), 4)] == [4, 4, 2]
    assert calls == [0, 0, 0]
