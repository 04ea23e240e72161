"""The committee behind active learning's `SegModel` protocol (`medal.active.model`).

`CommitteeModel` owns a `Committee` (N FC-DenseNets, or the baseline's one U-Net), how a round trains it
(`RoundTraining`), and where and how it predicts: on `device` (it starts there, and Lightning hands a fitted
module back on the CPU, so every fit and every checkpoint load moves it back), in batches of `batch_size` under
`inference_mode`, with bf16 autocast when `fast`. Outputs come back as float32 CPU tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from medal.active.model import in_chunks
from medal.segment.committee import Committee
from medal.segment.train import RoundTraining


class CommitteeModel:
    """`fit`, `predict_probs` (M, N, S, S), `features` (M, N, D), `state_dict` / `load_state_dict`."""

    def __init__(self, committee: Committee, training: RoundTraining | None, device: str, fast: bool,
                 batch_size: int) -> None:
        """`training` None: a trained committee used for prediction only (`medal predict`); `fit` refuses."""
        self.committee, self.training = committee, training
        self.device, self.fast, self.batch_size = device, fast, batch_size
        self.committee.to(device)

    @property
    def members(self) -> int:
        return len(self.committee.members)

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        if self.training is None:
            raise TypeError("this CommitteeModel predicts only (built without RoundTraining)")
        metrics = self.training.fit(self.committee, images, masks)
        self.committee.to(self.device)  # Lightning hands the module back on the CPU
        return metrics

    def _autocast(self):
        if not self.fast:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def _forward(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (M, b, S, S), features (M, b, D)) of one batch, float32 on the CPU."""
        was_training = self.committee.training
        self.committee.eval()
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None].to(self.committee.device)
        try:
            with self._autocast():
                logits, features = self.committee(x)
        finally:
            self.committee.train(was_training)
        return torch.sigmoid(logits.float())[:, :, 0].cpu(), features.float().cpu()

    def predict_probs(self, images: np.ndarray) -> torch.Tensor:
        return in_chunks(lambda x: self._forward(x)[0], images, self.batch_size, dim=1, desc="predicting")

    def features(self, images: np.ndarray) -> torch.Tensor:
        return in_chunks(lambda x: self._forward(x)[1], images, self.batch_size, dim=1, desc="features")

    def state_dict(self) -> Mapping[str, Any]:
        return self.committee.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.committee.load_state_dict(state)
        self.committee.to(self.device)
