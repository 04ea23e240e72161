"""Out-of-distribution score: how unlike the training images an image looks to the bundle's own regressors.

The score of an image is the Mahalanobis distance of each regressor's pooled features (the global average of its
last feature maps, what its head reads) from those of the training images, squared and divided by the feature
dimension, averaged over the regressors (Lee et al., "A simple unified framework for detecting out-of-distribution
samples and adversarial attacks", NeurIPS 2018). The mean and the covariance come from up to `fit_images`
training images; the covariance is shrunk (Ledoit-Wolf), since there are often fewer images than features.

The threshold is calibrated like the conformal intervals, on images that did not fit the mean and covariance:
with the n calibration images' scores sorted, it is the k-th smallest, k = ceil((n + 1) * (1 - false_reject)).
For a new image exchangeable with the calibration images the chance of scoring above it is then at most
`false_reject` (e.g. 1 %): the rate at which such images are wrongly refused. With too few calibration images
for the rate (n + 1 < 1 / false_reject) no finite threshold has that guarantee: the record says so, and
`medal predict` runs with the OOD gate off for that bundle, saying it in one line.

`medal export` writes the record, with the valid age range (`medal.predict.valid_range`), in `gate.json`, and
the means and precision matrices in `models/ood.safetensors` (`write_gate`); `read_gate` reads them back. A bundle
without them (exported before) loads, and `medal predict` says in one line that its OOD gate is off.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from medal.atomic import atomic_path, write_json
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.predict.valid_range import ValidRange, from_labels, training_labels

log = logging.getLogger("medal.predict")

GATE = "gate.json"
WEIGHTS = "models/ood.safetensors"
SCHEMA = 1
METHOD = "Mahalanobis distance (Ledoit-Wolf covariance) of each regressor's pooled features, squared / dimension, mean"


class FeatureTap:
    """Keeps the pooled features (B, D) each regressor's head receives on its first call while armed.

    A forward pre-hook on every `BoneAgeModule.model.head`: the chain calls each regressor several times per
    batch (as a boy and a girl, mirrored), all on the same features; the first call's are kept.
    """

    def __init__(self, regressors: Sequence[nn.Module]) -> None:
        self.pooled: dict[int, np.ndarray] = {}
        self.armed = False
        self.handles = [module.model.head.register_forward_pre_hook(self._hook(k))
                        for k, module in enumerate(regressors)]

    def _hook(self, k: int):  # noqa: ANN202 - a torch hook
        def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.armed and k not in self.pooled:
                self.pooled[k] = args[0].detach().float().mean(dim=(2, 3)).cpu().numpy()
        return keep

    def arm(self) -> None:
        self.pooled, self.armed = {}, True

    def take(self) -> dict[int, np.ndarray]:
        """{regressor index: (B, D)} of the armed pass; disarms."""
        self.armed = False
        return self.pooled


def mahalanobis_sq(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances (N,) of `features` (N, D) from `mean` (D,) under `precision` (D, D), in float64.

    Examples:
        >>> mahalanobis_sq(np.array([[3.0, 4.0], [0.0, 0.0]]), np.zeros(2), np.eye(2)).tolist()
        [25.0, 0.0]
    """
    x = np.atleast_2d(np.asarray(features, dtype=np.float64)) - np.asarray(mean, dtype=np.float64)
    if x.shape[1] != len(mean):
        raise MedalError(f"features of dimension {x.shape[1]} against an OOD model of dimension {len(mean)}; "
                         "re-export the bundle")
    return np.maximum(np.einsum("nd,de,ne->n", x, np.asarray(precision, dtype=np.float64), x), 0.0)


def fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), precision (D, D)) of training features (N, D), the covariance shrunk by Ledoit-Wolf."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        raise MedalError(f"the OOD score needs at least 2 training images; {len(x)} gave features")
    model = LedoitWolf().fit(x)
    return model.location_, model.precision_


def threshold(scores: Sequence[float] | np.ndarray, false_reject: float) -> float:
    """The k-th smallest calibration score, k = ceil((n + 1) * (1 - false_reject)); inf when k > n.

    Examples:
        >>> threshold(np.arange(1.0, 100.0), 0.01)  # n = 99: k = 99
        99.0
        >>> threshold(np.arange(1.0, 20.0), 0.1), threshold(np.arange(1.0, 20.0), 0.01)
        (18.0, inf)
    """
    if not 0.0 < false_reject < 1.0:
        raise MedalError(f"export.gate.false_reject={false_reject}: must be in (0, 1), e.g. 0.01")
    values = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((values.size + 1) * (1.0 - false_reject) - 1e-9)
    return float(values[k - 1]) if 1 <= k <= values.size else math.inf


@dataclass
class OodModel:
    """The fitted score and its calibrated threshold (inf: not calibrated, the gate cannot refuse)."""

    means: list[np.ndarray]
    precisions: list[np.ndarray]
    threshold: float
    false_reject: float
    calibration_images: int

    def score(self, features: dict[int, np.ndarray]) -> np.ndarray:
        """Scores (B,) from {regressor: (B, D)} pooled features."""
        parts = [mahalanobis_sq(features[k], m, p) / len(m)
                 for k, (m, p) in enumerate(zip(self.means, self.precisions, strict=True))]
        return np.mean(parts, axis=0)

    def reason(self, score: float) -> str | None:
        """One line when `score` is above the threshold, else None."""
        if not score > self.threshold:
            return None
        return (f"out-of-distribution score {score:.2f} above the bundle's threshold {self.threshold:.2f} (calibrated "
                f"for {self.false_reject:.0%} false rejects on {self.calibration_images} images): not like the "
                "radiographs the models learnt from")


@dataclass(frozen=True)
class GateRecord:
    """`gate.json` of a bundle: the valid age range and the OOD score's calibration (None: not fitted)."""

    schema: int
    valid_range: ValidRange
    ood: dict[str, Any] | None


def read_gate(root: Path) -> GateRecord | None:
    """The bundle's gate record, or None for a bundle exported before it existed."""
    path = Path(root) / GATE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise MedalError(f"{path}: gate record schema {data.get('schema')}, this medal reads {SCHEMA}; re-export "
                         "the bundle with this medal")
    return GateRecord(SCHEMA, ValidRange.from_json(data["valid_range"]), data["ood"])


def load_model(root: Path, record: GateRecord) -> OodModel | None:
    """The OOD model of a bundle's record (its weights file, sha256-checked with the bundle), or None."""
    if record.ood is None:
        return None
    tensors = load_file(str(Path(root) / record.ood["weights"]))
    count = len(record.ood["dims"])
    limit = record.ood["threshold"]
    return OodModel([tensors[f"mean_{k}"].double().numpy() for k in range(count)],
                    [tensors[f"precision_{k}"].double().numpy() for k in range(count)],
                    math.inf if limit is None else float(limit), float(record.ood["false_reject"]),
                    int(record.ood["calibration"]["images"]))


def _role_inputs(data: dict[str, Any], role: str, limit: int, seed: int) -> pd.DataFrame:
    """Input table (`medal.predict.inputs.COLUMNS`) of up to `limit` labelled images of `role` (seeded sample)."""
    split = pd.read_csv(data["split_file"], dtype={"id": str, "role": str})
    ids = set(split.loc[split["role"] == role, "id"])
    index = read_index(data["root"], strict=False)
    rows = index[index["id"].isin(ids) & index["boneage"].notna()]
    if len(rows) > limit:
        rows = rows.sample(n=limit, random_state=seed)
    return pd.DataFrame({"id": rows["id"].astype(str), "path": rows["path"].astype(str),
                         "male": rows["male"].astype(float), "sex_source": "labels",
                         "reference": rows["boneage"].astype(float)}).reset_index(drop=True)


def _features(bundle: Any, inputs: pd.DataFrame, device: str, batch_size: int,
              num_workers: int) -> list[np.ndarray]:
    """Per regressor, the pooled features (N, D) of the images of `inputs` that reach the regressors."""
    from medal.predict.chain import ChainModule, ChainOptions, InputImages, collate

    options = ChainOptions(tta="none", sex="unknown", coverage=0.9, bf16="as_trained", cam=False)
    module = ChainModule(bundle, options, calibrating=True).to(torch.device(device)).eval()
    module.prepare()
    loader = DataLoader(InputImages(inputs, bundle.chain, "unknown"), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    kept = [m.features for batch in loader for m in module.measure(batch) if m.features]
    if not kept:
        raise MedalError("the OOD score: no image reached the regressors (every one failed before them)")
    return [np.stack([f[k] for f in kept]) for k in range(len(bundle.chain.regressors))]


@dataclass(frozen=True)
class GateExportOptions:
    """`export.gate.*` (conf/export.yaml holds the values)."""

    false_reject: float  # the OOD threshold's rate of wrongly refused images of the training distribution
    range_margin: float  # months added on both sides of the training labels' range
    fit_images: int  # training images whose features fit the OOD mean and covariance (a seeded sample)
    seed: int


def write_gate(bundle: Any, data: dict[str, Any], options: GateExportOptions, device: str, batch_size: int,
               num_workers: int) -> tuple[list[str], dict[str, float]]:
    """Fit and calibrate the OOD score, record the valid range: `gate.json` and `models/ood.safetensors` in the
    bundle folder. Returns (the files written, relative to the bundle, and export metrics).

    The calibration images are the intervals' at export (`medal.predict.calibrate.calibration_inputs`: the
    regressors' `calibration` role, which no model trained on or was selected with); `medal recalibrate` refits
    the threshold on a hospital's cases (`recalibrated`), keeping the mean and covariance fitted here.
    """
    from medal.predict.calibrate import calibration_inputs

    threshold(np.zeros(1), options.false_reject)  # refuses a rate outside (0, 1) before any work
    root = Path(bundle.root)
    valid = from_labels(training_labels(data), options.range_margin)
    fit_inputs = _role_inputs(data, "train", options.fit_images, options.seed)
    fitted = [fit(f) for f in _features(bundle, fit_inputs, device, batch_size, num_workers)]
    calibration = _features(bundle, calibration_inputs(data), device, batch_size, num_workers)
    model = OodModel([m for m, _ in fitted], [p for _, p in fitted], math.inf, options.false_reject,
                     len(calibration[0]))
    scores = model.score(dict(enumerate(calibration)))
    limit = threshold(scores, options.false_reject)
    tensors = {f"mean_{k}": torch.from_numpy(m).float() for k, (m, _) in enumerate(fitted)}
    tensors |= {f"precision_{k}": torch.from_numpy(p).float() for k, (_, p) in enumerate(fitted)}
    (root / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    ood = {"method": METHOD, "weights": WEIGHTS, "dims": [len(m) for m, _ in fitted],
           "false_reject": options.false_reject, "threshold": None if math.isinf(limit) else limit,
           "fit": {"split": "train", "images": len(fit_inputs)},
           "calibration": {"split": "calibration", "images": len(scores), "source": "calibration_inputs",
                           "median": float(np.median(scores)), "max": float(np.max(scores))}}
    if math.isinf(limit):
        need = math.ceil(1.0 / options.false_reject - 1.0)
        ood["note"] = (f"{len(scores)} calibration images are too few for {options.false_reject:.0%} false rejects "
                       f"(needs {need}); the OOD gate is off for this bundle")
        log.warning("export: %s", ood["note"])
    write_json(root / GATE, {"schema": SCHEMA, "valid_range": valid.to_json(), "ood": ood}, indent=1)
    metrics = {"export/ood_threshold": limit, "export/ood_calibration_images": float(len(scores)),
               "export/valid_low": valid.low, "export/valid_high": valid.high}
    return [WEIGHTS, GATE], metrics


def recalibrated(root: Path, features: Sequence[dict[int, np.ndarray]], false_reject: float | None,
                 source: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """The bundle's `gate.json` with its OOD threshold refitted on a hospital's labelled cases (`medal recalibrate`):
    (the new record, or None when the bundle has no fitted OOD score to refit; metrics).

    `features` are the cases' pooled features ({regressor: (D,)} per case that reached the regressors), from the
    calibration pass itself. The mean and covariance stay the training images' (they define the score); only the
    threshold moves, by the export's rule (`threshold`) at `false_reject` (None: the rate the bundle was exported
    with, `export.gate.false_reject`), so that the cases' own radiographs are refused at that rate rather than at
    whatever rate the export's threshold gives them. The previous calibration goes to `ood.history`, and every
    record says the share of these cases the previous threshold would have refused. Too few cases for the rate
    (n + 1 < 1 / false_reject): the previous threshold is kept, said in one warning with that share, and recorded
    as `ood.refit` (raise the rate, e.g. recalibrate.false_reject=0.05 from 19 cases, or bring more cases).
    """
    record = read_gate(root)
    if record is None or record.ood is None:
        log.warning("recalibrate: bundle %s has no fitted out-of-distribution score (%s); its OOD gate stays off: "
                    "re-export the bundle to fit one", root, "no gate.json" if record is None else "gate.json's ood is "
                    "null")
        return None, {}
    if not features:
        raise MedalError("recalibrate: no case reached the regressors, so the OOD threshold cannot be refitted; check "
                         "the cases' images")
    old = record.ood
    model = load_model(root, record)
    scores = model.score({k: np.stack([f[k] for f in features]) for k in range(len(model.means))})
    rate = float(old["false_reject"] if false_reject is None else false_reject)
    limit = threshold(scores, rate)
    previous = math.inf if old["threshold"] is None else float(old["threshold"])
    above = float(np.mean(scores > previous))
    summary = {"split": "cases", "images": int(len(scores)), "source": source, "median": float(np.median(scores)),
               "max": float(np.max(scores)), "above_previous_threshold": above}
    metrics = {"recalibrate/ood_cases": float(len(scores)), "recalibrate/ood_above_previous": above}
    if math.isinf(limit):
        need = math.ceil(1.0 / rate - 1.0)
        kept = ("the export's" if old["calibration"]["split"] == "calibration" else "the previous")
        refit = {**summary, "false_reject": rate, "needs": need, "kept": old["threshold"]}
        log.warning("recalibrate: %d cases are too few to refit the OOD threshold at %s false rejects (needs %d); "
                    "%s threshold %s is kept, and it refuses %.1f%% of these cases", len(scores), f"{rate:.0%}", need,
                    kept, "(none: the gate stays off)" if old["threshold"] is None else f"{previous:.2f}", 100 * above)
        ood = {**old, "refit": refit}
        return {"schema": SCHEMA, "valid_range": record.valid_range.to_json(), "ood": ood}, {
            **metrics, "recalibrate/ood_refit": 0.0, "recalibrate/ood_threshold": previous}
    history = [*old.get("history", []), {k: old[k] for k in ("threshold", "false_reject", "calibration")}]
    ood = {k: v for k, v in old.items() if k not in ("refit", "note")}
    ood |= {"threshold": limit, "false_reject": rate, "calibration": summary, "history": history}
    log.info("recalibrate: OOD threshold refitted on %d cases at %s false rejects: %.2f (was %s; that one refused "
             "%.1f%% of these cases)", len(scores), f"{rate:.0%}", limit,
             "none, the gate was off" if old["threshold"] is None else f"{previous:.2f}", 100 * above)
    return {"schema": SCHEMA, "valid_range": record.valid_range.to_json(), "ood": ood}, {
        **metrics, "recalibrate/ood_refit": 1.0, "recalibrate/ood_threshold": limit}

