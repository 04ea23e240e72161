"""Classical preprocessing: the one Otsu binarisation and mask clean-up (`masks`), coarse hand masks and
polarity (`coarse`), RoI cropping (`crop`)."""
