"""The scale benchmark (`scripts/bench_scale.py`, `make bench-scale`): every stage measured as n grows."""
