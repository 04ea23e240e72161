"""Where a class activation map's mass lies: inside the bones, the ossification centres, the hand.

A pointing-game style measure of what the regressor looks at (issue 12): for each image, the share of the
map's positive mass that falls inside a region, beside that region's share of the image area (what a map
spread evenly would score); the energy-based pointing game of Score-CAM (Wang et al., CVPR-W 2020) on the
raw, unnormalised map. A regressor's CAM is signed: its positive part is the evidence that raised the
estimate (older than the head's bias), its negative part the evidence that lowered it. Only the positive
part is counted, as the issue defines the measure, so for a young child, whose bones mostly argue
"younger", the fraction describes fewer pixels; `cam_regions.csv` keeps every image's value, and a map
with no positive mass at all is counted apart (`cam/no_positive_mass`), not scored.

On phantoms the regions are known exactly: the hand mask (`masks/`) and the bone label map (`bones/`,
`medal.data.phantom.render.BONE_CLASSES`: every bone; the centres = carpals, sesamoid and epiphyses, which
carry bone age). They are mapped into the network's input frame the way the image was: a RoI through its
box (`boxes.csv` of the segmentation, `medal.preprocess.crop.crop_square`), a raw image through
`medal.data.cache.fit_square` with zero padding. Maps are compared at the input's resolution; a pixel
belongs to a region when the region covers at least half of it (the mask resized bilinearly, then cut at
0.5), so a map lying exactly on a region scores 1.

A map has the feature grid's resolution (16x16 for a 128-px input at output stride 8), and bilinear
upsampling spreads every cell over its neighbours, so even a map that is the hand itself, drawn at that
grid, leaves part of its mass beside thin fingers. Each region's fraction is therefore reported beside two
references: its area share (a map spread evenly) and its *grid share* (`cam/{region}_grid`, the fraction
the region's own mask scores once it is average-pooled to the map's grid and upsampled like the map).
`cam/{region}_near` counts the mass on the region or within one grid cell of it: what the map would score
if it could not place mass more finely than its cells, which separates spill beside a finger from evidence
taken from the background.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medal.atomic import atomic_path
from medal.boneage.cam import upsample
from medal.data.cache import fit_square
from medal.data.images import read_image
from medal.data.phantom.dataset import BONES_DIR, read_bones
from medal.data.phantom.render import BONE_CLASSES
from medal.errors import MedalError
from medal.preprocess.crop import Box, crop_square
from medal.segment.infer import BOXES_FILE, read_boxes

log = logging.getLogger("medal.boneage")

REGIONS = ("bone", "centre", "hand")  # every bone; carpals + sesamoid + epiphyses; the whole hand
CENTRE_CLASSES = (BONE_CLASSES["round"], BONE_CLASSES["epiphysis"])
# the map's share of positive mass on the region; an even map's; the region's own mask's at the map's grid; the
# map's share on the region or within one grid cell of it
MEASURES = ("fraction", "area", "grid", "near")


def mass_fraction(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass inside its region: sum(relu(map) * region) / sum(relu(map)).

    Args:
        maps: (B, H, W) class activation maps (any sign; negative evidence is not counted).
        regions: (B, H, W) in [0, 1]: 1 inside the region, 0 outside (fractions weight a pixel partly).

    Returns:
        (B,) float64 in [0, 1]; NaN for a map with no positive mass (it points nowhere).

    Raises:
        ValueError: when the shapes differ.

    Examples:
        >>> region = torch.zeros(1, 4, 4); region[0, :2] = 1.0          # the top half
        >>> inside = torch.zeros(1, 4, 4); inside[0, 0, 1] = 5.0         # all mass in the region
        >>> even = torch.ones(1, 4, 4)                                   # spread evenly: the area share
        >>> mass_fraction(torch.cat([inside, even, -even]), region.expand(3, 4, 4)).tolist()
        [1.0, 0.5, nan]
    """
    if maps.shape != regions.shape or maps.dim() != 3:
        raise ValueError(f"maps {tuple(maps.shape)} and regions {tuple(regions.shape)} must both be (B, H, W)")
    positive = maps.double().clamp_min(0.0)
    total = positive.sum(dim=(1, 2))
    inside = (positive * regions.double()).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))


def grid_share(regions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """What a map equal to each region scores once drawn at a CAM's grid: its `mass_fraction` after the region
    is average-pooled to `grid` and upsampled back bilinearly, as a CAM is.

    Args:
        regions: (B, H, W) in [0, 1], at the input's resolution.
        grid: (h, w), the feature map's size.

    Returns:
        (B,) float64 in [0, 1]: 1 at the input's own resolution; below 1 at a coarser grid, the more so the
        thinner the region is against a cell, as upsampling spills every cell onto its neighbours; NaN for an
        empty region.

    Examples:
        >>> block = torch.zeros(1, 16, 16); block[0, 4:12, 4:12] = 1.0       # 8x8 square: 2x2 cells of 4 px
        >>> line = torch.zeros(1, 16, 16); line[0, :, 7] = 1.0                # a one-pixel line
        >>> [round(v, 2) for v in grid_share(torch.cat([block, line]), (4, 4)).tolist()]
        [0.77, 0.16]
        >>> grid_share(block, (16, 16)).item()                               # at full resolution: exact
        1.0
    """
    pooled = F.adaptive_avg_pool2d(regions.float()[:, None], tuple(grid))[:, 0]
    return mass_fraction(upsample(pooled, regions.shape[-2:]), regions)


def within_one_cell(regions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each region grown by one cell of a (h, w) grid laid over its (H, W) pixels (a square dilation).

    Args:
        regions: (B, H, W) in [0, 1].
        grid: (h, w), the feature map's size; a cell is ceil(H / h) x ceil(W / w) pixels.

    Returns:
        (B, H, W) float32 in [0, 1].

    Examples:
        >>> dot = torch.zeros(1, 8, 8); dot[0, 3, 3] = 1.0
        >>> int(within_one_cell(dot, (4, 4)).sum())   # cells of 2 px: a 5x5 square around the dot
        25
    """
    cell_h, cell_w = -(-regions.shape[-2] // grid[0]), -(-regions.shape[-1] // grid[1])
    grown = F.max_pool2d(regions.float()[:, None], kernel_size=(2 * cell_h + 1, 2 * cell_w + 1), stride=1,
                         padding=(cell_h, cell_w))
    return grown[:, 0]


@dataclass(frozen=True)
class RegionMaps:
    """Where a data set's reference masks are and how its images were framed for the network.

    `boxes` is None for raw images (framed by `fit_square`), else the RoI box of every id.
    """

    root: Path
    size: int
    fit: str
    boxes: dict[str, Box] | None

    def _frame(self, image: np.ndarray, ident: str) -> np.ndarray:
        if self.boxes is None:
            return fit_square(image, self.size, self.fit, fill=0.0)
        if ident not in self.boxes:
            raise MedalError(f"{BOXES_FILE} has no box for image {ident}; rerun `medal segment` for this data set")
        return np.clip(crop_square(image, self.boxes[ident], self.size), 0.0, 1.0)

    def regions(self, ident: str) -> dict[str, np.ndarray]:
        """Each region of `REGIONS` as a (size, size) float 0/1 mask in the network input's frame."""
        labels = read_bones(self.root / BONES_DIR / f"{ident}.png")
        hand = read_image(self.root / "masks" / f"{ident}.png") > 0.5
        full = {"bone": labels > 0, "centre": np.isin(labels, CENTRE_CLASSES), "hand": hand}
        return {name: (self._frame(mask.astype(np.float32), ident) >= 0.5).astype(np.float32)
                for name, mask in full.items()}


def region_maps(root: str | Path, images: str, work_dir: str | Path, size: int, fit: str) -> RegionMaps | None:
    """The reference masks of a data set in its images' frame, or None where it has none (real data).

    Phantom sets carry `masks/` and `bones/`; RoI folders are framed by the segmentation's `boxes.csv`
    (beside the RoIs, or in `<work_dir>/roi/` for enhanced copies of them).
    """
    root = Path(root)
    if not ((root / BONES_DIR).is_dir() and (root / "masks").is_dir()):
        log.info("%s has no bones/ and masks/ (phantom sets have): CAM region fractions are not computed", root)
        return None
    if images == "raw":
        return RegionMaps(root, size, fit, None)
    for folder in (Path(images), Path(work_dir) / "roi"):
        if (folder / BOXES_FILE).is_file():
            return RegionMaps(root, size, fit, read_boxes(folder / BOXES_FILE))
    log.warning("no %s beside %s or in %s: the RoIs cannot be mapped back to the masks, so CAM region fractions "
                "are not computed", BOXES_FILE, images, Path(work_dir) / "roi")
    return None


class RegionTally:
    """Per-image `MEASURES` of every region, and their means for `metrics.json` (`cam/...`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float | str]] = []

    def add(self, ids: list[str], sexes: list[str], maps: torch.Tensor, regions: list[dict[str, np.ndarray]],
            grid: tuple[int, int]) -> None:
        """Score one batch: `maps` (B, H, W) at the input's size, upsampled from a (h, w) `grid` of features,
        and `regions[i]` the masks of `ids[i]`."""
        rows = [{"id": i, "sex": s} for i, s in zip(ids, sexes, strict=True)]
        maps = maps.detach().cpu()
        for name in REGIONS:
            stacked = torch.from_numpy(np.stack([r[name] for r in regions]))
            measures = {"fraction": mass_fraction(maps, stacked).tolist(),
                        "area": stacked.double().mean(dim=(1, 2)).tolist(),
                        "grid": grid_share(stacked, grid).tolist(),
                        "near": mass_fraction(maps, within_one_cell(stacked, grid)).tolist()}
            for what, values in measures.items():
                for row, value in zip(rows, values, strict=True):
                    row[f"{name}_{what}"] = value
        self.rows += rows

    def metrics(self) -> dict[str, float]:
        """Means over images (a map with no positive mass is left out of its fractions, and counted)."""
        out: dict[str, float] = {}
        for name in REGIONS:
            for what in MEASURES:
                values = np.array([row[f"{name}_{what}"] for row in self.rows], dtype=np.float64)
                if np.isfinite(values).any():
                    out[f"cam/{name}_{what}"] = float(np.nanmean(values))
        out["cam/no_positive_mass"] = float(sum(not np.isfinite(row["hand_fraction"]) for row in self.rows))
        return out

    def write(self, path: Path) -> None:
        """`cam_regions.csv`: id, sex, then each region's `MEASURES`."""
        columns = ["id", "sex"] + [f"{n}_{w}" for n in REGIONS for w in MEASURES]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
