"""Which fast paths this machine really has: bf16 helps only where the hardware does bf16 natively.

Without native support (CPUs lacking avx512_bf16/AMX) oneDNN emulates bf16 and convolutions run ~2x
*slower* than fp32, so every "fast dtype" setting in medal accepts `auto` and asks here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from medal.errors import MedalError


@cache
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: bool | str, device: str | None = None) -> bool:
    """Resolve a true / false / "auto" bf16 setting for `device` (default: CUDA if present, else CPU)."""
    if setting != "auto":
        return bool(setting)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def inference_device(accelerator: str, key: str = "trainer.accelerator") -> str:
    """Where to score and predict for a Lightning `accelerator` setting ("cpu", "gpu"/"cuda", "mps", "auto").

    Lightning moves a module back to the CPU when `fit` ends, so code that predicts between fits
    (pool scoring, evaluation, final masks) must move it to this device itself.
    """
    if accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator in {"cpu", "mps"}:
        return accelerator
    if accelerator == "auto":
        return "mps" if torch.backends.mps.is_available() else "cpu"
    raise MedalError(f"{key}={accelerator!r}: medal predicts on cpu, gpu (cuda), mps or auto; use one of those")


#: most loader processes a GPU run starts by default: enough to keep one GPU fed from the memory-mapped cache
GPU_LOADER_WORKERS = 8


def loader_workers(accelerator: str = "cpu") -> int:
    """Default loader processes for a Lightning `accelerator`: none on a CPU, where the cached loader's main
    process is fast enough and workers would take cores from the model; on a GPU enough that reading, converting
    and pinning the next batches overlaps the step (in the main process they run between steps, and at a GPU's
    rate that wait, ~0.3 s per 256 images at 299 px on a 2-core host, costs more than the step):
    min(8, cores - 1).

    Examples:
        >>> loader_workers("cpu")
        0
        >>> 1 <= loader_workers("gpu") <= GPU_LOADER_WORKERS
        True
    """
    gpu = accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available())
    if not gpu:
        return 0
    from medal.data.parallel import default_workers

    return max(1, min(GPU_LOADER_WORKERS, default_workers() - 1))


def fast_precision(accelerator: str = "cpu") -> str:
    """Lightning `precision` for `accelerator`: bf16-mixed where bf16 is native, else 32-true."""
    device = "cuda" if accelerator in {"gpu", "cuda"} else "cpu"
    return "bf16-mixed" if use_bf16("auto", device) else "32-true"
