"""Apply an enhancement method to every RoI and score methods against gold standards.

A method is a function (B, 1, S, S) in [0, 1] -> same: `gan` (the trained G), `clahe`, `none`.
`enhance_folder` writes `<out_dir>/<id>.png` at each input's own size, batched under
`inference_mode` (bf16 autocast, channels_last for G), atomically, as 16-bit PNG (`DERIVED_BITS`; the
method's output in [0, 1] is the window, so nothing is squeezed through 8 bits). The folder's
`medal.resume.Marker` (`<out_dir>/.medal/enhanced.json`, policy rebuild) records the method's settings
and the stamps of its inputs: a rerun of the same settings on the same RoIs continues where it stopped;
another setting or rewritten RoIs rewrite every file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

from medal.data.cache import file_stamp
from medal.data.images import DERIVED_BITS, read_image, write_png
from medal.enhance.clahe import clahe
from medal.enhance.pairs import PairDataset, list_images
from medal.errors import MedalError
from medal.resume import Marker, fingerprint

log = logging.getLogger("medal.enhance")

Method = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("gan", "clahe", "none")
MARKER = "enhanced"  # <out_dir>/.medal/enhanced.json


def generator_method(generator: nn.Module, bf16: bool, channels_last: bool) -> Method:
    """G as a method: sigmoid of its logits, optionally under bf16 autocast with channels_last tensors."""
    generator = generator.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(memory_format=fmt)
    device = next(generator.parameters()).device

    def enhance(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return torch.sigmoid(generator(x).float())

    return enhance


def clahe_method(clip_limit: float, grid: object, keep_background: bool) -> Method:
    """CLAHE (kornia) as a method; the arguments are `conf/enhance/clahe.yaml`'s."""
    return lambda x: clahe(x, clip_limit, grid, keep_background)


def identity(x: torch.Tensor) -> torch.Tensor:
    """The `none` method: the RoI itself."""
    return x


def to_working(roi: torch.Tensor, size: int) -> torch.Tensor:
    """A RoI (1, h, w) at the method's working size (1, size, size), antialiased, in [0, 1]."""
    img = F.interpolate(roi[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return img[0].clamp_(0, 1)


def to_roi_size(enhanced: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A method's output (1, s, s) back at its RoI's size (h, w), as a [0, 1] float array."""
    if enhanced.shape[-2:] != (h, w):
        enhanced = F.interpolate(enhanced[None], size=(h, w), mode="bilinear", antialias=True)[0]
    return enhanced[0].clamp(0, 1)


class _RoIs(Dataset):
    """RoIs resized to the method's working size, with their own size to resize back to."""

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int, int]:
        img = torch.from_numpy(read_image(self.paths[i]))[None]
        h, w = img.shape[-2:]
        return to_working(img, self.image_size), self.paths[i].stem, h, w


def _start(out_dir: Path, input_dir: str | Path, inputs: dict[str, Path], settings: dict) -> tuple[Marker, dict]:
    """The folder's marker, begun: `fresh` (other settings, other RoIs or no record) empties the folder first."""
    if out_dir.resolve() == Path(input_dir).resolve():
        raise MedalError(f"enhance.images_dir={out_dir}: is the input folder itself; write enhanced RoIs elsewhere "
                         "(enhance=none reads the RoIs in place)")
    parts = {**settings, "inputs": fingerprint([file_stamp(p) for p in inputs.values()])}
    marker = Marker.in_folder(out_dir, MARKER, policy="rebuild", what=f"enhanced RoIs ({out_dir.name})")
    if marker.begin(parts) == "fresh":
        stale = list(out_dir.glob("*.png"))
        if stale:
            log.warning("%s: %d files from another setting or other RoIs; rewriting them", out_dir, len(stale))
            for png in stale:
                png.unlink()
    return marker, parts


def enhance_folder(
    method: Method,
    input_dir: str | Path,
    out_dir: str | Path,
    image_size: int,
    settings: dict,
    batch_size: int,
    num_workers: int,
) -> dict[str, float]:
    """Write the enhanced version of every `<id>.png` in `input_dir`; return counts and images/s.

    `settings` are the method's own (name, its parameters or its generator's file stamp): with the working
    size and the inputs' stamps they decide whether files already written can stay.
    """
    out_dir = Path(out_dir)
    inputs = list_images(input_dir)
    if not inputs:
        raise MedalError(f"{input_dir}: no <id>.png RoIs to enhance; run `medal segment` first")
    marker, parts = _start(out_dir, input_dir, inputs, {**settings, "image_size": int(image_size)})
    todo = [p for id_, p in inputs.items() if not (out_dir / f"{id_}.png").is_file()]
    log.info("enhancing %d of %d RoIs into %s", len(todo), len(inputs), out_dir)
    loader = DataLoader(_RoIs(todo, image_size), batch_size=batch_size, num_workers=num_workers)
    started, compute_s = time.perf_counter(), 0.0
    with torch.inference_mode():
        for x, ids, hs, ws in tqdm(loader, desc=f"enhance -> {out_dir.name}", unit="batch"):
            t0 = time.perf_counter()
            y = method(x).float().cpu()
            compute_s += time.perf_counter() - t0
            for img, id_, h, w in zip(y, ids, hs.tolist(), ws.tolist(), strict=True):
                write_png(out_dir / f"{id_}.png", to_roi_size(img, h, w).numpy(), bits=DERIVED_BITS)
    total_s = time.perf_counter() - started
    n = len(todo)
    marker.finish(parts, images=len(inputs))
    return {
        "enhance/written": float(n),
        "enhance/skipped": float(len(inputs) - n),
        "enhance/images_per_s": n / total_s if n else float("nan"),
        "enhance/compute_images_per_s": n / compute_s if n and compute_s else float("nan"),
    }


def score_pairs(
    method: Method, input_dir: str | Path, gold_dir: str | Path, ids: list[str], image_size: int, batch_size: int,
) -> dict[str, np.ndarray]:
    """Per-image PSNR (dB) and SSIM of the method's output against gold at `image_size`."""
    loader = DataLoader(PairDataset(input_dir, gold_dir, ids, image_size), batch_size=batch_size)
    psnr, ssim = [], []
    with torch.inference_mode():
        for batch in loader:
            pred, gold = method(batch["input"]).float().cpu().clamp(0, 1), batch["gold"]
            psnr.append(peak_signal_noise_ratio(pred, gold, data_range=1.0, reduction="none", dim=(1, 2, 3)))
            ssim.append(structural_similarity_index_measure(pred, gold, data_range=1.0, reduction="none"))
    return {"psnr": torch.cat(psnr).numpy(), "ssim": torch.cat(ssim).numpy()}


def summarise(split: str, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """`split/psnr`, `split/ssim` means plus their spread (std, 5th percentile) over images."""
    out: dict[str, float] = {}
    for name, values in scores.items():
        out[f"{split}/{name}"] = float(np.mean(values))
        out[f"{split}/{name}_std"] = float(np.std(values))
        out[f"{split}/{name}_p5"] = float(np.percentile(values, 5))
    return out
