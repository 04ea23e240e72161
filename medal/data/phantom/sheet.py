"""Contact sheet of a phantom data set: raw images, masks and gold images side by side across ages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medal.data.images import read_image
from medal.plotting import save_figure

ARTIFACTS = {"contact_sheet": "contact_sheet.png"}  # outputs by name, in the phantom set folder


def write_contact_sheet(root: str | Path, meta: pd.DataFrame, path: str | Path, columns: int = 8) -> Path:
    """Save a 3-row grid (raw, mask, gold) of `columns` images spread evenly over bone age."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root, path = Path(root), Path(path)
    ordered = meta.sort_values("boneage").reset_index(drop=True)
    picks = ordered.iloc[
        np.unique(np.linspace(0, len(ordered) - 1, min(columns, len(ordered))).round().astype(int))
    ]
    fig, axes = plt.subplots(3, len(picks), figsize=(1.9 * len(picks), 7.2), squeeze=False)
    for col, row in enumerate(picks.itertuples()):
        name = f"{row.id}.png"
        images = (
            read_image(root / row.path),
            read_image(root / "masks" / name),
            read_image(root / "gold" / name),
        )
        for ax, image, label in zip(axes[:, col], images, ("raw", "mask", "gold"), strict=True):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
        sex = "M" if row.male else "F"
        axes[0, col].set_title(
            f"{row.boneage:.0f} mo {sex}\n{row.bits}-bit{' inv' if row.inverted else ''}", fontsize=8
        )
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
