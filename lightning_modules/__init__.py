"""maxsim-lightning: late-interaction (MaxSim) text models, trained with PyTorch Lightning."""
