"""Source pretraining (`medal pretrain`): a backbone that `model.weights=PATH` loads, so fine-tune modes and
paced transfer learning start from weights that already read radiographs.

`data` (which images each method reads; never the target's val/test) -> `views` (SimCLR's random views) ->
`encoder` (the regressor's backbone, normalisation and pooling) -> `module` (SimCLR, supervised source task) ->
`experiment` (fit, export `backbone.safetensors`, kNN `probe` on the target's val labels) -> `tasks/pretrain.py`.
"""
