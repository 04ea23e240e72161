"""Phantom generator: determinism, RSNA layout, anatomy following age and sex, masks, gold, the task."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.hydra_compose import compose_task  # conftest's make_cfg cannot set the read-only hydra node
from PIL import Image
from skimage.measure import label

from medal.data.images import read_image
from medal.data.phantom import Individual, Nuisance, describe, generate_dataset, read_bones, render_hand
from medal.data.phantom.anatomy import CARPALS, STAGES, hand_epiphyses
from medal.data.phantom.hand import build_hand
from medal.data.phantom.render import BONE_CLASSES
from medal.data.phantom.rois import true_mask_rois
from medal.data.rsna import read_index
from medal.errors import MedalError

SIZE = 96
N = 40
AGES = np.arange(1.0, 229.0, 3.0)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("phantoms_w2")
    return root, generate_dataset(root, n=N, seed=3, image_size=SIZE, workers=2, progress=False)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_same_seed_same_bytes_whatever_the_worker_count(phantom_set, tmp_path: Path) -> None:
    root, meta = phantom_set
    again = generate_dataset(tmp_path / "w1", n=N, seed=3, image_size=SIZE, workers=1, progress=False)
    pd.testing.assert_frame_equal(meta, again)
    files = _files(root)
    assert len(files) == 4 * N and files == _files(tmp_path / "w1")  # raw, masks/, gold/, bones/
    _, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "w1", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    assert filecmp.cmp(root / "phantoms.csv", tmp_path / "w1" / "phantoms.csv", shallow=False)


def test_other_seed_gives_other_images(phantom_set, tmp_path: Path) -> None:
    root, meta = phantom_set
    other = generate_dataset(tmp_path, n=8, seed=4, image_size=SIZE, workers=1, progress=False)
    assert not np.array_equal(other.boneage.to_numpy(), meta.boneage.to_numpy()[:8])
    first = meta.iloc[0]
    assert not np.array_equal(read_image(root / first.path), read_image(tmp_path / other.iloc[0].path))


def test_rsna_layout_and_label_files(phantom_set) -> None:
    root, meta = phantom_set
    train = pd.read_csv(root / "train.csv")
    assert list(train.columns) == ["id", "boneage", "male"]
    assert train.male.dtype == bool and pd.api.types.is_integer_dtype(train.boneage)
    val = pd.read_csv(root / "Validation Dataset.csv")
    assert list(val.columns) == ["Image ID", "male", "Bone Age (months)"]
    test = pd.read_excel(root / "Bone age ground truth.xlsx", engine="openpyxl")
    assert list(test.columns) == ["Case ID", "Sex", "Ground truth bone age (months)"]
    assert set(test.Sex) <= {"M", "F"} and test["Ground truth bone age (months)"].dtype == float
    assert len(train) + len(val) + len(test) == N == len(meta)
    assert (len(train), len(val), len(test)) == (32, 4, 4)
    assert set(meta.columns) >= {
        "id",
        "split",
        "boneage",
        "male",
        "inverted",
        "bits",
        "height",
        "width",
        "maturity_offset",
        "anatomical_age",
        "anatomy_plateau",
        "floor_prediction",
    }
    assert np.allclose(meta.anatomical_age, meta.boneage + meta.maturity_offset, atol=2e-3)
    for folder in ("boneage-validation-dataset-1", "boneage-validation-dataset-2"):
        assert len(list((root / folder).glob("*.png"))) == 2
    modes = set()
    for row in meta.itertuples():
        with Image.open(root / row.path) as img:
            modes.add(img.mode)
            assert img.size == (row.width, row.height)
        for sub in ("masks", "gold"):
            with Image.open(root / sub / f"{row.id}.png") as img:
                assert img.size == (row.width, row.height) and img.mode == "L"
    assert modes == {"L", "I;16"}  # both 8- and 16-bit files
    assert meta.inverted.any() and not meta.inverted.all()
    assert meta.height.nunique() > 1 and (meta.width / meta.height).nunique() > 1


def test_data_index_reads_the_phantoms(phantom_set) -> None:
    root, meta = phantom_set
    index = read_index(root, strict=True)
    assert sorted(index.id) == sorted(meta.id)
    merged = index.merge(meta, on="id", suffixes=("", "_meta"))
    assert (merged.split == merged.split_meta).all()
    assert np.allclose(merged.boneage, merged.boneage_meta)  # labels of all three splits, decimals kept
    assert (merged.male == merged.male_meta).all()


def test_polarity_follows_the_inverted_flag(phantom_set) -> None:
    root, meta = phantom_set
    for row in meta.itertuples():
        raw = read_image(root / row.path)
        mask = read_image(root / "masks" / f"{row.id}.png") > 0.5
        inside, outside = np.median(raw[mask]), np.median(raw[~mask])
        assert (inside < outside) if row.inverted else (inside > outside), row.id


def test_masks_and_gold_are_aligned_with_raw(phantom_set) -> None:
    root, meta = phantom_set
    for row in meta[~meta.inverted].itertuples():
        raw = read_image(root / row.path)
        mask = read_image(root / "masks" / f"{row.id}.png") > 0.5
        gold = read_image(root / "gold" / f"{row.id}.png")
        assert 0.08 < mask.mean() < 0.75
        components = label(mask)
        assert np.bincount(components.ravel())[1:].max() >= 0.99 * mask.sum()  # one hand
        assert (gold[~mask] == 0).all() and (gold[mask] > 0).mean() > 0.97
        # Gold is a smooth brightening of the same picture: best correlated with raw at zero shift.
        centre = np.corrcoef(raw[4:-4, 4:-4].ravel(), gold[4:-4, 4:-4].ravel())[0, 1]
        shifted = np.corrcoef(raw[4:-4, 4:-4].ravel(), gold[4:-4, 7:-1].ravel())[0, 1]
        assert centre > 0.75 and centre > shifted + 0.02, row.id


def test_bone_maps_are_aligned_with_the_bones_of_the_gold_image(phantom_set) -> None:
    root, meta = phantom_set
    for row in meta.itertuples():
        bones = read_bones(root / "bones" / f"{row.id}.png")
        mask = read_image(root / "masks" / f"{row.id}.png") > 0.5
        gold = read_image(root / "gold" / f"{row.id}.png")
        assert bones.shape == mask.shape and set(np.unique(bones)) <= {0, *BONE_CLASSES.values()}
        assert mask[bones > 0].all()  # every bone lies in the hand
        assert 0.05 < (bones > 0).sum() / mask.sum() < 0.8, row.id
        # bone attenuates more than soft tissue: brighter in the gold image, in every image
        assert np.median(gold[bones > 0]) > np.median(gold[mask & (bones == 0)]) + 0.05, row.id
        assert (bones == BONE_CLASSES["shaft"]).any()


def test_bone_maps_show_the_centres_that_appear_with_age() -> None:
    def centre_pixels(age: float) -> dict[int, int]:
        bones = render_hand(Individual(male=True), age).bones
        return {value: int((bones == value).sum()) for value in BONE_CLASSES.values()}

    infant, child = centre_pixels(1.0), centre_pixels(110.0)
    assert infant[BONE_CLASSES["epiphysis"]] == 0 and infant[BONE_CLASSES["round"]] < child[BONE_CLASSES["round"]] / 5
    assert child[BONE_CLASSES["epiphysis"]] > 0 and child[BONE_CLASSES["round"]] > 0


def test_an_older_set_gains_its_bone_maps_without_rewriting_its_images(tmp_path: Path) -> None:
    generate_dataset(tmp_path, n=4, seed=0, image_size=SIZE, workers=1, progress=False)
    raw = sorted((tmp_path / "boneage-training-dataset").glob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in raw}
    bones = {p.name: p.read_bytes() for p in (tmp_path / "bones").glob("*.png")}
    for path in (tmp_path / "bones").glob("*.png"):  # a set written before bones/ existed
        path.unlink()
    again = generate_dataset(tmp_path, n=4, seed=0, image_size=SIZE, workers=1, progress=False)
    assert again.attrs["generated"] == 4
    assert {p: p.stat().st_mtime_ns for p in raw} == stamps
    assert {p.name: p.read_bytes() for p in (tmp_path / "bones").glob("*.png")} == bones


def test_anatomy_stops_changing_at_the_plateau_and_not_before() -> None:
    for person in _individuals(6, seed=2):
        plateau = person.plateau()
        assert plateau >= 211.2 - 1e-9  # girls stop growing at 211.2 months, boys at 240
        after = [build_hand(person, plateau + extra - person.maturity_offset) for extra in (0.0, 9.0)]
        assert all(np.array_equal(a.centre, b.centre) and np.array_equal(a.axis, b.axis) and a.minor == b.minor
                   for a, b in zip(after[0].blobs, after[1].blobs, strict=True))
        assert [r.r1 for r in after[0].rods] == [r.r1 for r in after[1].rods]
        assert after[0].extent == after[1].extent
        before = build_hand(person, plateau - 6.0 - person.maturity_offset)
        assert before.extent != after[0].extent or [r.r1 for r in before.rods] != [r.r1 for r in after[0].rods]


def _individuals(count: int, seed: int = 0) -> list[Individual]:
    rng = np.random.default_rng(seed)
    return [Individual.sample(rng, male=bool(i % 2)) for i in range(count)]


def test_carpals_only_appear_and_growth_plates_close_with_age() -> None:
    for person in _individuals(8):
        timings = person.timings()
        carpal_counts, previous = [], None
        for age in AGES:
            states = describe(person, age)
            carpal_counts.append(sum(states[c].present for c in CARPALS))
            if previous is not None:
                for name, state in states.items():
                    assert STAGES.index(state.stage) >= STAGES.index(previous[name].stage), name
                    assert state.size >= previous[name].size - 1e-9, name
            previous = states
            for name in [*hand_epiphyses(), "radius_epi", "ulna_epi"]:
                anatomy_age = age + person.maturity_offset
                if anatomy_age >= timings[name].fuse:
                    assert states[name].stage == "fused" and states[name].gap == 0.0
                elif anatomy_age >= timings[name].appear and anatomy_age < timings[name].fuse - 15:
                    assert states[name].gap == 1.0
        assert np.all(np.diff(carpal_counts) >= 0)
        assert carpal_counts[0] <= 2 and carpal_counts[-1] == len(CARPALS)


def test_epiphyses_appear_in_the_documented_order() -> None:
    timings = Individual(male=True).timings()  # the population average
    appear = {name: t.appear for name, t in timings.items()}
    for f in (2, 3, 4, 5):
        assert appear[f"pp{f}_epi"] < appear[f"mc{f}_epi"] < appear[f"mp{f}_epi"] < appear[f"dp{f}_epi"]
    for row in ("pp", "mc", "dp"):
        assert appear[f"{row}3_epi"] == min(appear[f"{row}{f}_epi"] for f in range(1, 6))
        assert appear[f"{row}5_epi"] == max(appear[f"{row}{f}_epi"] for f in range(1, 6))


def _maturity(states: dict) -> int:
    return sum(STAGES.index(s.stage) for s in states.values())


def test_girls_mature_earlier_than_boys() -> None:
    girl, boy = Individual(male=False), Individual(male=True)
    scores = [(_maturity(describe(girl, age)), _maturity(describe(boy, age))) for age in AGES]
    assert all(g >= b for g, b in scores) and sum(g > b for g, b in scores) > len(AGES) // 2
    people = _individuals(40, seed=1)
    at_150 = {
        sex: np.mean([_maturity(describe(p, 150.0)) for p in people if p.male == sex]) for sex in (0, 1)
    }
    assert at_150[0] > at_150[1]


def _bone_components(age: float) -> int:
    return int(label(render_hand(Individual(male=True), age).bone > 0).max())


def test_rendered_epiphyses_separate_then_fuse() -> None:
    infant, child, adult = _bone_components(1.0), _bone_components(110.0), _bone_components(228.0)
    assert child > adult + 15  # open growth plates: every hand epiphysis is its own piece of bone
    assert child > infant


def test_gold_is_clean_and_raw_carries_nuisances(phantom_set) -> None:
    root, meta = phantom_set
    noisy = [np.abs(np.diff(read_image(root / r.path), axis=1))[:8].mean() for r in meta.itertuples()]
    clean = [
        np.abs(np.diff(read_image(root / "gold" / f"{r.id}.png"), axis=1))[:8].mean()
        for r in meta.itertuples()
    ]
    assert np.mean(noisy) > 5 * max(np.mean(clean), 1e-4)


def test_resume_redoes_only_missing_images_and_refuses_other_settings(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path, n=6, seed=0, image_size=SIZE, workers=1, progress=False)
    victim = tmp_path / first.path.iloc[2]
    before = victim.read_bytes()
    victim.unlink()
    again = generate_dataset(tmp_path, n=6, seed=0, image_size=SIZE, workers=1, progress=False)
    assert again.attrs["generated"] == 1 and victim.read_bytes() == before
    with pytest.raises(MedalError, match="other settings"):
        generate_dataset(tmp_path, n=7, seed=0, image_size=SIZE, workers=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(MedalError, match="not empty"):
        generate_dataset(tmp_path / "other", n=6, seed=0, image_size=SIZE, progress=False)
    with pytest.raises(MedalError, match="phantoms.n="):
        generate_dataset(tmp_path / "bad", n=0, seed=0, progress=False)
    with pytest.raises(MedalError, match="phantoms.splits="):
        generate_dataset(tmp_path / "bad", n=5, seed=0, splits=(0.5, 0.1, 0.1), progress=False)
    with pytest.raises(MedalError, match="phantoms.nuisance.blurr"):
        generate_dataset(tmp_path / "bad", n=5, seed=0, nuisance={"blurr": 1.0}, progress=False)
    with pytest.raises(MedalError, match="phantoms.nuisance.inverted_p"):
        generate_dataset(tmp_path / "bad", n=5, seed=0, nuisance={"inverted_p": 1.5}, progress=False)
    assert not (tmp_path / "bad").exists()


def test_nuisances_off_gives_upright_clean_images(tmp_path: Path) -> None:
    meta = generate_dataset(
        tmp_path, n=4, seed=0, image_size=SIZE, workers=1, nuisance=Nuisance.off(), progress=False
    )
    assert not meta.inverted.any() and (meta.bits == 8).all() and meta.height.nunique() == 1


def test_phantoms_task_writes_layout_and_contact_sheet(tmp_path: Path) -> None:
    from medal.data.phantom.make import run_phantoms as run

    cfg = compose_task("phantoms", ["n=12", f"image_size={SIZE}", "workers=1", "seed=5"], tmp_path)
    metrics = run(cfg)
    out, run_dir = Path(cfg.out), Path(cfg.paths.output_dir)
    assert metrics["phantoms/n"] == 12 and metrics["phantoms/images_per_s"] > 0
    assert metrics["phantoms/n_train"] + metrics["phantoms/n_val"] + metrics["phantoms/n_test"] == 12
    assert (out / "contact_sheet.png").stat().st_size > 10_000 and (run_dir / "contact_sheet.png").exists()
    assert len(list((out / "boneage-training-dataset").glob("*.png"))) == metrics["phantoms/n_train"]
    resumed = run(cfg)
    assert resumed["phantoms/generated"] == 0 and "phantoms/images_per_s" not in resumed


def test_images_carry_bone_age(phantom_set) -> None:
    """A crude image feature (bony share of the hand in the gold image) already tracks the label."""
    root, meta = phantom_set
    share = [
        (read_image(root / "gold" / f"{r.id}.png") > 0.5).sum()
        / max((read_image(root / "masks" / f"{r.id}.png") > 0.5).sum(), 1)
        for r in meta.itertuples()
    ]
    ranks = np.argsort(np.argsort(share)), np.argsort(np.argsort(meta.boneage.to_numpy()))
    assert np.corrcoef(*ranks)[0, 1] > 0.6  # Spearman correlation


def test_labels_are_learnable_but_not_exact_from_anatomy() -> None:
    """Nearest neighbours on the anatomy states recover the label to within months, not exactly."""
    from medal.data.phantom.anatomy import sample_boneage

    rng = np.random.default_rng(0)
    features, labels, sexes = [], [], []
    for _ in range(700):
        male = bool(rng.random() < 0.5)
        boneage = float(round(sample_boneage(rng, male, (1.0, 228.0))))
        states = describe(Individual.sample(rng, male), boneage)
        features.append(
            [STAGES.index(s.stage) + s.size + np.nan_to_num(s.width_ratio) for s in states.values()]
        )
        labels.append(boneage)
        sexes.append(male)
    x, y, sex = np.array(features), np.array(labels), np.array(sexes)
    errors = []
    for i in range(600, 700):
        pool = np.flatnonzero(sex[:600] == sex[i])
        nearest = pool[np.argsort(((x[pool] - x[i]) ** 2).sum(axis=1))[:10]]
        errors.append(abs(y[nearest].mean() - y[i]))
    assert 1.0 < np.mean(errors) < 15.0


def test_true_mask_rois_cut_the_hand_and_are_reused_only_for_the_same_request(phantom_set, tmp_path: Path) -> None:
    root, meta = phantom_set
    roi = true_mask_rois(root, tmp_path, 64, progress=False)
    boxes = pd.read_csv(roi / "boxes.csv", dtype={"id": str})
    assert list(boxes["id"]) == list(read_index(root, strict=True)["id"])
    first = meta.iloc[0]
    cut = read_image(roi / f"{first.id}.png")
    assert cut.shape == (64, 64) and read_image(tmp_path / "roi_gold" / f"{first.id}.png").shape == (64, 64)
    assert (cut > 0).mean() > 0.2  # the hand fills the box; the background outside the mask is zero
    stamp = (roi / f"{first.id}.png").stat().st_mtime_ns
    assert true_mask_rois(root, tmp_path, 64, progress=False) == roi  # same request: reused, nothing rewritten
    assert (roi / f"{first.id}.png").stat().st_mtime_ns == stamp
    (tmp_path / "roi_gold" / "stale.png").write_bytes(b"")
    true_mask_rois(root, tmp_path, 48, progress=False)  # another size: both folders rebuilt
    assert read_image(roi / f"{first.id}.png").shape == (48, 48)
    assert not (tmp_path / "roi_gold" / "stale.png").exists()
    with pytest.raises(MedalError, match="not a finished phantom set"):
        true_mask_rois(tmp_path / "nothing", tmp_path / "w", 48, progress=False)
