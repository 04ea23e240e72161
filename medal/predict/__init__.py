"""`medal predict`: bone age, with a calibrated interval, for new radiographs, through a model bundle.

`inputs` (folder, CSV or RSNA layout; shards), `chain` (the batched chain as a LightningModule),
`ensemble`, `conformal` and `qc` (pure functions), `calibrate` (the bundle's calibration table),
`rows` (predictions.csv: resume, merge), `page` (the HTML page), `run` (the task).
"""
