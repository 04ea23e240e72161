"""The bundle's chain over new radiographs, batched: the training code, called with the bundle's settings.

Per image (`InputImages`, in DataLoader workers): decode (PNG, JPEG, DICOM) -> the coarse phase's polarity
(`is_inverted`) -> the committee's working image as the segmentation cache holds it (`cached_form`, stretched,
float16). Per batch (`ChainModule`, on the device): committee probabilities (`CommitteeModel.predict_probs`) ->
their mean, upsampled, Otsu, clean-up and the square hand crop (`segment.infer.hand_roi`) -> the 16-bit
rounding the RoI file had (`as_derived`) -> the enhancer (`enhance.run.to_working`, the method,
`to_roi_size`, `as_derived`) -> each regressor's cached input (`cached_form` at its size and fit) -> its
`BoneAgeModule` in months (as `boneage.evaluate.predict_frame` calls it) -> the ensemble (`ensemble.combine`)
-> the conformal interval -> CAM. Every step is the function the training tasks use, so an exported bundle
reproduces its bone age run's test predictions (tests/test_predict.py holds it to 1e-4 months).

Statuses (`medal.predict.rows.STATUSES`): `ok`, `unreadable` (the file does not decode), `empty_image` (one flat
grey level), `not_a_hand_radiograph` (the DICOM attributes say so, `medal.predict.gate`, checked before the
pixels are decoded), `no_sex` (a model needs the sex and neither the input nor the DICOM header gives it),
`no_hand` (the committee finds no pixel of hand), `out_of_distribution` (the regressors' features are unlike
the training images', `medal.predict.ood`), `no_model` (no regressor of the bundle applies to this sex),
`out_of_range` (the estimate lies outside the bundle's valid range, `medal.predict.valid_range`). Only `ok`
rows have estimates; their intervals are cut to the valid range. A right hand (DICOM laterality R) is
mirrored to the left hand the models learnt from. The clinician's columns (chronological age, the gap, SDS):
`medal.predict.chronology`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medal.boneage.cam import cam_of_features, class_activation_map, normalise, overlay
from medal.boneage.evaluate import autocast_for
from medal.bundle.load import Bundle
from medal.bundle.spec import ChainSpec
from medal.data.cache import cached_form
from medal.data.dicom import is_dicom, read_header
from medal.data.images import as_derived, decode, resize
from medal.enhance.run import clahe_method, generator_method, identity, to_roi_size, to_working
from medal.errors import MedalError
from medal.hardware import use_bf16
from medal.predict import chronology, conformal, cv_plus, ensemble, gate, ood, qc, valid_range
from medal.predict.clock import StepClock
from medal.predict.threads import ThreadChoice
from medal.preprocess.coarse import is_inverted
from medal.preprocess.masks import FLAT, binarise
from medal.segment.infer import hand_roi

log = logging.getLogger("medal.predict")

TTA = ("none", "flip")
SEX_POLICIES = ("input", "unknown")
THUMB = 192  # px, longer side of the page's mask thumbnails


@dataclass(frozen=True)
class ChainOptions:
    """`predict.*` keys the chain reads (conf/predict.yaml holds the values)."""

    tta: str  # none | flip (mean of the image and its mirror, per regressor)
    sex: str  # input: a model that needs the sex and has none gives status no_sex; unknown: average M and F
    coverage: float
    bf16: bool | str  # as_trained (each network's recorded setting, `auto` resolved here) | true | false
    cam: bool
    interval: str = "bundle"  # the bundle's conformal method (export.conformal.method), or one of conformal.METHODS

    def __post_init__(self) -> None:
        if self.interval != "bundle" and self.interval not in conformal.METHODS:
            raise MedalError(f"predict.interval={self.interval!r}: choose bundle or one of "
                             f"{', '.join(conformal.METHODS)}")
        if self.tta not in TTA:
            raise MedalError(f"predict.tta={self.tta!r}: choose one of {', '.join(TTA)}")
        if self.sex not in SEX_POLICIES:
            raise MedalError(f"predict.sex={self.sex!r}: choose one of {', '.join(SEX_POLICIES)}")
        conformal.conformal_radius([], self.coverage)  # refuses a coverage outside (0, 1)


class InputImages(Dataset):
    """Rows of an input table (`medal.predict.inputs.COLUMNS`) decoded and prepared for the chain.

    A sample is a dict with the row's fields, `status`/`message`, and (status ok) `radiograph`, `inverted`,
    `work` (S, S) for a segmenting chain, or `inputs` (one (S, S) array per regressor) for a raw one.
    """

    def __init__(self, frame: pd.DataFrame, chain: ChainSpec, sex_policy: str,
                 gate_options: gate.GateOptions | None = None) -> None:
        self.rows = frame.to_dict("records")
        self.chain, self.sex_policy, self.gate = chain, sex_policy, gate_options  # gate None: export's own passes

    def __len__(self) -> int:
        return len(self.rows)

    def _refusal(self, path: str) -> dict[str, str] | None:
        """Status and message of a DICOM file the gate refuses by its header (pixels not decoded), or None."""
        if self.gate is None or not is_dicom(path):
            return None
        try:
            reason = gate.refusal(read_header(path), self.gate)
        except MedalError as err:
            return {"status": "unreadable", "message": str(err)}
        return None if reason is None else {"status": "not_a_hand_radiograph", "message": reason}

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {**self.rows[i], "status": "ok", "message": ""}
        refused = self._refusal(sample["path"])
        if refused is not None:
            return {**sample, **refused}
        try:
            decoded = decode(sample["path"])
        except MedalError as err:
            return {**sample, "status": "unreadable", "message": str(err)}
        age, source = chronology.chronological_age(sample.get("chronological_age", np.nan), decoded.dicom)
        sample.update(chronological_age=age, age_source=source)
        reason = None if self.gate is None else gate.colour_refusal(decoded.colour, self.gate)
        if reason is not None:
            return {**sample, "status": "not_a_hand_radiograph", "message": reason}
        if self.gate is not None and gate.mirrored(decoded.dicom):  # a right hand, read as the left one
            decoded = replace(decoded, image=decoded.image[:, ::-1].copy(), radiograph=decoded.radiograph[:, ::-1].copy())
        if decoded.sex is not None and not np.isfinite(sample["male"]):
            sample.update(male=float(decoded.sex == "M"), sex_source="dicom")
        image = decoded.image
        if image.size == 0 or float(image.max()) - float(image.min()) <= FLAT:
            return {**sample, "status": "empty_image", "message": "the image is one flat grey level"}
        if self.chain.needs_sex and not np.isfinite(sample["male"]) and self.sex_policy != "unknown":
            return {**sample, "status": "no_sex", "message": "the bundle's models need the sex and the input gives "
                    "none (CSV male column, DICOM PatientSex); add it, or set predict.sex=unknown to average both"}
        seg = self.chain.segmenter
        if seg is None:
            sample["inputs"] = [cached_form(image, r.image_size, r.fit).astype(np.float32)
                                for r in self.chain.regressors]
            sample["thumb"] = _thumbnail(decoded.radiograph, None)
            return sample
        inverted = is_inverted(image, seg.border)  # the coarse phase's polarity decision
        work = cached_form(image, seg.image_size, "stretch").astype(np.float32)
        sample.update(radiograph=decoded.radiograph, inverted=inverted,
                      work=1.0 - work if seg.normalise_polarity and inverted else work)
        return sample


def collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches stay lists: images of different sizes, and rows that failed."""
    return samples


TINT = (0.4 * np.array([1.0, 0.15, 0.1])).astype(np.float32)  # the mask's red, 40 % over the radiograph


def _thumbnail(radiograph: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGB uint8 of the radiograph (longer side `THUMB`), the mask tinted red over it."""
    h, w = radiograph.shape
    scale = THUMB / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    grey = np.clip(resize(radiograph, size), 0, 1)[..., None]
    rgb = np.repeat(grey, 3, axis=2)
    if mask is not None:
        small = resize(mask.astype(np.float32), size)[..., None] > 0.5
        rgb = np.where(small, 0.6 * grey + TINT, rgb)
    return np.rint(255 * rgb).astype(np.uint8)


@dataclass
class Measured:
    """What the chain computed for one image before the interval: per-regressor months by TTA and sex,
    segmentation measures, and the pictures for the page."""

    sample: dict[str, Any]
    predictions: dict[str, dict[bool, np.ndarray]] = field(default_factory=dict)  # tta -> male -> (R,)
    mask_fraction: float = float("nan")
    agreement: float = float("nan")
    thumb: np.ndarray | None = None
    overlay: np.ndarray | None = None
    features: dict[int, np.ndarray] = field(default_factory=dict)  # regressor -> pooled features (D,), for OOD


class CamSums:
    """The CAM overlays of a batch, built regressor by regressor from the feature maps of the pass that gave the
    estimates: each applicable regressor's map, normalised, at the largest regressor's input size, averaged, over
    what that regressor saw. The same maps as `ChainModule._cams_reference` computes image by image in float32,
    up to the precision of the shared pass."""

    def __init__(self, measured: list[Measured], chain: ChainSpec) -> None:
        self.measured = measured
        self.display = max(r.image_size for r in chain.regressors)
        self.sizes = [r.image_size for r in chain.regressors]
        cohorts = [r.cohort for r in chain.regressors]
        males = [m.sample["male"] for m in measured]
        self.use = [set(ensemble.applicable(cohorts, bool(male >= 0.5)) if np.isfinite(male)
                        else range(len(cohorts))) for male in males]
        self.male = torch.tensor([float(male) if np.isfinite(male) else 1.0 for male in males])
        self.heats: list[list[torch.Tensor]] = [[] for _ in measured]
        self.greys: list[np.ndarray | None] = [None] * len(measured)
        self.last: list[np.ndarray | None] = [None] * len(measured)

    def add(self, k: int, module: torch.nn.Module, features: torch.Tensor, arrays: list[np.ndarray]) -> None:
        """Regressor k's maps from its feature maps (B, C, h, w) and inputs (B arrays (S, S))."""
        rows = [j for j, use in enumerate(self.use) if k in use]
        if not rows:
            return
        size = self.sizes[k]
        picked = features[rows] if len(rows) < len(self.measured) else features
        male = self.male[rows].to(features.device)
        heat = normalise(cam_of_features(module.model, picked, male, (size, size)).upsampled).float()
        heat = F.interpolate(heat[:, None], size=(self.display, self.display), mode="bilinear")[:, 0].cpu()
        for i, j in enumerate(rows):
            self.heats[j].append(heat[i])
            self.last[j] = arrays[j]
            if size == self.display and self.greys[j] is None:
                self.greys[j] = arrays[j]

    def draw(self) -> None:
        """Each image's overlay (`Measured.overlay`) from the maps added."""
        for j, m in enumerate(self.measured):
            if self.heats[j]:
                grey = self.greys[j]
                if grey is None:
                    grey = resize(self.last[j], (self.display, self.display))
                m.overlay = overlay(grey, torch.stack(self.heats[j]).mean(0).numpy())


class ChainModule(pl.LightningModule):
    """The bundle's networks as one LightningModule, so `Trainer.predict` batches it, on one device or DDP."""

    def __init__(self, bundle: Bundle, options: ChainOptions, calibrating: bool = False,
                 gate_options: gate.GateOptions | None = None, reference: bool = False,
                 threads: int | str | None = None) -> None:
        """`reference`: the regressors' step as first written (a backbone pass per sex, per mirror image and per
        image's CAM), which the shared pass must reproduce (tests/test_predict_chain.py) and the benchmark
        (scripts/bench_predict.py) measures against. `threads`: `predict.threads` (`medal.predict.threads`;
        None leaves torch's thread count alone)."""
        super().__init__()
        self.bundle, self.chain, self.options, self.calibrating = bundle, bundle.chain, options, calibrating
        self.reference, self.thread_setting = reference, threads
        self.clock = StepClock()  # seconds per chain step (the benchmark's profile)
        self.threads = ThreadChoice(None, "cpu")  # replaced in `prepare`, once the device is known
        if bundle.calibration is None and not calibrating:
            raise MedalError(f"bundle={bundle.root}: no calibration.json; re-export it with `medal export`")
        self.gate = gate_options
        record = None if calibrating else ood.read_gate(bundle.root)  # export's own passes judge nothing
        self.valid = valid_range.DEFAULT if record is None else record.valid_range
        self.ood = None if record is None else ood.load_model(bundle.root, record)
        self.intervals: conformal.IntervalTable | None = None
        if not calibrating:  # refuses an old table in one line before any image is read; says every fallback once
            method = None if options.interval == "bundle" else options.interval
            self.intervals = conformal.interval_table(bundle.calibration, options.tta, method)
            for note in self.intervals.survey():
                log.info("intervals (%s): %s", self.intervals.method, note)
        seg, enh = self.chain.segmenter, self.chain.enhancer
        self.committee = bundle.committee() if seg is not None else None
        self.generator = bundle.generator() if enh is not None and enh.method == "gan" else None
        self.regressors = torch.nn.ModuleList([bundle.regressor(r) for r in self.chain.regressors])
        self.tap = ood.FeatureTap(self.regressors)
        self._seg_model: Any = None
        self._enhance: Any = None

    # -- device-bound helpers, made once the module sits on its device ------------------------------------
    def _bf16(self, recorded: bool | str) -> bool:
        setting = recorded if self.options.bf16 == "as_trained" else self.options.bf16
        return use_bf16(setting, self.device.type)

    def prepare(self) -> None:
        """Wrap the networks as the training chain calls them, on this module's device."""
        from medal.segment.model import CommitteeModel

        seg, enh = self.chain.segmenter, self.chain.enhancer
        self.threads = ThreadChoice(self.thread_setting, self.device.type)
        if seg is not None:
            self._seg_model = CommitteeModel(self.committee, None, str(self.device), self._bf16(seg.fast),
                                             seg.batch_size)
        if enh is None or enh.method == "none":
            self._enhance = identity
        elif enh.method == "clahe":
            self._enhance = clahe_method(float(enh.clip_limit), list(enh.grid), bool(enh.keep_background))
        else:
            self._enhance = generator_method(self.generator, self._bf16("auto"), bool(enh.channels_last))

    def on_predict_start(self) -> None:
        self.prepare()

    def on_predict_end(self) -> None:
        self.threads.restore()

    # -- the chain -------------------------------------------------------------------------------------------
    def segment(self, measured: list[Measured]) -> list[np.ndarray | None]:
        """RoIs of the images (16-bit rounded as the RoI files were); marks those without a hand."""
        with self.clock("committee"):
            works = np.stack([m.sample["work"] for m in measured])
            member_probs = self._seg_model.predict_probs(works)  # (M, B, S, S), as the final pass computes it
            mean = member_probs.mean(0).numpy()
            member_probs = member_probs.numpy()
        with self.clock("roi"):
            return self._rois(measured, mean, member_probs)

    def _rois(self, measured: list[Measured], mean: np.ndarray, member_probs: np.ndarray) -> list[np.ndarray | None]:
        seg = self.chain.segmenter
        rois: list[np.ndarray | None] = []
        for j, m in enumerate(measured):
            s = m.sample
            if float(mean[j].max()) < 0.5:
                s.update(status="no_hand", message="the committee finds no hand (no pixel with probability >= 0.5)")
                rois.append(None)
                continue
            mask, roi, _ = hand_roi(s["radiograph"], mean[j], bool(s["inverted"]), seg.postprocess, seg.margin,
                                    seg.roi_size)
            m.mask_fraction = float(mask.mean())
            m.agreement = qc.pairwise_dice(np.stack([binarise(p, postprocess=False) for p in member_probs[:, j]]))
            m.thumb = _thumbnail(s["radiograph"], mask)
            rois.append(as_derived(roi))
        return rois

    def enhance(self, rois: list[np.ndarray]) -> list[np.ndarray]:
        """The enhanced RoIs, as `enhance.run.enhance_folder` writes them (16-bit rounded)."""
        enh = self.chain.enhancer
        if enh.method == "none":
            return rois
        with self.clock("enhancer"):
            return self._enhanced(rois)

    def _enhanced(self, rois: list[np.ndarray]) -> list[np.ndarray]:
        enh = self.chain.enhancer
        out = []
        for start in range(0, len(rois), enh.batch_size):
            chunk = rois[start:start + enh.batch_size]
            x = torch.stack([to_working(torch.from_numpy(r)[None], int(enh.image_size)) for r in chunk])
            with torch.inference_mode():
                y = self._enhance(x).float().cpu()
            out += [as_derived(to_roi_size(y[i], *r.shape).numpy()) for i, r in enumerate(chunk)]
        return out

    def _modes(self) -> tuple[str, ...]:
        return TTA if self.calibrating or self.options.tta == "flip" else ("none",)

    def _inputs(self, k: int, measured: list[Measured], images: list[np.ndarray] | None) -> list[np.ndarray]:
        """Regressor k's input (S, S) of each image: what its training cache held."""
        spec = self.chain.regressors[k]
        if images is None:
            return [m.sample["inputs"][k] for m in measured]
        return [cached_form(img, spec.image_size, spec.fit).astype(np.float32) for img in images]

    def regress(self, measured: list[Measured], images: list[np.ndarray] | None) -> None:
        """Every regressor's months for each image, as male and as female (one pass where sex is not an input),
        without and (when asked, or calibrating) with the mirror image; then the CAMs.

        One backbone pass per regressor and batch (two with the mirror image) serves both sexes, since the sex
        enters the head only, and the CAM, which is computed from that pass's feature maps. The months are
        those of `BoneAgeModule.forward` on the same batch, to the bit (tests/test_predict_chain.py)."""
        if self.reference:
            self._regress_reference(measured, images)
            return
        modes = self._modes()
        self.tap.arm()  # the OOD score's pooled features: the head's input on the plain image's first call
        per_mode: dict[str, dict[bool, list[np.ndarray]]] = {t: {True: [], False: []} for t in modes}
        cams = CamSums(measured, self.chain) if self.options.cam and not self.calibrating else None
        for k, (spec, module) in enumerate(zip(self.chain.regressors, self.regressors, strict=True)):
            sexes = (True, False) if spec.sex_input else (True,)
            with self.clock("regressor"):
                arrays = self._inputs(k, measured, images)
                x = torch.from_numpy(np.stack(arrays))[:, None].to(self.device)
                features, plain = self._shared_pass(module, spec.bf16, x, sexes)
            flipped = None
            if "flip" in modes:
                with self.clock("tta"):
                    flipped = self._shared_pass(module, spec.bf16, x.flip(-1), sexes)[1]
            for male in sexes:
                for mode in modes:
                    value = plain[male] if mode == "none" else (plain[male] + flipped[male]) / 2
                    per_mode[mode][male].append(value)
                    if not spec.sex_input:
                        per_mode[mode][False].append(value)
            if cams is not None:
                with self.clock("cam"):
                    cams.add(k, module, features, arrays)
        pooled = self.tap.take()
        for j, m in enumerate(measured):
            m.predictions = {mode: {s: np.array([row[j] for row in rows]) for s, rows in by_sex.items()}
                             for mode, by_sex in per_mode.items()}
            m.features = {k: f[j] for k, f in pooled.items()}
        if cams is not None:
            with self.clock("cam"):
                cams.draw()

    def _shared_pass(self, module: torch.nn.Module, recorded_bf16: bool | str, x: torch.Tensor,
                     sexes: tuple[bool, ...]) -> tuple[torch.Tensor, dict[bool, np.ndarray]]:
        """(feature maps (B, C, h, w), {male: months (B,)}) of one backbone pass over x (B, 1, S, S)."""
        n = x.shape[0]
        with torch.no_grad(), autocast_for(self.device, self._bf16(recorded_bf16)):
            features = module.features(x)
            months = {male: module.months_of_features(features, torch.full((n,), float(male), device=self.device))
                      .float().cpu().numpy() for male in sexes}
        return features, months

    # -- the regressors' step as first written: the reference the shared pass is held to --------------------
    def _months(self, module: torch.nn.Module, bf16: bool, x: torch.Tensor, male: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast_for(self.device, bf16):
            return module(x.to(self.device), male.to(self.device)).float().cpu().numpy()

    def _regress_reference(self, measured: list[Measured], images: list[np.ndarray] | None) -> None:
        """`regress` with a backbone pass per sex and per mirror image, and the CAM per image in float32."""
        modes = self._modes()
        n = len(measured)
        self.tap.arm()
        per_mode: dict[str, dict[bool, list[np.ndarray]]] = {t: {True: [], False: []} for t in modes}
        for k, (spec, module) in enumerate(zip(self.chain.regressors, self.regressors, strict=True)):
            with self.clock("regressor"):
                x = torch.from_numpy(np.stack(self._inputs(k, measured, images)))[:, None]
            bf16 = self._bf16(spec.bf16)
            sexes = (True, False) if spec.sex_input else (True,)
            for male in sexes:
                sex = torch.full((n,), float(male))
                with self.clock("regressor"):
                    plain = self._months(module, bf16, x, sex)
                flipped = None
                if "flip" in modes:
                    with self.clock("tta"):
                        flipped = self._months(module, bf16, x.flip(-1), sex)
                for mode in modes:
                    value = plain if mode == "none" else (plain + flipped) / 2
                    per_mode[mode][male].append(value)
                    if not spec.sex_input:
                        per_mode[mode][False].append(value)
        pooled = self.tap.take()
        for j, m in enumerate(measured):
            m.predictions = {mode: {s: np.array([row[j] for row in rows]) for s, rows in by_sex.items()}
                             for mode, by_sex in per_mode.items()}
            m.features = {k: f[j] for k, f in pooled.items()}
        if self.options.cam and not self.calibrating:
            with self.clock("cam"):
                self._cams_reference(measured, images)

    def _cams_reference(self, measured: list[Measured], images: list[np.ndarray] | None) -> None:
        """CAM (exact for a linear head, else Grad-CAM) of every applicable regressor, averaged, over what the
        largest-input regressor sees: one image and one float32 backbone pass at a time."""
        display = max(r.image_size for r in self.chain.regressors)
        cohorts = [r.cohort for r in self.chain.regressors]
        for j, m in enumerate(measured):
            male = m.sample["male"]
            use = ensemble.applicable(cohorts, bool(male >= 0.5)) if np.isfinite(male) else range(len(cohorts))
            heats, grey = [], None
            for k in use:
                spec, module = self.chain.regressors[k], self.regressors[k]
                arr = (m.sample["inputs"][k] if images is None
                       else cached_form(images[j], spec.image_size, spec.fit).astype(np.float32))
                x = torch.from_numpy(arr)[None, None].to(self.device).contiguous(memory_format=module.memory_format)
                sex = torch.tensor([float(male) if np.isfinite(male) else 1.0], device=self.device)
                heat = normalise(class_activation_map(module.model, x, sex).upsampled).float()
                heats.append(F.interpolate(heat[:, None], size=(display, display), mode="bilinear")[0, 0].cpu())
                if spec.image_size == display and grey is None:
                    grey = arr
            if heats:
                m.overlay = overlay(grey if grey is not None else resize(arr, (display, display)),
                                    torch.stack(heats).mean(0).numpy())

    def measure(self, batch: list[dict[str, Any]]) -> list[Measured]:
        """The chain up to the per-regressor months, for the batch's readable images (others pass through)."""
        measured = [Measured(s) for s in batch]
        live = [m for m in measured if m.sample["status"] == "ok"]
        if not live:
            return measured
        with self.threads.batch(len(live)):
            self._measure(live)
        return measured

    def _measure(self, live: list[Measured]) -> None:
        if self.chain.segmenter is None:
            for m in live:
                m.thumb = m.sample.get("thumb")
            self.regress(live, None)
            return
        rois = self.segment(live)
        kept = [(m, r) for m, r in zip(live, rois, strict=True) if r is not None]
        if kept:
            enhanced = self.enhance([r for _, r in kept])
            self.regress([m for m, _ in kept], enhanced)

    # -- estimate and interval -------------------------------------------------------------------------------
    def finish(self, m: Measured) -> dict[str, Any]:
        """The output row of one measured image: estimate, interval, spread, quality flags."""
        s = m.sample
        male = float(s["male"])
        sex = "M" if male >= 0.5 else "F" if np.isfinite(male) else "unknown"
        row = {"id": s["id"], "sex": sex, "sex_source": s["sex_source"] or ("averaged" if sex == "unknown" else ""),
               "boneage": np.nan, "low": np.nan, "high": np.nan, "spread": np.nan, "seg_confidence": m.agreement,
               "mask_fraction": m.mask_fraction, "flag": "", "status": s["status"], "message": s["message"],
               "path": s["path"], "reference": s["reference"], "calibration": "", "interval_method": "",
               "chronological_age": s.get("chronological_age", np.nan), "age_source": s.get("age_source", ""),
               "ood_score": np.nan}
        if s["status"] != "ok":
            return row
        if self.ood is not None and m.features:
            row["ood_score"] = float(self.ood.score({k: f[None] for k, f in m.features.items()})[0])
            reason = self.ood.reason(row["ood_score"]) if self.gate is not None and self.gate.ood else None
            if reason is not None:
                return {**row, "status": "out_of_distribution", "message": reason}
        cohorts = [r.cohort for r in self.chain.regressors]
        estimate, spread = ensemble.combine({k: v[:, None] for k, v in m.predictions[self.options.tta].items()}, cohorts,
                                            np.array([male if np.isfinite(male) else np.nan]))
        if not np.isfinite(estimate[0]):
            return {**row, "status": "no_model", "message": f"no regressor of the bundle applies to sex {sex}"}
        # a known sex: its own calibration group; an averaged estimate: the residuals of averaged estimates
        group = {"M": "male", "F": "female"}.get(sex, "unknown" if self.chain.needs_sex else "all")
        folds = self.intervals.regressor_folds  # a k-fold bundle's CV+: each fold's models' estimate of the image
        per_fold = None if folds is None else cv_plus.fold_estimates(m.predictions[self.options.tta], cohorts, folds,
                                                                     male if np.isfinite(male) else np.nan)
        low, high, used = self.intervals.bounds(float(estimate[0]), group, self.options.coverage, per_fold)
        measures = {"mask_fraction": m.mask_fraction, "agreement": m.agreement}
        unbounded = math.isinf(high - low)
        status, reason, low, high = valid_range.cut_bounds(float(estimate[0]), low, high, self.valid)
        if status != "ok":
            return {**row, "status": status, "message": reason}
        flags = [qc.flags(measures, self.bundle.calibration["qc"])] + (["interval_unbounded"] if unbounded else [])
        flag = ";".join(f for f in flags if f)  # unbounded: too few calibration images, the interval is the range
        return {**row, "boneage": float(estimate[0]), "low": low, "high": high, "spread": float(spread[0]),
                "flag": flag, "calibration": used, "interval_method": self.intervals.method,
                **chronology.assess(float(estimate[0]), low, high, row["chronological_age"], sex)}

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        return [(self.finish(m), m.thumb, m.overlay) for m in self.measure(batch)]
