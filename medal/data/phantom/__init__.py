"""Synthetic left-hand radiographs whose anatomy follows bone age, in the official RSNA layout.

`anatomy` (maturity timings) -> `hand` (geometry) -> `render` (clean projection, mask, gold)
-> `acquisition` (nuisances) -> `dataset` (parallel, seeded, resumable writer) and `sheet` (contact sheet).
"""

from medal.data.phantom.acquisition import Nuisance
from medal.data.phantom.anatomy import CentreState, Individual, describe
from medal.data.phantom.dataset import PhantomSettings, generate_dataset, render_spec, sample_spec
from medal.data.phantom.render import Layers, Pose, render_hand
from medal.data.phantom.sheet import write_contact_sheet

__all__ = [
    "CentreState",
    "Individual",
    "Layers",
    "Nuisance",
    "PhantomSettings",
    "Pose",
    "describe",
    "generate_dataset",
    "render_hand",
    "render_spec",
    "sample_spec",
    "write_contact_sheet",
]
