"""Where CAM mass lies: planted maps on the phantoms' own hand and bone masks, in the network input's frame."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation

from medal.boneage.cam import upsample
from medal.boneage.cam_regions import RegionMaps, RegionTally, grid_share, mass_fraction, region_maps
from medal.data.cache import fit_square
from medal.data.images import read_image
from medal.data.phantom import generate_dataset
from medal.preprocess.crop import crop_square, roi_box
from medal.segment.infer import read_boxes

SIZE = 48


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Six phantoms and their RoIs cut the way `medal segment` cuts them, with its boxes.csv."""
    root = tmp_path_factory.mktemp("cam_regions")
    meta = generate_dataset(root / "data", n=6, seed=1, image_size=128, workers=1, progress=False)
    roi = root / "work" / "roi"
    roi.mkdir(parents=True)
    with (roi / "boxes.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "y0", "x0", "y1", "x1", "inverted", "height", "width", "mask_fraction", "gold"])
        for row in meta.itertuples():
            mask = read_image(root / "data" / "masks" / f"{row.id}.png") > 0.5
            writer.writerow([row.id, *roi_box(mask, 0.05), 0, *mask.shape, mask.mean(), 0])
    return root, meta


def test_planted_maps_score_their_region() -> None:
    bone = torch.zeros(1, 8, 8)
    bone[0, 2:4, 2:6] = 1.0
    hand = torch.zeros(1, 8, 8)
    hand[0, 1:7, 1:7] = 1.0
    on_bone, even, background, negative = bone.clone(), torch.ones(1, 8, 8), 1.0 - hand, -bone
    maps = torch.cat([on_bone, even, background, negative])
    assert mass_fraction(maps, bone.expand(4, 8, 8)).tolist()[:3] == [1.0, 8 / 64, 0.0]
    assert mass_fraction(maps, hand.expand(4, 8, 8)).tolist()[:3] == [1.0, 36 / 64, 0.0]
    assert np.isnan(mass_fraction(maps, hand.expand(4, 8, 8))[3])  # no positive mass: points nowhere
    half = on_bone - 3.0 * (1.0 - hand)  # negative evidence outside the hand is not counted
    assert mass_fraction(half, hand).item() == 1.0
    with pytest.raises(ValueError, match="must both be"):
        mass_fraction(maps, hand)


def test_regions_follow_the_roi_crop(phantoms) -> None:
    root, meta = phantoms
    boxes = read_boxes(root / "work" / "roi" / "boxes.csv")
    maps = RegionMaps(root / "data", SIZE, "pad", boxes)
    tally = RegionTally()
    for row in meta.itertuples():
        regions = maps.regions(row.id)
        assert {k: v.shape for k, v in regions.items()} == {k: (SIZE, SIZE) for k in ("bone", "centre", "hand")}
        # what the network sees: a 64-px RoI cut by the box (background zero), fitted to SIZE by the cache
        gold = read_image(root / "data" / "gold" / f"{row.id}.png")
        seen = fit_square(crop_square(gold, boxes[row.id], 64), SIZE, "pad") > 0.05
        hand = regions["hand"] > 0.5
        assert (seen[hand]).mean() > 0.99, row.id  # the mapped hand lies on the hand the network sees ...
        assert not (seen & ~binary_dilation(hand)).any(), row.id  # ... which lies within one pixel of it
        assert set(np.unique(regions["hand"])) <= {0.0, 1.0}
        assert (regions["bone"] <= regions["hand"]).mean() > 0.99 and (regions["centre"] <= regions["bone"]).mean() > 0.99
        planted = torch.from_numpy(regions["bone"])[None]  # a CAM that lies exactly on the bones
        tally.add([row.id], ["M" if row.male else "F"], planted, [regions], (SIZE, SIZE))
    metrics = tally.metrics()
    assert metrics["cam/bone_fraction"] == pytest.approx(1.0)
    assert metrics["cam/bone_grid"] == pytest.approx(1.0) and metrics["cam/hand_grid"] == pytest.approx(1.0)
    assert metrics["cam/hand_fraction"] > 0.98
    assert 0.0 < metrics["cam/centre_fraction"] < 1.0
    assert 0.02 < metrics["cam/bone_area"] < metrics["cam/hand_area"] < 0.9
    assert metrics["cam/no_positive_mass"] == 0.0


def test_raw_images_are_framed_like_the_cache_and_the_padding_is_not_hand(phantoms, tmp_path: Path) -> None:
    root, meta = phantoms
    row = meta.iloc[0]
    maps = RegionMaps(root / "data", SIZE, "pad", None)
    hand = maps.regions(row.id)["hand"]
    mask = (read_image(root / "data" / "masks" / f"{row.id}.png") > 0.5).astype(np.float32)
    assert np.array_equal(hand, fit_square(mask, SIZE, "pad", fill=0.0) >= 0.5)
    assert hand.shape == (SIZE, SIZE) and hand[:, 0].max() == 0.0  # padded columns are outside the hand
    tally = RegionTally()
    tally.add([row.id], ["M"], torch.ones(1, SIZE, SIZE), [maps.regions(row.id)], (6, 6))  # evenly spread map
    metrics = tally.metrics()
    assert metrics["cam/hand_fraction"] == pytest.approx(metrics["cam/hand_area"])
    tally.write(tmp_path / "regions.csv")
    written = pd.read_csv(tmp_path / "regions.csv", dtype={"id": str})
    assert written.loc[0, "id"] == row.id and written.loc[0, "hand_area"] == pytest.approx(float(hand.mean()))


def test_a_map_that_is_the_hand_at_a_coarse_grid_scores_the_grid_share(phantoms) -> None:
    root, meta = phantoms
    maps = RegionMaps(root / "data", SIZE, "pad", read_boxes(root / "work" / "roi" / "boxes.csv"))
    regions = [maps.regions(i) for i in meta["id"]]
    hands = torch.from_numpy(np.stack([r["hand"] for r in regions]))
    shares = {grid: grid_share(hands, (grid, grid)) for grid in (3, 6, 12, SIZE)}
    assert shares[SIZE].tolist() == pytest.approx([1.0] * len(meta))
    assert (shares[3] < shares[6]).all() and (shares[6] < shares[12]).all() and (shares[12] < 1.0).all()
    assert (shares[6] > hands.double().mean(dim=(1, 2))).all()  # still far better than an even map
    # the hand itself as a 6x6 CAM (pooled, then upsampled as CAM maps are) scores exactly that share
    as_cam = upsample(F.adaptive_avg_pool2d(hands[:, None], 6)[:, 0], (SIZE, SIZE))
    tally = RegionTally()
    tally.add(list(meta["id"]), ["M"] * len(meta), as_cam, regions, (6, 6))
    metrics = tally.metrics()
    assert metrics["cam/hand_fraction"] == pytest.approx(metrics["cam/hand_grid"])
    assert metrics["cam/hand_grid"] == pytest.approx(float(shares[6].mean()))
    assert metrics["cam/hand_near"] > 0.99  # its spill stays (almost all) within one cell of the hand


def test_mass_beside_the_hand_counts_as_near_only_within_one_cell() -> None:
    hand = torch.zeros(1, 32, 32)
    hand[0, 8:24, 12:20] = 1.0  # a finger 8 px wide
    beside, far = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    beside[0, 8:24, 20:23] = 1.0  # 3 px to its right: inside one 4-px cell of an 8x8 grid
    far[0, 0:4, 0:4] = 1.0  # the corner: more than a cell away
    tally = RegionTally()
    regions = [{"hand": hand[0].numpy(), "bone": hand[0].numpy(), "centre": hand[0].numpy()}] * 2
    tally.add(["a", "b"], ["M", "F"], torch.cat([hand + beside, hand + far]), regions, (8, 8))
    near_a, near_b = (row["hand_near"] for row in tally.rows)
    fraction_a, fraction_b = (row["hand_fraction"] for row in tally.rows)
    assert fraction_a == pytest.approx(128 / (128 + 48)) and near_a == pytest.approx(1.0)
    assert fraction_b == pytest.approx(128 / (128 + 16)) and near_b == pytest.approx(fraction_b)


def test_where_no_reference_masks_exist_there_are_no_fractions(phantoms, tmp_path: Path) -> None:
    root, _ = phantoms
    assert region_maps(tmp_path, "raw", tmp_path, SIZE, "pad") is None  # real data: no masks/, no bones/
    assert region_maps(root / "data", "raw", root / "work", SIZE, "pad").boxes is None
    enhanced = root / "work" / "enhanced" / "gan"  # enhanced RoIs share the segmentation's boxes
    assert region_maps(root / "data", str(enhanced), root / "work", SIZE, "pad").boxes is not None
    assert region_maps(root / "data", str(tmp_path), tmp_path, SIZE, "pad") is None  # RoIs without boxes
