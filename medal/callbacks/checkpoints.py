"""The two checkpoints every training task keeps: the best by a validation metric, and the latest.

Lightning (2.6) writes `save_last=True`'s last.ckpt only in a step where a top-k checkpoint was also
saved, so once the monitored metric stops improving last.ckpt stops moving, and a run that is stopped
and resumed would go back to its best epoch instead of carrying on. A second, unmonitored callback that
keeps one file rewrites last.ckpt at the end of every training epoch instead.

Both save when the training epoch ends rather than when validation ends: Lightning runs the other
callbacks' epoch-end hooks first, so the state of paced transfer learning saved with the weights already
counts the epoch, and validation metrics exist by then.

A run continues from its last.ckpt (`resume_from`), read as weights only: tensors and plain values
(Lightning's loops, callback states, hyper-parameters as a dict), never by unpickling, so a checkpoint
someone planted in a run folder cannot run code. `resume_from` checks the file before Lightning opens it,
so a refusal is one line naming the file; the tasks also pass `weights_only=True` to `Trainer.fit`, so
Lightning's own load stays safe whatever torch's default (`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from medal.errors import MedalError

LAST = "last"


def latest(ckpt_dir: str | Path) -> ModelCheckpoint:
    """`last.ckpt`, rewritten at the end of every training epoch (all a run without a validation metric keeps)."""
    return ModelCheckpoint(dirpath=ckpt_dir, filename=LAST, monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)


def best_and_last(ckpt_dir: str | Path, monitor: str, mode: str,
                  best_name: str = "best-{epoch:03d}") -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best by `monitor` as `<best_name>.ckpt`, `last.ckpt` rewritten every training epoch)."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename=best_name, monitor=monitor, mode=mode, save_top_k=1,
                           auto_insert_metric_name=False, save_on_train_epoch_end=True)
    return best, latest(ckpt_dir)


def resume_from(last: str | Path, resume: bool) -> str | None:
    """The checkpoint a run continues from: `last` when `resume` and the file exists, else None (a fresh start).

    The file is opened as weights only (memory-mapped, so a large checkpoint costs little); one that holds
    anything else (a pickled object, which unpickling would run) or cannot be read is refused in one line.
    """
    last = Path(last)
    if not (resume and last.is_file()):
        return None
    try:
        torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise MedalError(
            f"{last}: holds objects that only unpickling could load ({_refused(err)}); medal never unpickles a checkpoint: "
            "delete that file to restart the run from scratch, or rerun in a new output folder") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise MedalError(f"{last}: not a readable checkpoint ({type(err).__name__}); delete that file to restart "
                         "the run from scratch, or rerun in a new output folder") from None
    return str(last)


def _refused(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader refused, from its many-line message (e.g. `Unsupported global: GLOBAL exec`).

    Examples:
        >>> _refused(pickle.UnpicklingError("Weights only load failed.\\n\\tWeightsUnpickler error: Unsupported "
        ...                                 "global: GLOBAL os.system was not an allowed global by default."))
        'Unsupported global: GLOBAL os.system'
    """
    found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\.?$)", str(err), re.MULTILINE)
    return found.group(1) if found else "not tensors and plain values"
