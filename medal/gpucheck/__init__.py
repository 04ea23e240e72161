"""`medal.gpucheck`: one prepared process that measures medal at the paper's sizes on one GPU (issue 16).

`python -m medal.gpucheck` (`scripts/gpu_check.py`, `make gpu-check`) generates its own phantoms and writes
`outputs/bench/gpu/gpu_check.json` and `gpu_check.md`, then prints the table. Every measurement is a `Row`
with its own time box (`timing.Budget`): a row that fails or runs out of time is recorded as such and the next
one runs, so one broken part never costs the whole (rare, short) GPU lease. `--device cpu --tiny` runs the same
code paths at toy sizes in a few minutes, so the script is known to work before a GPU is ever lent.

Modules: `timing` (budget, device clocks, memory peaks, the Lightning step timer), `record` (rows, JSON and
markdown), `sizes` (full and tiny settings), `context` (device, precision, task configs composed as the tasks do),
`boneage_rows`, `segment_rows`, `enhance_rows`, `determinism`, `pipeline_rows` (the measurements), `check`
(the command).
"""
