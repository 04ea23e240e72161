"""Progressive resizing: the first training epochs on downscaled batches, the later ones at the full size.

fast.ai's progressive resizing, and FixRes (Touvron et al., NeurIPS 2019) for why the last epochs must run at
the size the network is used at: a network trained at half the side sees a quarter of the pixels, learns most
of what it can at a quarter of the cost, and the last epochs at the full size adapt it to the scale of the
images it will be validated, tested and explained on. It pays where the input size is set by what the class
activation map must resolve rather than by what the regression needs: the demo trains 30 epochs at 128 px and
10 at 256 px, where a 32x32 map (output stride 8) can follow the fingers; a training step at 256 px costs
3.6x one at 128 px, the whole stage about 1.7x the 128-px stage (docs/experiments.md). Validation and test always run at the full size (`data.image_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medal.errors import MedalError


@dataclass(frozen=True)
class ProgressiveOptions:
    """`data.progressive`: the side of the early epochs' batches (None = off) and how many epochs use it."""

    size: int | None = None
    epochs: int = 0

    def check(self, full_size: int) -> None:
        """One line naming the key when the schedule cannot be followed at `data.image_size` = `full_size`."""
        if self.size is None:
            return
        if not 8 <= int(self.size) < int(full_size) or int(self.epochs) < 1:
            raise MedalError(f"data.progressive.size={self.size}, data.progressive.epochs={self.epochs}: the size must "
                             f"lie between 8 and data.image_size={full_size} (exclusive) and epochs be >= 1; "
                             "size null turns progressive resizing off")

    def size_at(self, epoch: int, full_size: int) -> int:
        """The side of the training batches in `epoch` (0-based).

        Examples:
            >>> schedule = ProgressiveOptions(size=128, epochs=30)
            >>> schedule.size_at(0, 256), schedule.size_at(29, 256), schedule.size_at(30, 256)
            (128, 128, 256)
            >>> ProgressiveOptions().size_at(0, 256)
            256
        """
        return int(self.size) if self.size is not None and epoch < int(self.epochs) else int(full_size)


def downscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) images to (B, C, size, size) by area averaging: every output pixel is the mean of the input
    pixels it covers, so thin bright structures (a growth plate) fade as they would in a smaller radiograph
    instead of aliasing.

    Examples:
        >>> downscale(torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]), 1)
        tensor([[[[0.5000]]]])
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="area")
