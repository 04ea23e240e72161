"""Open a bundle: manifest and format checked, every file's sha256 verified, networks built from its config.

Nothing is unpickled: weights are safetensors, configs and calibration JSON. A file whose hash differs from the
manifest, a format this medal does not read, or weights that do not fit the network their config builds (a
library version that changed the architecture) is each one line naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from medal.bundle.manifest import CALIBRATION, INFERENCE, read_manifest, verify_files
from medal.bundle.spec import ChainSpec, RegressorSpec
from medal.errors import MedalError

log = logging.getLogger("medal.bundle")


@dataclass
class Bundle:
    """A verified bundle: its folder, manifest, chain and (once calibrated) the calibration table."""

    root: Path
    manifest: dict[str, Any]
    chain: ChainSpec
    calibration: dict[str, Any] | None

    @property
    def fingerprint(self) -> str:
        """What identifies these exact weights and settings: the hashes of every file."""
        from medal.resume import fingerprint

        return fingerprint(self.manifest["files"])

    def _weights(self, rel: str, net: nn.Module) -> nn.Module:
        path = self.root / rel
        try:
            missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
        except (RuntimeError, OSError) as err:  # shape mismatches, unreadable safetensors
            raise MedalError(f"{path}: does not load into the network its config builds ({str(err).splitlines()[0]}); "
                             f"{self._made_with()}") from None
        if missing or unexpected:
            raise MedalError(f"{path}: does not fit the network its config builds (missing {missing[:2]}, "
                             f"unexpected {unexpected[:2]}); {self._made_with()}")
        return net.eval()

    def _made_with(self) -> str:
        theirs = self.manifest.get("versions", {})
        return (f"the bundle was made with torch {theirs.get('torch')} and timm {theirs.get('timm')}: install those "
                "or re-export the bundle with this environment")

    def committee(self) -> nn.Module:
        """The segmentation committee (`medal.segment.committee.Committee`), weights loaded, in eval mode."""
        from medal.segment.committee import Committee

        seg = self.chain.segmenter
        if seg is None:
            raise MedalError(f"bundle={self.root}: has no segmenter (its regressors read raw radiographs)")
        committee = Committee(net=seg.net, size=seg.members, seed=0, lr=0.0, weight_decay=0.0,
                              augment={"enabled": False}, channels_last=seg.channels_last, arch=seg.arch)
        return self._weights(seg.weights, committee)

    def generator(self) -> nn.Module:
        """The GAN enhancer's generator (`medal.enhance.module.build_generator`), weights loaded."""
        from medal.enhance.module import build_generator

        enh = self.chain.enhancer
        if enh is None or enh.method != "gan":
            raise MedalError(f"bundle={self.root}: its enhancer is {enh.method if enh else 'none'}, not a GAN")
        return self._weights(enh.weights, build_generator(dict(enh.generator or {}), bool(enh.residual)))

    def regressor(self, spec: RegressorSpec) -> nn.Module:
        """One bone age model as the `BoneAgeModule` its run tested (months out), weights loaded, eval mode."""
        from medal.boneage.module import BoneAgeModule

        kwargs = dict(spec.module)
        kwargs["model_cfg"] = {**kwargs["model_cfg"], "weights": None, "pretrained": False}  # the bundle's own
        module = BoneAgeModule(**kwargs)
        self._weights(spec.weights, module.model)
        return module.eval()


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """The bundle at `root`, checked: format, then (with `verify`) every file against its sha256."""
    root = Path(root).expanduser().resolve()
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    chain = ChainSpec.from_json(json.loads((root / INFERENCE).read_text()))
    calibration_path = root / CALIBRATION
    calibration = json.loads(calibration_path.read_text()) if calibration_path.is_file() else None
    return Bundle(root, manifest, chain, calibration)


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
