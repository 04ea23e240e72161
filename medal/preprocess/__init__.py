"""Classical preprocessing: coarse hand masks (polarity, Otsu, components, morphology) and RoI cropping."""
