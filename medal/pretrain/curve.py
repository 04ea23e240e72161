"""The per-epoch training loss of a pretraining run, kept in the checkpoint so a resumed run's curve is whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

from medal.plotting import save_figure  # noqa: E402


class LossCurve(pl.Callback):
    """Records `monitor` (an epoch-mean loss) at the end of every training epoch; `state_dict` carries it."""

    def __init__(self, monitor: str = "train/loss") -> None:
        self.monitor = monitor
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.losses.append(float(value))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(v) for v in state_dict["losses"]]

    def metrics(self) -> dict[str, float]:
        """`train/loss_epoch<k>` for every epoch k (from 1), and `train/loss_first` / `train/loss_last`."""
        if not self.losses:
            return {}
        curve = {f"train/loss_epoch{k}": loss for k, loss in enumerate(self.losses, start=1)}
        return {**curve, "train/loss_first": self.losses[0], "train/loss_last": self.losses[-1]}

    def plot(self, path: str | Path, title: str) -> Path:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(range(1, len(self.losses) + 1), self.losses, marker="o", markersize=3)
        ax.set(xlabel="epoch", ylabel=self.monitor, title=title)
        ax.grid(alpha=0.3)
        return save_figure(fig, path)
