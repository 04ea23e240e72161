"""Hand RoI enhancement (paper section 2.3): pix2pix-style conditional GAN, CLAHE and identity baselines."""
