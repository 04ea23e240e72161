"""Results of many runs -> tables and figures.

Runs come from a Hydra multirun folder (`folder_runs.py`) or from W&B, online or offline (`wandb_runs.py`); both give
the same `RunResult` records, so `table.py` (ablation tables, Figure 12) and `curves.py` (Figure 11) don't care
where the numbers were stored.
"""

from medal.tables.folder_runs import RunResult, collect_runs

__all__ = ["RunResult", "collect_runs"]
