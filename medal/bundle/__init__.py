"""Model bundles: one folder that carries a trained system (segmentation committee, enhancer, bone age
regressors, every preprocessing setting, a conformal calibration table) to new radiographs.

`spec` (what the chain is), `sources` (reading it from finished runs), `export` (`medal export`),
`manifest` (`bundle.json`: versions, parts, hashes), `load` (verified loading), `onnx` (optional ONNX copies).
"""
