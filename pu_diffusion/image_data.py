"""U/S image data: loading through `datasets`, labelling rows as U or S, checking images, the image transform.

Every row of a PU dataset has an image and a PU label: it belongs to S (labelled sensitive) or to U
(unlabeled). The training scripts see one `datasets.Dataset` plus the index lists of U and S rows,
and draw batches of a fixed number of U rows and of S rows with :class:`pu_diffusion.sampling.PUBatchSampler`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


UNLABELED = "unlabeled"
SENSITIVE = "sensitive"


class PUDataError(ValueError):
    """Bad input data, reported before training with the flag or file at fault."""


def load_image_dataset(dataset_name: str | None = None, dataset_config_name: str | None = None,
                       train_data_dir: str | None = None, cache_dir: str | None = None, split: str = "train"):
    """Load a hub dataset (``--dataset_name``) or a local folder (``--train_data_dir``: imagefolder or parquet)."""
    from datasets import load_dataset

    if dataset_name:
        return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    if not os.path.isdir(train_data_dir):
        raise PUDataError(f"--train_data_dir {train_data_dir!r} is not a folder: give a folder of images "
                          f"(imagefolder with '{UNLABELED}/' and '{SENSITIVE}/' sub-folders) or of parquet files.")
    parquet_files = sorted(
        os.path.join(root, name) for root, _, names in os.walk(train_data_dir) for name in names
        if name.endswith(".parquet")
    )
    if parquet_files:
        return load_dataset("parquet", data_files={"train": parquet_files}, cache_dir=cache_dir, split="train")
    dataset = load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir)
    if split not in dataset:
        raise PUDataError(f"--train_data_dir {train_data_dir!r} has no '{split}' split (found {list(dataset)}).")
    dataset = dataset[split]
    sub_folders = {name for name in os.listdir(train_data_dir) if os.path.isdir(os.path.join(train_data_dir, name))}
    if "label" not in dataset.column_names and sub_folders & {UNLABELED, SENSITIVE}:
        # imagefolder infers no label from a single class folder, nor any when metadata.jsonl is present;
        # the PU label is still the name of the unlabeled/ or sensitive/ folder an image lies in.
        from datasets import Image as ImageFeature

        paths = dataset.cast_column("image", ImageFeature(decode=False))["image"]
        labels = []
        for value in paths:
            parts = os.path.normpath(os.path.relpath(value["path"], train_data_dir)).split(os.sep)
            labels.append(parts[0] if parts[0] in (UNLABELED, SENSITIVE) else UNLABELED)
        dataset = dataset.add_column("label", labels)
    return dataset


def _label_names(dataset, column: str) -> list[str]:
    """The PU label column as strings (ClassLabel ints become their names)."""
    from datasets import ClassLabel

    feature = dataset.features[column]
    values = dataset[column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(value)) for value in values]
    return [str(value) for value in values]


def pu_indices(dataset, image_column: str, pu_label_column: str, sensitive_label: str,
               require_sensitive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of U and of S. A row is in S when its ``pu_label_column`` equals ``sensitive_label``.

    Booleans compare case-insensitively ("true"/"True"/"1"). Raises PUDataError naming the flag at fault
    for a missing column, no U rows, or no S rows (when ``require_sensitive``).
    """
    columns = dataset.column_names
    if image_column not in columns:
        raise PUDataError(f"--image_column '{image_column}' is not a column of the dataset; its columns are "
                          f"{columns}. Pass --image_column with one of them.")
    if pu_label_column not in columns:
        raise PUDataError(f"--pu_label_column '{pu_label_column}' is not a column of the dataset; its columns are "
                          f"{columns}. Pass the column that says which rows are sensitive, or use an imagefolder "
                          f"with '{UNLABELED}/' and '{SENSITIVE}/' sub-folders.")
    labels = _label_names(dataset, pu_label_column)
    wanted = str(sensitive_label)
    if wanted.lower() in ("true", "false", "1", "0"):
        truthy = wanted.lower() in ("true", "1")
        is_sensitive = np.array([label.lower() in ("true", "1") for label in labels]) == truthy
    else:
        is_sensitive = np.array([label == wanted for label in labels], dtype=bool)
    sensitive = np.flatnonzero(is_sensitive)
    unlabeled = np.flatnonzero(~is_sensitive)
    seen = sorted(set(labels))[:10]
    if require_sensitive and len(sensitive) == 0:
        raise PUDataError(f"No sensitive (S) rows: no row has {pu_label_column} == '{wanted}' (values seen: {seen}). "
                          f"Set --sensitive_label to the value that marks S, or add images to '{SENSITIVE}/'.")
    if len(unlabeled) == 0:
        raise PUDataError(f"No unlabeled (U) rows: every row has {pu_label_column} == '{wanted}'. "
                          f"Add the unlabeled images (e.g. an '{UNLABELED}/' sub-folder).")
    return unlabeled, sensitive


def find_unreadable_images(dataset, image_column: str, max_reports: int = 5) -> list[str]:
    """Decode every image of ``image_column``; return descriptions (file path or row) of those that fail."""
    from datasets import Image as ImageFeature

    raw = dataset.cast_column(image_column, ImageFeature(decode=False)) \
        if isinstance(dataset.features[image_column], ImageFeature) else dataset
    problems = []
    for row, value in enumerate(raw[image_column]):
        where = f"row {row}"
        try:
            if isinstance(value, dict):
                where = value.get("path") or where
                source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
                with Image.open(source) as image:
                    image.load()
            elif isinstance(value, Image.Image):
                value.load()
            elif isinstance(value, str):
                where = value
                with Image.open(value) as image:
                    image.load()
            else:
                raise TypeError(f"not an image: {type(value).__name__}")
        except Exception as error:  # noqa: BLE001 - any decoder failure means the file is unusable
            problems.append(f"{where}: {error}")
            if len(problems) >= max_reports:
                break
    return problems


def check_images_readable(dataset, image_column: str) -> None:
    """Raise PUDataError listing unreadable images (decodes every image; skip with --skip_image_check)."""
    problems = find_unreadable_images(dataset, image_column)
    if problems:
        raise PUDataError("Unreadable image files (fix or remove them, or pass --skip_image_check):\n  "
                          + "\n  ".join(problems))


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

    def __call__(self, image: Image.Image, aug_seed: int = 0, flip: bool | None = None) -> torch.Tensor:
        rng = np.random.default_rng(aug_seed)
        flip_draw = rng.random() < 0.5  # drawn first, so flips() agrees with it
        if flip is None:
            flip = self.random_flip and flip_draw
        image = image.convert("L" if self.channels == 1 else "RGB")
        width, height = image.size
        scale = self.resolution / min(width, height)
        if scale != 1:
            image = image.resize((max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale))),
                                 Image.BILINEAR)
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


class PUImageDataset(torch.utils.data.Dataset):
    """Wraps a `datasets.Dataset`; items are keyed by (row, aug_seed) as yielded by PUBatchSampler."""

    def __init__(self, dataset, image_column: str, sensitive_rows, transform: ImageTransform):
        self.dataset = dataset
        self.image_column = image_column
        self.sensitive_rows = set(int(row) for row in sensitive_rows)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        row, aug_seed = key
        image = self.dataset[int(row)][self.image_column]
        return {"pixel_values": self.transform(image, aug_seed), "is_sensitive": int(row) in self.sensitive_rows}


def collate_pu_batch(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "is_sensitive": torch.tensor([item["is_sensitive"] for item in items], dtype=torch.bool),
    }
