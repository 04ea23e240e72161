"""Figures of an active-learning run: the queried images with each member's mask (paper Figure 8)
and the learning curve (Dice against the number of labelled images)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medal.plotting import save_figure


def query_grid(images: np.ndarray, member_masks: np.ndarray, ids: Sequence[str], path: Path, title: str = "",
               scores: Sequence[float] | None = None) -> Path:
    """One row per queried image: the image, then each member's binarised mask over it.

    images (N, S, S) in [0, 1]; member_masks (M, N, S, S) bool; scores (N,), the strategy's score of each
    image, shown under its id. Disagreeing members show as visibly different overlays, which is what the
    paper's Figure 8 illustrates.
    """
    m, n = member_masks.shape[:2]
    fig, axes = plt.subplots(n, m + 1, figsize=(1.6 * (m + 1), 1.6 * n + 0.3), squeeze=False, layout="constrained")
    for r in range(n):
        axes[r, 0].imshow(images[r], cmap="gray", vmin=0, vmax=1)
        label = str(ids[r]) if scores is None else f"{ids[r]}\nscore {scores[r]:.3g}"
        axes[r, 0].set_ylabel(label, fontsize=7)
        for k in range(m):
            ax = axes[r, k + 1]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_where(~member_masks[k, r], member_masks[k, r]), cmap="autumn", alpha=0.45)
            if r == 0:
                ax.set_title(f"member {k}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


def learning_curve(curves: dict[str, Sequence[tuple[float, float, float]]], path: Path, metric: str = "Dice",
                   references: dict[str, float] | None = None) -> Path:
    """Metric vs labelled count: curves name -> [(labelled, mean, std)], std drawn as a band.

    `references` adds horizontal lines (e.g. the coarse Otsu baseline, a U-Net on random labels).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, points in curves.items():
        pts = np.asarray(sorted(points), dtype=float)
        ax.plot(pts[:, 0], pts[:, 1], marker="o", ms=3, label=name)
        if pts.shape[1] > 2 and np.any(pts[:, 2] > 0):
            ax.fill_between(pts[:, 0], pts[:, 1] - pts[:, 2], pts[:, 1] + pts[:, 2], alpha=0.2)
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{len(curves) + k}", label=name)
    ax.set_xlabel("labelled images")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)
