"""Synthetic left-hand radiographs whose anatomy follows bone age, in the official RSNA layout.

`anatomy` (maturity timings) -> `hand` (geometry) -> `render` (clean projection, mask, gold)
-> `acquisition` (nuisances) -> `dataset` (parallel, seeded, resumable writer) and `sheet` (contact sheet);
`floor` computes the noise floor of bone age from what the generator drew.
"""

from medal.data.phantom.acquisition import Nuisance
from medal.data.phantom.anatomy import CentreState, Individual, describe
from medal.data.phantom.dataset import (
    BONES_DIR,
    PhantomSettings,
    generate_dataset,
    read_bones,
    render_spec,
    sample_spec,
)
from medal.data.phantom.floor import read_floor
from medal.data.phantom.render import Layers, Pose, render_hand
from medal.data.phantom.sheet import write_contact_sheet

__all__ = [
    "BONES_DIR",
    "CentreState",
    "Individual",
    "Layers",
    "Nuisance",
    "PhantomSettings",
    "Pose",
    "describe",
    "generate_dataset",
    "read_bones",
    "read_floor",
    "render_hand",
    "render_spec",
    "sample_spec",
    "write_contact_sheet",
]
