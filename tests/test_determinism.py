"""Deterministic training on GPUs: the paper's discriminator pools without adaptive pooling (whose CUDA backward
has no deterministic implementation), and the check's deterministic-mode row names any network that refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from medal.gpucheck import determinism
from medal.gpucheck.context import Context
from medal.gpucheck.sizes import TINY
from medal.models.discriminators import PairDiscriminator


def _backward_ops(tensor: torch.Tensor) -> set[str]:
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or type(node).__name__ in seen:
            continue
        seen.add(type(node).__name__)
        todo += [next_fn for next_fn, _ in node.next_functions]
    return seen


@pytest.mark.parametrize("size", [64, 256, 512])
def test_paper_discriminator_has_no_adaptive_pooling_in_its_backward(size: int) -> None:
    x = torch.rand(2, 1, size, size)
    ops = _backward_ops(PairDiscriminator(width=8)(x, x).sum())
    assert not any("AdaptiveAvgPool" in op for op in ops) and "MeanBackward1" in ops


def test_deterministic_row_names_the_network_that_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(ctx: Context) -> None:
        assert torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but ...")

    monkeypatch.setattr(determinism, "_regressor_step", lambda ctx: None)
    monkeypatch.setattr(determinism, "_committee_step", lambda ctx: None)
    monkeypatch.setattr(determinism, "_gan_step", refuses)
    ctx = Context(torch.device("cpu"), "cpu", "32-true", TINY, tmp_path, None)
    row = determinism.deterministic_steps(ctx, time.perf_counter() + 10)
    assert (row.status, row.value, row.goal) == ("failed", 2.0, 3.0)
    assert row.reason.startswith("GAN (G and D): adaptive_avg_pool2d_backward_cuda does not have")
    assert not torch.are_deterministic_algorithms_enabled()  # restored for the rows after it
