"""Deep active learning, independent of what is segmented: the model protocol, query strategies and pool
scoring, the labelled pool, oracles and the round loop. Imports nothing from `medal.segment`."""
