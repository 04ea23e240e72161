"""The fine-tuning stages of a bone age regressor and the fine-tune modes built on them: defined once here.

Paced transfer learning unfreezes the stages from the top (`STAGES` order); each fixed mode of the paper's
Figure 12 trains the top k of them for the whole run. The callbacks, the Figure 12 table, the bone age
experiment's messages and the scripts all read these names, and `conf/finetune/` has one file per mode
(a test checks that the two agree). No imports, so the table task and scripts read them without torch.
"""

from __future__ import annotations

#: Fine-tuning stages from the top of the network to the bottom (the order paced transfer learning unfreezes).
STAGES: tuple[str, ...] = ("head", "exit", "middle", "entry", "stem")
#: The backbone's blocks: every stage but the head. A model's YAML block map assigns its modules to these.
BACKBONE_BLOCKS: tuple[str, ...] = STAGES[1:]

#: Number of stages (from the top, see `STAGES`) each fixed fine-tune mode trains, in Figure 12's row order.
FIXED_MODES: dict[str, int] = {"above_fc": 1, "above_exit": 2, "above_mid": 3, "above_entry": 4, "all": 5}
#: Paced transfer learning: every stage in turn, each when the loss plateaus (`callbacks/paced.py`), with the
#: reference code's stage learning rates: the paper's row of Figure 12.
PACED_MODE = "ptl"
#: Every reading of paced transfer learning (`conf/finetune/ptl*.yaml`): the reference code's rates, the paper's
#: text (every stage at the base rate, one decay), ULMFiT's discriminative rates, a fresh decay per stage.
PACED_MODES: tuple[str, ...] = (PACED_MODE, "ptl_paper", "ptl_discriminative", "ptl_restart")
#: Every `finetune=` choice, in the row order of the paper's Figure 12 (the PTL variants after its PTL row).
FINETUNE_MODES: tuple[str, ...] = (*FIXED_MODES, *PACED_MODES)
