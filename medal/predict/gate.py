"""Is this file a hand radiograph? The rule on DICOM attributes that runs before any estimate (`predict.gate`).

A bundle's networks answer for any picture they are given: a CT slice, an MR brain or a colour test pattern
gets a bone age as readily as a hand. The header often says what the picture is, so the rule refuses, with
status `not_a_hand_radiograph` and a one-line reason, a file whose

- Modality is not a projection radiograph (`modalities`: CR, DX, RG; OT and SC, how scanned films arrive);
- NumberOfFrames exceeds `max_frames` (a hand radiograph is one frame);
- PhotometricInterpretation is not one of `photometric` (PALETTE COLOR, for example), or whose colour pixels
  (RGB, YBR) are not grey: their channels differ by more than `max_colour` on average;
- BodyPartExamined contains none of `body_parts` (compared upper-case without spaces, `_` or `-`, so
  `LEFT HAND` and `HAND_WRIST` pass, `CHEST` does not);
- laterality (ImageLaterality, else Laterality) is B, both hands (`laterality`: a right hand is mirrored to the
  left hand the models learnt from, or refused with `laterality=refuse`).

A missing or blank attribute is unknown, never a refusal: BodyPartExamined is often blank, PNG and JPEG files
have no header at all. Those pass to the out-of-distribution score (`medal.predict.ood`), which judges the
pixels. Every list can be overridden, e.g. `predict.gate.modalities=[CR,DX,OT,SC,RG,MR]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from medal.data.dicom import DicomHeader
from medal.errors import MedalError

LATERALITY = ("mirror", "refuse")


@dataclass(frozen=True)
class GateOptions:
    """`predict.gate.*` (conf/predict.yaml holds the values)."""

    modalities: list[str]
    body_parts: list[str]
    photometric: list[str]
    max_frames: int
    max_colour: float  # mean spread between RGB channels (0..1) above which a colour file is not grey
    laterality: str  # mirror | refuse: what to do with a right hand
    ood: bool  # refuse images whose out-of-distribution score exceeds the bundle's threshold

    def __post_init__(self) -> None:
        if self.laterality not in LATERALITY:
            raise MedalError(f"predict.gate.laterality={self.laterality!r}: choose one of {', '.join(LATERALITY)}")
        if self.max_frames < 1:
            raise MedalError(f"predict.gate.max_frames={self.max_frames}: must be >= 1")


def _norm(text: str) -> str:
    return "".join(c for c in text.upper() if c not in " _-")


def refusal(header: DicomHeader, options: GateOptions) -> str | None:
    """Why the header says this is not a hand radiograph, in one line; None when nothing in it says so.

    Examples:
        >>> from dataclasses import replace
        >>> opts = GateOptions(["CR", "DX", "OT", "SC", "RG"], ["HAND", "WRIST"], ["MONOCHROME1", "MONOCHROME2", "RGB"],
        ...                    1, 0.02, "mirror", True)
        >>> hand = DicomHeader("CR", 1, 1, "MONOCHROME1", None, "L", None, None, None, None, None, "1.2.840.10008.1.2.1")
        >>> refusal(hand, opts) is None
        True
        >>> refusal(replace(hand, modality="MR"), opts)
        'Modality MR is not a projection radiograph (predict.gate.modalities: CR, DX, OT, SC, RG)'
        >>> refusal(replace(hand, modality=None, body_part="CHEST"), opts)
        'BodyPartExamined CHEST is not a hand (predict.gate.body_parts: HAND, WRIST)'
        >>> refusal(replace(hand, body_part="Left hand".upper()), opts) is None  # "LEFT HAND" contains HAND
        True
    """
    allowed = ", ".join(options.modalities)
    if header.modality is not None and header.modality not in {m.upper() for m in options.modalities}:
        return f"Modality {header.modality} is not a projection radiograph (predict.gate.modalities: {allowed})"
    if header.frames > options.max_frames:
        return (f"{header.frames} frames: a hand radiograph is one image "
                f"(predict.gate.max_frames: {options.max_frames})")
    if header.samples_per_pixel not in (1, 3):
        return f"{header.samples_per_pixel} samples per pixel: neither greyscale nor colour"
    if header.photometric is not None and header.photometric not in {p.upper() for p in options.photometric}:
        return (f"PhotometricInterpretation {header.photometric} is not read as a radiograph "
                f"(predict.gate.photometric: {', '.join(options.photometric)})")
    if header.body_part is not None:
        part = _norm(header.body_part)
        if not any(_norm(p) in part for p in options.body_parts):
            return (f"BodyPartExamined {header.body_part} is not a hand "
                    f"(predict.gate.body_parts: {', '.join(options.body_parts)})")
    if header.laterality == "B":
        return "laterality B: both hands in one image; medal reads one hand per image"
    if header.laterality == "R" and options.laterality == "refuse":
        return "a right hand (laterality R) and predict.gate.laterality=refuse; set mirror to read it as a left hand"
    return None


def colour_refusal(colour: float, options: GateOptions) -> str | None:
    """Why a colour file's pixels are not a radiograph (their channels differ), or None.

    Examples:
        >>> opts = GateOptions([], [], [], 1, 0.02, "mirror", True)
        >>> colour_refusal(0.0, opts) is None, colour_refusal(0.31, opts)
        (True, 'a colour image (channels differ by 0.310 on average; predict.gate.max_colour: 0.02)')
    """
    if colour > options.max_colour:
        return f"a colour image (channels differ by {colour:.3f} on average; predict.gate.max_colour: {options.max_colour})"
    return None


def mirrored(header: DicomHeader | None) -> bool:
    """Whether the image is of a right hand (laterality R), which the chain mirrors to a left one."""
    return header is not None and header.laterality == "R"
