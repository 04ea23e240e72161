"""Apply an enhancement method to every RoI and score methods against gold standards.

A method is a function (B, 1, S, S) in [0, 1] -> same: `gan` (the trained G), `clahe`, `none`.
`enhance_folder` writes `<out_dir>/<id>.png` at each input's own size, batched under
`inference_mode` (bf16 autocast, channels_last for G), atomically, skipping files a previous run
of the *same* method (manifest fingerprint) already wrote; a changed method rewrites them all.
"""

from __future__ import annotations

import json
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

from medal.data.images import read_image, write_png
from medal.enhance.clahe import clahe
from medal.enhance.pairs import PairDataset, list_images
from medal.errors import MedalError

log = logging.getLogger("medal.enhance")

Method = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("gan", "clahe", "none")
MANIFEST = ".medal-enhance.json"


def generator_method(generator: nn.Module, bf16: bool = True, channels_last: bool = True) -> Method:
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


def build_method(name: str, generator: nn.Module | None = None, clip_limit: float = 2.0,
                 grid: object = (8, 8), keep_background: bool = True, bf16: bool = True,
                 channels_last: bool = True) -> Method:
    """The method function for `enhance.method`."""
    if name == "gan":
        if generator is None:
            raise MedalError("enhance.method=gan needs a trained generator; run `medal enhance enhance=gan` first")
        return generator_method(generator, bf16, channels_last)
    if name == "clahe":
        return lambda x: clahe(x, clip_limit, grid, keep_background)
    if name == "none":
        return lambda x: x
    raise MedalError(f"enhance.method={name!r}: unknown method; use one of {', '.join(METHODS)}")


class _RoIs(Dataset):
    """RoIs resized to the method's working size, with their own size to resize back to."""

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int, int]:
        img = torch.from_numpy(read_image(self.paths[i]))[None, None]
        h, w = img.shape[-2:]
        img = F.interpolate(img, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return img[0].clamp_(0, 1), self.paths[i].stem, h, w


def _prepare(out_dir: Path, manifest: dict) -> None:
    """Keep outputs of the same method; delete stale ones of another, then record the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST
    if path.is_file() and json.loads(path.read_text()) == manifest:
        return
    stale = list(out_dir.glob("*.png"))
    if stale:
        log.warning("%s: %d files from a different enhancement setting; rewriting them", out_dir, len(stale))
        for png in stale:
            png.unlink()
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def enhance_folder(
    method: Method,
    input_dir: str | Path,
    out_dir: str | Path,
    image_size: int,
    manifest: dict,
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, float]:
    """Write the enhanced version of every `<id>.png` in `input_dir`; return counts and images/s."""
    out_dir = Path(out_dir)
    inputs = list_images(input_dir)
    if not inputs:
        raise MedalError(f"{input_dir}: no <id>.png RoIs to enhance; run `medal segment` first")
    _prepare(out_dir, manifest)
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
                if img.shape[-2:] != (h, w):
                    img = F.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True)[0]
                write_png(out_dir / f"{id_}.png", img[0].clamp(0, 1).numpy())
    total_s = time.perf_counter() - started
    n = len(todo)
    return {
        "enhance/written": float(n),
        "enhance/skipped": float(len(inputs) - n),
        "enhance/images_per_s": n / total_s if n else float("nan"),
        "enhance/compute_images_per_s": n / compute_s if n and compute_s else float("nan"),
    }


def score_pairs(
    method: Method, input_dir: str | Path, gold_dir: str | Path, ids: list[str], image_size: int,
    batch_size: int = 16,
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
