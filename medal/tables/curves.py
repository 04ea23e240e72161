"""Figure 11 of the paper: training loss over epochs for each fine-tune mode, one panel per cohort,
with paced transfer learning's stage changes marked (read from the logged `ptl/stage`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medal.errors import MedalError  # noqa: E402
from medal.models.stages import FINETUNE_MODES  # noqa: E402
from medal.tables.folder_runs import RunResult  # noqa: E402
from medal.tables.table import FIGURE12  # noqa: E402

STAGE_LINE_GID = "stage-boundary"  # gid of the vertical lines, so callers/tests can find them


def stage_boundaries(history: pd.DataFrame, stage_key: str = "ptl/stage") -> list[int]:
    """Epochs whose stage differs from the previous logged epoch's: the first epoch of each new stage."""
    if history is None or stage_key not in history.columns:
        return []
    stages = history[["epoch", stage_key]].dropna().sort_values("epoch")
    changed = stages[stage_key].ne(stages[stage_key].shift()) & stages[stage_key].shift().notna()
    return [int(e) for e in stages.loc[changed, "epoch"]]


def plot_loss_curves(
    runs: Sequence[RunResult],
    metric: str = "train/loss",
    hue: str = "finetune.name",
    panel: str = "cohort.name",
    where: Mapping[str, Any] | None = None,
    stage_key: str = "ptl/stage",
    hue_order: Sequence[str] = FINETUNE_MODES,
    panel_order: Sequence[str] = ("all", "male", "female"),
    labels: Mapping[str, str] = FIGURE12.labels,
) -> Figure:
    """One panel per `panel` value, one line per run coloured by `hue`; dashed verticals at stage changes."""
    where = dict(where or {})
    chosen = [r for r in runs if r.history is not None and metric in r.history.columns
              and all(str(r.get(k)) == str(v) for k, v in where.items())]
    if not chosen:
        raise MedalError(f"no run logged {metric!r} per epoch" + (f" among runs with {where}" if where else "")
                         + "; were the runs trained with the csv or wandb logger?")
    panels = [p for p in panel_order if any(str(r.get(panel)) == p for r in chosen)]
    panels += sorted({str(r.get(panel)) for r in chosen} - set(panels))
    hues = [h for h in hue_order if any(str(r.get(hue)) == h for r in chosen)]
    hues += sorted({str(r.get(hue)) for r in chosen} - set(hues))
    colours = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(hues)}

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, panel_value in zip(axes[0], panels, strict=True):
        labelled: set[str] = set()
        for run in (r for r in chosen if str(r.get(panel)) == panel_value):
            hue_value = str(run.get(hue))
            curve = run.history[["epoch", metric]].dropna()
            name = labels.get(f"{hue}={hue_value}", labels.get(hue_value, hue_value))
            label = name if hue_value not in labelled else None
            labelled.add(hue_value)
            ax.plot(curve["epoch"], curve[metric], marker="o", ms=3, color=colours[hue_value], label=label)
            for epoch in stage_boundaries(run.history, stage_key):
                ax.axvline(epoch, color=colours[hue_value], ls="--", lw=0.8, alpha=0.7, gid=STAGE_LINE_GID)
        ax.set_title(f"{panel.split('.')[0]}: {labels.get(f'{panel}={panel_value}', panel_value)}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    # beside the last panel, not on it: inside, it hid a panel's late stage lines (the female panel's epoch 8)
    axes[0][-1].legend(fontsize=8, title=hue.split(".")[0], loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0)
    caption = "dashed: stage changes of paced transfer learning" + (f"; runs with {where}" if where else "")
    fig.suptitle(f"{metric} per epoch ({caption})", fontsize=9)
    fig.tight_layout()
    return fig


