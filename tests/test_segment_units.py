"""Pure pieces of the segmentation stage: network shapes, loss, strategies, coarse masks, RoI crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medal.active import strategies
from medal.active.scoring import select
from medal.errors import MedalError
from medal.losses import bce_dice_loss
from medal.models.fc_densenet import FCDenseNet
from medal.preprocess.coarse import coarse_mask, is_inverted
from medal.preprocess.crop import crop_square, roi_box
from medal.preprocess.masks import binarise, fill_holes, largest_component, otsu_threshold
from medal.segment.metrics import dice_iou, otsu_binarise


def test_fc_densenet_default_has_three_down_blocks_and_192_bottleneck_maps() -> None:
    torch.manual_seed(0)
    net = FCDenseNet().eval()
    assert len(net.down_blocks) == 3 and len(net.up_blocks) == 3
    assert net.bottleneck_channels == 192
    with torch.no_grad():
        logits, features = net(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 1, 32, 32)
    assert features.shape == (2, 192 * 4 * 4)  # the flattened bottleneck map, 1/8 of the input side (paper)


def test_fc_densenet_gap_features_and_bad_input_size() -> None:
    net = FCDenseNet(first_conv=8, growth=4, down_layers=(2, 2, 2), bottleneck_layers=3, feature="gap").eval()
    with torch.no_grad():
        logits, features = net(torch.rand(3, 1, 32, 48))
    assert logits.shape == (3, 1, 32, 48) and features.shape == (3, 12)
    with pytest.raises(MedalError, match="divisible by 8"):
        net(torch.rand(1, 1, 30, 32))
    with pytest.raises(MedalError, match="feature"):
        FCDenseNet(feature="max")


def test_loss_equals_bce_plus_one_minus_soft_dice_by_hand() -> None:
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)  # p = 0.5, 0.75
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    bce = (-math.log(0.5) - math.log(0.25)) / 2
    dice = (2 * 0.5 + 1) / (0.5 + 0.75 + 1 + 1)  # smoothed by eps = 1
    assert bce_dice_loss(logits, target).item() == pytest.approx(bce + 1 - dice, rel=1e-6)


def test_loss_is_finite_for_saturated_logits() -> None:
    logits = torch.tensor([200.0, -200.0]).reshape(1, 1, 1, 2)
    target = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    loss = bce_dice_loss(logits, target)
    assert torch.isfinite(loss) and loss.item() > 100


def test_dice_iou_binarise_with_otsu_like_the_paper() -> None:
    probs = torch.full((1, 1, 4, 4), 0.1)
    probs[..., :2, :] = 0.4  # above the image's Otsu threshold although below 0.5
    target = torch.zeros(1, 1, 4, 4)
    target[..., :3, :] = 1  # 12 pixels; prediction 8, overlap 8
    dice, iou = dice_iou(probs, target)
    assert dice.item() == pytest.approx(2 * 8 / (8 + 12))
    assert iou.item() == pytest.approx(8 / 12)


def test_qbc_is_zero_for_identical_members_and_ranks_a_planted_disagreement_first() -> None:
    torch.manual_seed(0)
    same = torch.randn(1, 6, 32).expand(3, 6, 32).clone()
    scores = strategies.pairwise_sine(same)
    assert torch.allclose(scores, torch.zeros(6), atol=1e-3)
    planted = same.clone()
    planted[2, 4] = -planted[2, 4] + torch.randn(32)  # member 2 sees image 4 differently
    scores = strategies.pairwise_sine(planted)
    assert select(scores, 2)[0] == 4
    assert scores.shape == (6,) and torch.isfinite(scores).all()


def test_qbc_sums_sine_over_member_pairs() -> None:
    e = torch.eye(3)
    features = e[:, None, :]  # three mutually orthogonal members, one image: 3 pairs x sin 90°
    assert strategies.pairwise_sine(features).item() == pytest.approx(3.0)


def test_entropy_prefers_uncertain_masks_and_random_draws_distinct_images() -> None:
    probs = torch.full((3, 4, 8, 8), 0.02)
    probs[:, 2] = 0.5
    scores = strategies.mean_entropy(probs)
    assert select(scores, 2)[0] == 2 and scores.shape == (4,)
    scores = strategies.uniform(10, torch.Generator().manual_seed(0))
    indices = select(scores, 4)
    assert len(set(indices)) == 4 and scores.shape == (10,)
    assert select(scores, 99) == select(scores, 10) and len(select(scores, 99)) == 10
    with pytest.raises(MedalError):
        strategies.mean_entropy(torch.rand(4, 8))


def test_select_refuses_scores_it_cannot_rank() -> None:
    with pytest.raises(MedalError, match="not finite"):
        select(torch.tensor([0.1, float("nan"), 0.3]), 1)
    with pytest.raises(MedalError, match=r"one score per candidate"):
        select(torch.zeros(2, 3), 1)
    with pytest.raises(MedalError, match="must be >= 0"):
        select(torch.zeros(3), -1)


def test_data_containers_refuse_mismatched_lengths(tmp_path) -> None:
    import pandas as pd

    from medal.active.scoring import Candidates
    from medal.segment.data import SegData, load_seg_data

    with pytest.raises(MedalError, match="candidates: 2 ids but 3 images"):
        Candidates(["a", "b"], np.zeros((3, 4, 4)), 2, np.zeros((0, 4, 4)), 1, 0)
    with pytest.raises(MedalError, match="segmentation data: 2 ids but 2 images, 1 paths"):
        SegData(["a", "b"], np.array(["train", "val"]), np.zeros((2, 4, 4)), ["a.png"], np.zeros(2, bool), False)
    index = pd.DataFrame({"id": ["a", "b"], "path": ["a.png", "b.png"], "split": ["train", "val"]})
    with pytest.raises(MedalError, match=r"^coarse table: no polarity for image b \(1 missing\)"):
        load_seg_data(index, tmp_path, 8, {"a": False}, True, None, 1)


def test_one_otsu_binarisation_for_metric_final_masks_and_flat_maps() -> None:
    """The metric's tensor binarisation and the final masks' array binarisation are the same function."""
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(3, 1, 12, 12)).astype(np.float32)
    by_metric = otsu_binarise(torch.from_numpy(maps)).numpy()[:, 0]
    by_final = np.stack([binarise(m[0], postprocess=False) for m in maps])
    assert np.array_equal(by_metric, by_final)
    assert otsu_threshold(np.full((3, 3), 0.7)) == 0.5  # flat: no Otsu threshold
    blobs = np.zeros((12, 12), np.float32)
    blobs[1:6, 1:6], blobs[8:10, 8:10] = 0.9, 0.9
    assert binarise(blobs, postprocess=True).sum() == 25  # the largest component only


def _hand_image(inverted: bool) -> tuple[np.ndarray, np.ndarray]:
    """A palm + five fingers on a noisy background, a letter marker and a thin frame."""
    rng = np.random.default_rng(0)
    h, w = 160, 128
    yy, xx = np.mgrid[:h, :w]
    hand = ((yy - 110) ** 2 / 30**2 + (xx - 64) ** 2 / 28**2) < 1
    for k, x0 in enumerate((36, 50, 64, 78, 92)):
        hand |= (abs(xx - x0) < 5) & (yy > 40 + 4 * abs(k - 2)) & (yy < 110)
    hand |= (abs(xx - 64) < 18) & (yy >= 110)  # wrist reaches the bottom edge
    image = 0.12 + 0.03 * rng.standard_normal((h, w)) + 0.45 * hand
    image[8:16, 100:116] = 0.9  # a burned-in marker
    image[:2], image[-2:], image[:, :2], image[:, -2:] = 0.95, 0.95, 0.95, 0.95  # bright scanner frame
    image = np.clip(image, 0, 1).astype(np.float32)
    return (1.0 - image if inverted else image), hand


@pytest.mark.parametrize("inverted", [False, True])
def test_coarse_mask_normalises_polarity_and_finds_the_hand(inverted: bool) -> None:
    image, hand = _hand_image(inverted)
    assert is_inverted(image) == inverted
    mask, detected = coarse_mask(image, work_size=128)
    assert detected == inverted
    assert mask.shape == image.shape and mask.dtype == bool
    dice = 2 * (mask & hand).sum() / (mask.sum() + hand.sum())
    assert dice > 0.9
    assert not mask[8:16, 100:116].any()  # the marker is not the largest component


def test_roi_box_margin_and_square_crop() -> None:
    mask = np.zeros((100, 80), dtype=bool)
    mask[20:60, 30:50] = True  # 40 x 20
    assert roi_box(mask, margin=0.1) == (16, 26, 64, 54)
    assert roi_box(np.zeros((10, 12), bool)) == (0, 0, 10, 12)
    image = mask.astype(np.float32)
    crop = crop_square(image, roi_box(mask, 0.0), size=40)
    assert crop.shape == (40, 40)
    assert crop[:, 10:30].mean() > 0.95 and crop[:, :8].max() == 0  # centred, zero-padded sides


def test_active_learning_imports_nothing_from_segmentation() -> None:
    """The layering: `medal.segment` builds on `medal.active`, never the other way round (no cycle)."""
    import subprocess
    import sys

    code = ("import sys, medal.active.loop, medal.active.scoring, medal.active.oracles, medal.active.pool; "
            "print(sorted(m for m in sys.modules if m.startswith('medal.segment')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_clean_up_equals_scipy_and_skimage_on_random_blobs() -> None:
    """`fill_holes` is scipy's binary_fill_holes and `largest_component` skimage's 8-connected labelling, faster:
    the same masks on blobs of every size, holes, islands and borders included."""
    from scipy import ndimage
    from skimage.measure import label

    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(3, 60, size=2))
        mask = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > rng.uniform(0.45, 0.55)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
        labels = label(mask, connectivity=2)
        if labels.max():
            counts = np.bincount(labels.ravel())
            counts[0] = 0
            np.testing.assert_array_equal(largest_component(mask), labels == counts.argmax())
