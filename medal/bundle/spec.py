"""What a bundle's chain is: plain, JSON-able settings of each part, read back exactly as they were written.

`configs/inference.json` of a bundle is `ChainSpec.to_json()`; the networks' weights live beside it under
`models/`. Every value here is one the training chain used (see `medal.bundle.sources`), so the prediction
code can call the training code with them and get the training numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medal.config import options_from
from medal.errors import MedalError

COHORTS = ("all", "male", "female")


@dataclass(frozen=True)
class SegmenterSpec:
    """The segmentation committee and the final pass that turned its maps into RoIs (`medal segment`)."""

    arch: str  # medal.segment.committee.ARCHS
    members: int
    net: dict[str, Any]
    channels_last: bool
    image_size: int  # working resolution (images stretched to a square)
    normalise_polarity: bool  # white-background images inverted before the networks
    border: float  # the polarity ring's inset (segment.coarse.border)
    postprocess: bool  # largest component, holes filled
    roi_size: int
    margin: float
    batch_size: int  # the final pass's chunk (al.score_batch_size)
    fast: bool | str  # bf16 autocast while predicting (al.fast_scoring: true, false, auto)
    labelled: int  # labels the committee was fitted on (for the manifest)
    weights: str = "models/committee.safetensors"


@dataclass(frozen=True)
class EnhancerSpec:
    """The enhancement of the RoIs (`medal enhance`): `gan` (its generator), `clahe` or `none`."""

    method: str
    image_size: int | None = None  # working size (gan, clahe)
    generator: dict[str, Any] | None = None  # medal.models.unet.UNet arguments (gan)
    residual: bool | None = None
    channels_last: bool | None = None
    clip_limit: float | None = None  # clahe
    grid: list[int] | None = None
    keep_background: bool | None = None
    batch_size: int = 16
    weights: str | None = None  # models/generator.safetensors (gan)

    def __post_init__(self) -> None:
        if self.method not in ("gan", "clahe", "none"):
            raise MedalError(f"enhancer.method={self.method!r}: a bundle knows gan, clahe and none")


@dataclass(frozen=True)
class RegressorSpec:
    """One bone age model of the ensemble (`medal boneage` run): its input and its LightningModule's arguments."""

    name: str
    cohort: str  # all, male, female: the images it was trained on and applies to
    image_size: int
    fit: str  # pad | stretch (medal.data.cache.FITS)
    bf16: bool | str  # evaluation.bf16 of its run
    batch_size: int
    module: dict[str, Any]  # BoneAgeModule keyword arguments (model_cfg, target_shift, target_scale, ...)
    weights: str = ""

    def __post_init__(self) -> None:
        if self.cohort not in COHORTS:
            raise MedalError(f"regressor {self.name}: cohort {self.cohort!r} is not one of {', '.join(COHORTS)}")

    @property
    def sex_input(self) -> bool:
        return bool(self.module["model_cfg"]["sex_input"])


@dataclass(frozen=True)
class ChainSpec:
    """The whole chain. `segmenter` None: the regressors read whole radiographs (`data.images=raw`), and there
    is no enhancer either."""

    regressors: list[RegressorSpec]
    segmenter: SegmenterSpec | None = None
    enhancer: EnhancerSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.regressors:
            raise MedalError("a bundle needs at least one bone age regressor (export.regressors)")
        if (self.segmenter is None) != (self.enhancer is None):
            raise MedalError("a bundle has a segmenter and an enhancer, or neither (regressors on raw images)")

    @property
    def needs_sex(self) -> bool:
        """Whether some model's estimate depends on the sex: a sex-specific cohort or a sex input."""
        return any(r.cohort != "all" or r.sex_input for r in self.regressors)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "configs/inference.json") -> ChainSpec:
        """Read back what `to_json` wrote; an unknown or missing key is one line naming it."""
        values = dict(data)
        values["regressors"] = [options_from(RegressorSpec, r, f"{where}: regressors") for r in values["regressors"]]
        if values.get("segmenter") is not None:
            values["segmenter"] = options_from(SegmenterSpec, values["segmenter"], f"{where}: segmenter")
        if values.get("enhancer") is not None:
            values["enhancer"] = options_from(EnhancerSpec, values["enhancer"], f"{where}: enhancer")
        return options_from(cls, values, where)
