"""medal: config-driven experiments for medical imaging with scarce labels."""
