"""pu-diffusion: Positive-Unlabeled training of diffusion models (the library shared by the training scripts)."""

__version__ = "0.1.0"
