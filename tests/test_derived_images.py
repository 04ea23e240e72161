"""Nothing lost: a 12-bit radiograph stored in a 16-bit PNG keeps its grey levels through the segmentation's
RoI writer and the enhancer's writer (16-bit, windowed), where 8-bit writes kept about 16; masks stay binary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medal.data.images import read_image, resize
from medal.enhance.run import enhance_folder
from medal.segment.infer import FinalOutputs, write_final

ROI = 256


def twelve_bit_radiograph(path: Path, inverted: bool = False, h: int = 300, w: int = 240) -> np.ndarray:
    """A smooth 'hand' (an ellipse) whose intensities use the whole 12-bit range 0-4095, on a dim background
    (a bright one when `inverted`), saved as a 16-bit PNG the way 12-bit detectors store it; returns the mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    hand = ((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 < 1
    ramp = 300 + 3795 * (0.6 * (xx - 0.15 * w) / (0.7 * w) + 0.4 * (yy - 0.08 * h) / (0.84 * h))
    values = np.where(hand, np.clip(ramp, 300, 4095), 80)
    if inverted:
        values = 4095 - values
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.round().astype(np.uint16)).save(path)
    return hand


def levels(path: Path) -> tuple[str, int]:
    """The PNG's mode and its number of distinct non-zero stored values."""
    with Image.open(path) as img:
        arr = np.asarray(img)
        return img.mode, int(np.unique(arr[arr > 0]).size)


def test_a_12_bit_image_keeps_its_levels_through_roi_and_enhancement(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "1000.png"
    hand = twelve_bit_radiograph(raw)
    decoded = read_image(raw)
    assert decoded.max() <= 4095 / 65535 + 1e-7  # a 12-bit image in a 16-bit file decodes to [0, 0.0625]
    assert np.unique(np.round(decoded * 255)).size <= 17  # what an 8-bit write without a window keeps

    probs = resize(hand.astype(np.float32), (64, 64))[None]  # the committee's working-size probability
    out = FinalOutputs(work_dir=tmp_path / "work", roi_size=ROI, margin=0.05, postprocess=True)
    write_final(out, ["1000"], [str(raw)], probs, inverted={}, gold_dir=None)

    mode, roi_levels = levels(out.roi / "1000.png")
    assert mode == "I;16" and roi_levels > 1000
    roi = read_image(out.roi / "1000.png")
    assert roi.dtype == np.float32 and roi.max() > 0.8 and roi.min() == 0.0  # [0, 4095] -> [0, 1], not [0, 0.0625]
    assert np.unique(roi).size > 1000  # read back with the 16-bit precision
    with Image.open(out.masks / "1000.png") as mask:
        assert mask.mode == "L" and set(np.unique(np.asarray(mask)).tolist()) == {0, 255}  # masks stay binary

    enhanced = tmp_path / "work" / "enhanced" / "identity"
    metrics = enhance_folder(lambda x: x, out.roi, enhanced, ROI, {"method": "identity"}, batch_size=1,
                             num_workers=0)
    assert metrics["enhance/written"] == 1
    mode, enhanced_levels = levels(enhanced / "1000.png")
    assert mode == "I;16" and enhanced_levels > 1000
    assert np.abs(read_image(enhanced / "1000.png") - roi).max() < 1e-4  # the identity loses nothing
    assert torch.from_numpy(roi).std() > 0.1  # and the window gives the network a full-range image


def test_an_inverted_12_bit_image_is_flipped_inside_its_stored_range(tmp_path: Path) -> None:
    plain, inverted = tmp_path / "raw" / "1000.png", tmp_path / "raw" / "1001.png"
    hand = twelve_bit_radiograph(plain)
    twelve_bit_radiograph(inverted, inverted=True)
    probs = np.stack([resize(hand.astype(np.float32), (64, 64))] * 2)
    out = FinalOutputs(work_dir=tmp_path / "work", roi_size=ROI, margin=0.05, postprocess=True)
    write_final(out, ["1000", "1001"], [str(plain), str(inverted)], probs, inverted={"1001": True}, gold_dir=None)
    # 1 - x taken in the 16-bit container would leave the hand in [0.94, 1]: a white, flat silhouette
    a, b = read_image(out.roi / "1000.png"), read_image(out.roi / "1001.png")
    assert np.abs(a - b).max() < 2e-3  # flipped within [0, 4095], the inverted image gives the same RoI
