"""Network architectures shared by the learned stages (U-Net, discriminators, FC-DenseNet, regressors)."""
