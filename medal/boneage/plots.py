"""Agreement plots of one run: Bland–Altman and predicted-vs-true, coloured by sex."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medal.plotting import save_figure


def bland_altman(preds: np.ndarray, target: np.ndarray, male: np.ndarray, path: str | Path,
                 title: str = "") -> Path:
    """Difference (predicted - true) against the mean of both, with bias and 95% limits of agreement."""
    preds, target, male = np.asarray(preds, float), np.asarray(target, float), np.asarray(male).astype(bool)
    diff, mean = preds - target, (preds + target) / 2
    bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for mask, label, color in ((male, "male", "tab:blue"), (~male, "female", "tab:red")):
        ax.scatter(mean[mask], diff[mask], s=12, alpha=0.7, label=label, color=color)
    ax.axhline(bias, color="k", label=f"bias {bias:.2f}")
    for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
        ax.axhline(limit, color="k", linestyle="--")
    ax.set(xlabel="mean of predicted and true bone age (months)", ylabel="predicted - true (months)",
           title=title or f"Bland–Altman (limits {bias - 1.96 * sd:.1f} to {bias + 1.96 * sd:.1f})")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def predicted_vs_true(preds: np.ndarray, target: np.ndarray, male: np.ndarray, path: str | Path,
                      title: str = "") -> Path:
    """Scatter of predicted against true bone age with the identity line."""
    preds, target, male = np.asarray(preds, float), np.asarray(target, float), np.asarray(male).astype(bool)
    fig, ax = plt.subplots(figsize=(5, 5))
    for mask, label, color in ((male, "male", "tab:blue"), (~male, "female", "tab:red")):
        ax.scatter(target[mask], preds[mask], s=12, alpha=0.7, label=label, color=color)
    both = np.concatenate([preds, target]) if preds.size else np.array([0.0, 240.0])
    lo, hi = float(both.min()), float(both.max())
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=1)
    mae = float(np.abs(preds - target).mean()) if preds.size else float("nan")
    ax.set(xlabel="true bone age (months)", ylabel="predicted bone age (months)",
           title=title or f"predicted vs true (MAE {mae:.2f} months)")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
