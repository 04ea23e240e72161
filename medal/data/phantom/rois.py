"""Hand RoIs of a phantom set cut with its true masks: what a perfect `medal segment` would write.

Benchmarks of the later stages (enhancement, bone age) use them to measure those stages alone, without the
segmentation's errors and minutes: `<work_dir>/roi/<id>.png` (the raw image with its polarity normalised and
the background zeroed by the true mask, cropped square by `medal.preprocess.crop` with the segmentation's
margin, 16-bit), `<work_dir>/roi_gold/<id>.png` (the gold image cut by the same box) and
`<work_dir>/roi/boxes.csv` in the segmentation's format, so CAM can map the bone and hand masks into the RoIs.
Their `medal.resume.Marker` (`roi/.medal/true_mask_rois.json`, policy rebuild) holds the phantom set's own
fingerprint, the size and the margin: the same request reuses the folders, another one rewrites both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from medal.data.images import DERIVED_BITS, read_image, read_radiograph, write_png
from medal.data.phantom.dataset import MARKER as PHANTOMS_MARKER
from medal.data.phantom.floor import SIDECAR
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.preprocess.crop import crop_square
from medal.resume import Marker
from medal.segment.infer import BOXES_FILE, crop_hand, write_boxes

log = logging.getLogger("medal.phantoms")

MARGIN = 0.05  # conf/segment.yaml's segment.roi.margin


def true_mask_rois(data_root: str | Path, work_dir: str | Path, size: int, progress: bool = True) -> Path:
    """Write the RoIs, gold RoIs and boxes of every image of the phantom set at `data_root`; return `roi/`."""
    data_root, roi, roi_gold = Path(data_root), Path(work_dir) / "roi", Path(work_dir) / "roi_gold"
    phantoms = Marker.in_folder(data_root, PHANTOMS_MARKER).read()
    if not (phantoms and phantoms.get("finished")):
        raise MedalError(f"{data_root}: not a finished phantom set (no {PHANTOMS_MARKER} record); "
                         "generate it with `medal phantoms` first")
    parts = {"phantoms": phantoms["fingerprint"], "size": int(size), "margin": MARGIN}
    marker = Marker.in_folder(roi, "true_mask_rois", policy="rebuild", outputs=[roi, roi_gold],
                              what="true-mask RoIs")
    if marker.begin(parts) == "done":
        return roi
    index = read_index(data_root, strict=True)
    boxes = roi / BOXES_FILE
    inverted = pd.read_csv(data_root / SIDECAR, dtype={"id": str}).set_index("id")["inverted"]
    rows = []
    for row in tqdm(index.itertuples(), total=len(index), desc="true-mask RoIs", disable=not progress):
        raw = read_radiograph(row.path)
        mask = read_image(data_root / "masks" / f"{row.id}.png") > 0.5
        flip = bool(inverted[row.id])
        hand, box = crop_hand(raw, mask, flip, MARGIN, size)
        write_png(roi / f"{row.id}.png", hand, bits=DERIVED_BITS)
        gold = read_radiograph(data_root / "gold" / f"{row.id}.png")
        write_png(roi_gold / f"{row.id}.png", crop_square(gold, box, size), bits=DERIVED_BITS)
        rows.append([row.id, *box, int(flip), *mask.shape, float(mask.mean()), 1])
    write_boxes(boxes, rows)
    marker.finish(parts, images=len(rows))
    log.info("true-mask RoIs of %d images in %s", len(rows), roi)
    return roi
