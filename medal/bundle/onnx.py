"""ONNX copies of a bundle's networks (`export.onnx=true`), each checked against PyTorch on the same inputs.

Exported with torch's TorchScript-based exporter (`dynamo=False`: it needs only the `onnx` package, not
onnxscript) with a dynamic batch axis; a regressor with a sex input keeps it as a second input, `male`
(float 0/1). Each graph is run with onnxruntime on a random batch and on the batch's PyTorch output the
largest absolute difference is recorded in the manifest (`parts.onnx`): logits for the committee and the
generator, months for the regressors. `medal predict` itself runs PyTorch; the ONNX files are for other
runtimes.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medal.bundle.load import Bundle
from medal.errors import MedalError

log = logging.getLogger("medal.bundle")
OPSET = 17
CHECK_BATCH = 2


class _Logits(nn.Module):
    """The committee's member logits (M, B, 1, S, S) without its feature vectors."""

    def __init__(self, committee: nn.Module) -> None:
        super().__init__()
        self.committee = committee

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.committee(image)[0]


class _Months(nn.Module):
    """A regressor's months from (image, male) or, without a sex input, from the image alone."""

    def __init__(self, module: nn.Module, sex_input: bool) -> None:
        super().__init__()
        self.module, self.sex_input = module, sex_input

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(image, male if self.sex_input else None)


def _export(net: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path: Path) -> float:
    """Write `net` as ONNX at `path`; return the max |onnxruntime - PyTorch| on `inputs`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MedalError("export.onnx=true needs onnx and onnxruntime: `uv sync --extra onnx` "
                         "(or `pip install medal[onnx]`)") from None
    net = net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(net, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=["output"], dynamic_axes={n: {0: "batch"} for n in names})
    with torch.inference_mode():
        expected = net(*inputs).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feeds)[0]
    return float(np.max(np.abs(got - expected)))


def export_onnx(bundle: Bundle, root: Path) -> dict[str, Any]:
    """ONNX files under `root/models/` for every network; {name: {file, max_abs_diff}}."""
    chain, out, generator = bundle.chain, {}, torch.Generator().manual_seed(0)

    def record(name: str, net: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> None:
        rel = f"models/{name}.onnx"
        diff = _export(net, inputs, names, root / rel)
        out[name] = {"file": rel, "max_abs_diff": diff, "inputs": names}
        log.info("ONNX %s: max |onnxruntime - torch| = %.3g", rel, diff)

    def image(size: int) -> torch.Tensor:
        return torch.rand(CHECK_BATCH, 1, size, size, generator=generator)

    if chain.segmenter is not None:
        committee = bundle.committee().to(memory_format=torch.contiguous_format)
        record("committee", _Logits(committee), (image(chain.segmenter.image_size),), ["image"])
    if chain.enhancer is not None and chain.enhancer.method == "gan":
        record("generator", bundle.generator(), (image(int(chain.enhancer.image_size)),), ["image"])
    for spec in chain.regressors:
        module = bundle.regressor(spec)
        inputs = (image(spec.image_size),) + ((torch.tensor([1.0, 0.0]),) if spec.sex_input else ())
        record(f"regressor_{spec.name}", _Months(module, spec.sex_input), inputs,
               ["image", "male"] if spec.sex_input else ["image"])
    return out
