"""Deep active learning: query strategies, the labelled pool, oracles and the round loop."""
