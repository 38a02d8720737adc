"""From U/S rows to training tensors: the image transform (resumable random crops and flips), the torch dataset
keyed by (row, aug_seed) as PUBatchSampler yields it, its collate function, and a whole-set tensor for estimation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def to_8_bit(image: Image.Image) -> Image.Image:
    """Rescale a high-bit-depth grayscale image to 8-bit ``L`` by its bit depth (PIL's convert would clip it).

    ``I;16*`` (16-bit PNG/TIFF) and ``I`` (32-bit int, taken as the 16-bit range 0..65535): divided by 257.
    ``F`` (float): taken as [0, 1] when its maximum is at most 1, else as [0, 255]. Other modes are returned as
    they are.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image).astype(np.float64) / 257.0
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image).astype(np.float64))
        if array.size and array.max() <= 1:
            array = array * 255.0
    else:
        return image
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


@dataclass
class ImageTransform:
    """Resize the short side to ``resolution``, crop (center or random), flip, scale to [-1, 1].

    Random choices come from ``aug_seed`` so the same (row, aug_seed) always gives the same tensor,
    which is what makes resuming mid-epoch exact.
    """

    resolution: int
    channels: int = 3
    center_crop: bool = False
    random_flip: bool = False

    @staticmethod
    def flips(aug_seed: int) -> bool:
        """Whether ``aug_seed`` flips the image (when random_flip is on): the first draw of its RNG."""
        return bool(np.random.default_rng(aug_seed).random() < 0.5)

    def __call__(
        self, image: Image.Image, aug_seed: int = 0, flip: bool | None = None, zoom: float = 0.0
    ) -> torch.Tensor:
        """``zoom`` z > 0: before all else, crop a random square of side s / f from the image's central square
        (side s) at a random position, f ~ U[1, 1 + z] (drawn from its own stream of ``aug_seed``)."""
        rng = np.random.default_rng(aug_seed)
        flip_draw = rng.random() < 0.5  # drawn first, so flips() agrees with it
        if flip is None:
            flip = self.random_flip and flip_draw
        image = to_8_bit(image).convert("L" if self.channels == 1 else "RGB")
        if zoom > 0:
            image = random_zoom(image, zoom, np.random.default_rng([aug_seed, 1]))
        width, height = image.size
        scale = self.resolution / min(width, height)
        if scale != 1:
            image = image.resize(
                (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale))),
                Image.BILINEAR,
            )
        width, height = image.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left = int(rng.integers(0, width - self.resolution + 1))
            top = int(rng.integers(0, height - self.resolution + 1))
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))


def random_zoom(image: Image.Image, zoom: float, rng: np.random.Generator) -> Image.Image:
    """A random square of the image's central square, 1/f of its side, f ~ U[1, 1 + zoom], at a random position."""
    width, height = image.size
    side = min(width, height)
    crop = max(1, round(side / rng.uniform(1.0, 1.0 + zoom)))
    left = (width - side) // 2 + int(rng.integers(0, side - crop + 1))
    top = (height - side) // 2 + int(rng.integers(0, side - crop + 1))
    return image.crop((left, top, left + crop, top + crop))


class PUImageDataset(torch.utils.data.Dataset):
    """Wraps a `datasets.Dataset`; items are keyed by (row, aug_seed) as yielded by PUBatchSampler.

    ``sensitive_zoom`` z > 0 zooms each S image in at random (:func:`random_zoom`, --sensitive_augment)."""

    def __init__(self, dataset, image_column: str, sensitive_rows, transform: ImageTransform, sensitive_zoom=0.0):
        self.dataset = dataset
        self.image_column = image_column
        self.sensitive_rows = set(int(row) for row in sensitive_rows)
        self.transform = transform
        self.sensitive_zoom = sensitive_zoom

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        row, aug_seed = key
        image = self.dataset[int(row)][self.image_column]
        sensitive = int(row) in self.sensitive_rows
        zoom = self.sensitive_zoom if sensitive else 0.0
        return {"pixel_values": self.transform(image, aug_seed, zoom=zoom), "is_sensitive": sensitive}


def collate_pu_batch(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "is_sensitive": torch.tensor([item["is_sensitive"] for item in items], dtype=torch.bool),
    }


def images_as_tensor(dataset, image_column: str, rows, resolution: int, channels: int) -> torch.Tensor:
    """The images of ``rows``, centre-cropped to ``resolution`` and scaled to [-1, 1], stacked (N×C×H×W)."""
    transform = ImageTransform(resolution, channels, center_crop=True, random_flip=False)
    return torch.stack([transform(dataset[int(row)][image_column]) for row in rows])
