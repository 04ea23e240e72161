"""Data layer: RSNA layouts, phantoms, image decoding, cache, DataModules."""
