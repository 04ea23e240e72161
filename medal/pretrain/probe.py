"""Does a backbone's pooled feature carry bone age? A kNN regression probe on the target's labels.

Evaluation only: the probe fits nothing into the backbone. Features of the target's training images are the
neighbours, their labels the values; the score is the MAE on the target's validation images (never test).
The same probe on the backbone *before* pretraining (random init, or the `model.weights` it started from)
and the training-mean predictor sit beside it, so the number can be read: features that carry age beat both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medal.data.datamodule import collate_batches
from medal.errors import MedalError
from medal.pretrain.encoder import Encoder


def knn_regression(train: torch.Tensor, targets: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """Mean target of the `k` most cosine-similar training rows, for each query row.

    Features are standardised by the training rows' mean and SD first, so that dimensions where every image
    is alike (a ReLU network's mean activation) do not decide the similarity.

    Args:
        train: (N, D) features of the labelled rows.
        targets: (N,) their values.
        query: (M, D) features to predict for.
        k: neighbours, 1 <= k <= N.

    Returns:
        (M,) predictions, float64.

    Raises:
        MedalError: shapes that do not match, or `k` outside [1, N].

    Examples:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_regression(train, torch.tensor([10.0, 20.0, 100.0, 200.0]), torch.tensor([[1.0, 0.05]]), k=2)
        tensor([15.], dtype=torch.float64)
    """
    if train.dim() != 2 or query.dim() != 2 or train.shape[1] != query.shape[1] or len(targets) != len(train):
        raise MedalError(f"knn_regression: train {tuple(train.shape)}, targets {tuple(targets.shape)} and query "
                         f"{tuple(query.shape)} must be (N, D), (N,) and (M, D)")
    if not 1 <= k <= len(train):
        raise MedalError(f"probe.k={k}: must lie in [1, {len(train)}] (the number of labelled training images)")
    train, query = train.double(), query.double()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-8) if len(train) > 1 else 1.0
    a = torch.nn.functional.normalize((train - mean) / std, dim=1)
    b = torch.nn.functional.normalize((query - mean) / std, dim=1)
    nearest = (b @ a.T).topk(k, dim=1).indices  # (M, k)
    return targets.double()[nearest].mean(dim=1)


@torch.no_grad()
def pooled_features(encoder: Encoder, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, D) features, (N,) bone ages in months) of a bone age dataset, in eval mode, on the encoder's device."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    features, ages = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batches):
        features.append(encoder(batch["image"].to(device)).float().cpu())
        ages.append(batch["boneage"].float())
    encoder.train(was_training)
    return torch.cat(features), torch.cat(ages)


def probe_scores(encoders: dict[str, Encoder], train: Dataset, val: Dataset, k: int,
                 batch_size: int) -> dict[str, float]:
    """`probe/val_mae[_<name>]` of each encoder (the name "" is the pretrained one) and the train-mean MAE."""
    if not len(val):
        raise MedalError("probe: the target's validation split is empty; set data.split.val_fraction > 0")
    scores: dict[str, float] = {}
    for name, encoder in encoders.items():
        train_x, train_y = pooled_features(encoder, train, batch_size)
        val_x, val_y = pooled_features(encoder, val, batch_size)
        predicted = knn_regression(train_x, train_y, val_x, k)
        scores[f"probe/val_mae{'_' + name if name else ''}"] = float((predicted - val_y.double()).abs().mean())
    mean_age = float(np.mean(train_y.numpy()))
    scores["probe/val_mae_mean_predictor"] = float((val_y.double() - mean_age).abs().mean())
    return scores
