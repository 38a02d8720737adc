"""U/S image data: loading through `datasets`, labelling rows as U or S, checking images, the image transform.

Every row of a PU dataset has an image and a PU label: it belongs to S (labelled sensitive) or to U
(unlabeled). The training scripts see one `datasets.Dataset` plus the index lists of U and S rows,
and draw batches of a fixed number of U rows and of S rows with :class:`pu_diffusion.batch_sampler.PUBatchSampler`.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .cli import UsageError

UNLABELED = "unlabeled"
SENSITIVE = "sensitive"


class PUDataError(UsageError):
    """Bad input data, reported before training with the flag or file at fault."""


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    cache_dir: str | None = None,
    split: str = "train",
):
    """Load a hub dataset (``--dataset_name``) or a local folder (``--train_data_dir``: imagefolder or parquet).

    Before an imagefolder goes to `datasets`, the folder is checked (see :func:`check_imagefolder`): it must hold
    images, every metadata.jsonl line must be a JSON object with a file_name, and every image must be listed
    when metadata.jsonl files are present (imagefolder silently drops the images they do not list).
    """
    from datasets import load_dataset

    if dataset_name:
        return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    if not os.path.isdir(train_data_dir):
        raise PUDataError(
            f"--train_data_dir {train_data_dir!r} is not a folder: give a folder of images "
            f"(imagefolder with '{UNLABELED}/' and '{SENSITIVE}/' sub-folders) or of parquet files."
        )
    parquet_files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(train_data_dir)
        for name in names
        if name.endswith(".parquet")
    )
    if parquet_files:
        return load_dataset("parquet", data_files={"train": parquet_files}, cache_dir=cache_dir, split="train")
    check_imagefolder(train_data_dir)
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


def imagefolder_files(train_data_dir: str) -> dict[str, list[str]]:
    """The files `datasets`' imagefolder reads from ``train_data_dir``, per split, as absolute paths.

    Uses datasets' own data-file resolution (split folders such as ``train/``/``test/``, hidden files and
    ``__*`` folders skipped), so the checks below see exactly what ``load_dataset("imagefolder")`` sees.
    Empty when the folder holds no data files at all.
    """
    from pathlib import Path

    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    base_path = Path(train_data_dir).expanduser().resolve().as_posix()
    try:
        patterns = get_data_patterns(base_path)
    except EmptyDatasetError:
        return {}
    data_files = DataFilesDict.from_patterns(patterns, base_path=base_path)
    return {str(split): [os.path.normpath(str(path)) for path in files] for split, files in data_files.items()}


def is_image_file(path: str) -> bool:
    """Whether `datasets`' imagefolder takes ``path`` as an image: its extension, or the one before a
    compression extension ("a.png.gz"), is an image extension (case-insensitive)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    stem, extension = os.path.splitext(path)
    return extension.lower() in ImageFolder.EXTENSIONS or os.path.splitext(stem)[1].lower() in ImageFolder.EXTENSIONS


def check_imagefolder(train_data_dir: str) -> None:
    """Refuse an imagefolder `datasets` would load wrongly or with an unclear error (PUDataError naming the file).

    No images at all; a bad metadata.jsonl line (:func:`read_metadata_jsonl`); images that no metadata.jsonl
    of their split lists (imagefolder drops them silently). A metadata.jsonl may lie in a sub-folder: its
    file_name values are relative to its own folder, as in `datasets`.
    """
    files = imagefolder_files(train_data_dir)
    all_files = [path for split_files in files.values() for path in split_files]
    if not any(is_image_file(path) or path.lower().endswith(".zip") for path in all_files):
        raise PUDataError(
            f"--train_data_dir {train_data_dir!r} holds no images (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, ... "
            f"files) and no parquet files. Expected: images in '{UNLABELED}/' and '{SENSITIVE}/' sub-folders, or "
            "images with a metadata.jsonl whose lines name them (file_name) and their PU label, or parquet files."
        )
    base_path = os.path.realpath(os.path.expanduser(train_data_dir))
    unlisted, metadata_files = [], []
    for split_files in files.values():
        split_unlisted, split_metadata = _unlisted_images(split_files)
        unlisted += split_unlisted
        metadata_files += split_metadata
    if unlisted:
        unlisted = sorted(os.path.relpath(path, base_path).replace(os.sep, "/") for path in unlisted)
        metadata_names = sorted({os.path.relpath(path, base_path).replace(os.sep, "/") for path in metadata_files})
        raise PUDataError(
            f"{len(unlisted)} image{'s' if len(unlisted) != 1 else ''} in --train_data_dir {train_data_dir!r} "
            f"{'are' if len(unlisted) != 1 else 'is'} not listed in {', '.join(metadata_names)}: "
            f"{_first_few(unlisted)}. `datasets` loads only the images a metadata.jsonl lists (file_name, relative "
            "to the metadata file's folder) and would drop them silently: add a line for each, or move them out of the folder."
        )


def _unlisted_images(split_files: list[str]) -> tuple[list[str], list[str]]:
    """(images no metadata.jsonl of the split lists, the split's metadata.jsonl files); none without metadata."""
    metadata_files = [path for path in split_files if os.path.basename(path) == "metadata.jsonl"]
    if not metadata_files:
        return [], []
    listed = set()
    for metadata_file in metadata_files:
        folder = os.path.dirname(metadata_file)
        listed.update(os.path.normpath(os.path.join(folder, name)) for name in read_metadata_jsonl(metadata_file))
    return [path for path in split_files if is_image_file(path) and path not in listed], metadata_files


def read_metadata_jsonl(path: str) -> list[str]:
    """Validate one metadata.jsonl line by line; return the image paths it lists (its file_name values).

    Each non-blank line must be a JSON object with a string ``file_name`` (or ``<column>_file_name``), and a key
    must keep one JSON type across lines (null aside), as the pyarrow reader of `datasets` requires. Raises
    PUDataError naming the file, the 1-based line number and what is wrong.
    """
    file_names, first_kinds = [], {}
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError:
                raise PUDataError(f"{where}: not UTF-8 text. Save {os.path.basename(path)} as UTF-8.") from None
            except json.JSONDecodeError as error:
                raise PUDataError(
                    f"{where}: not valid JSON ({error.msg} at column {error.colno}). Each line must "
                    'be one JSON object, e.g. {"file_name": "0001.png", "label": "unlabeled"}.'
                ) from None
            if not isinstance(row, dict):
                raise PUDataError(
                    f"{where}: a JSON {_json_kind(row)}, not an object. Each line must be one JSON "
                    'object, e.g. {"file_name": "0001.png", "label": "unlabeled"}.'
                )
            names = [
                value
                for key, value in row.items()
                if (key == "file_name" or key.endswith("_file_name")) and isinstance(value, str)
            ]
            if not names:
                raise PUDataError(
                    f'{where}: no "file_name" (a string: the image path relative to the folder of '
                    f"{os.path.basename(path)}); keys are {list(row)}. Add it to the line."
                )
            for name in names:
                if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
                    raise PUDataError(
                        f"{where}: file_name {name!r} leaves the folder of {os.path.basename(path)}: give a path "
                        "relative to that folder, inside it (no leading /, no '..')."
                    )
            file_names += names
            for key, value in row.items():
                if value is None:
                    continue
                kind = _json_kind(value)
                first_number, first_kind = first_kinds.setdefault(key, (number, kind))
                if kind != first_kind:
                    raise PUDataError(
                        f'{where}: "{key}" is {_article(kind)} but line {first_number} has '
                        f"{_article(first_kind)}; give a key the same type on every line."
                    )
    return file_names


def _json_kind(value) -> str:
    """The JSON type name of a parsed value (ints and floats are both "number")."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), type(value).__name__)


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _first_few(items: list[str], limit: int = 5, total: int | None = None) -> str:
    """'a, b, c, d, e and 3 more': the first ``limit`` items of ``total`` (default: all of ``items``)."""
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {total - limit} more" if total > limit else "")


def describe_rows(dataset, rows, image_column: str | None = None, limit: int = 5) -> str:
    """Name rows for an error message: their image files where the dataset has paths, else 'row N'.

    Local paths are shown relative to the folder all the dataset's images share (e.g. 'unlabeled/003.png').
    At most ``limit`` rows are named, then 'and N more'. ``image_column`` defaults to the first Image column.
    """
    from datasets import Image as ImageFeature

    rows = [int(row) for row in rows]
    if image_column is None:
        image_column = next(
            (name for name, feature in dataset.features.items() if isinstance(feature, ImageFeature)), None
        )
    names = [f"row {row}" for row in rows[:limit]]
    if image_column in dataset.column_names and isinstance(dataset.features[image_column], ImageFeature):
        values = dataset.cast_column(image_column, ImageFeature(decode=False))[image_column]
        paths = [value.get("path") if isinstance(value, dict) else None for value in values]
        local = [path for path in paths if path and os.path.isabs(path)]
        common = os.path.commonpath([os.path.dirname(path) for path in local]) if local else None
        names = [_relative(paths[row], common) if paths[row] else f"row {row}" for row in rows[:limit]]
    return _first_few(names, limit, total=len(rows))


def _relative(path: str, folder: str | None) -> str:
    """``path`` relative to ``folder`` (with '/') when it lies in it, else as it is."""
    if folder and os.path.isabs(path):
        return os.path.relpath(path, folder).replace(os.sep, "/")
    return path


def _plural_rows(count: int) -> str:
    return f"{count} row{'s' if count != 1 else ''}"


def _label_names(feature, values) -> list[str]:
    """The PU label column as strings (ClassLabel ints become their names)."""
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(value)) for value in values]
    return [str(value) for value in values]


def _is_bool_feature(feature) -> bool:
    """Whether a column's feature is ``datasets.Value("bool")``."""
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype == "bool"


def _sensitive_mask(feature, labels: list[str], sensitive_label: str, pu_label_column: str) -> np.ndarray:
    """Which rows are S: booleans (true/false/1/0, any case) on a bool column, else exact string equality."""
    wanted = str(sensitive_label)
    if _is_bool_feature(feature):
        if wanted.lower() not in ("true", "false", "1", "0"):
            raise PUDataError(
                f"--sensitive_label '{wanted}' is not a boolean, but --pu_label_column "
                f"'{pu_label_column}' is a boolean column: pass --sensitive_label true or false."
            )
        truthy = wanted.lower() in ("true", "1")
        return np.array([label == str(truthy) for label in labels], dtype=bool)
    return np.array([label == wanted for label in labels], dtype=bool)


def pu_indices(
    dataset, image_column: str, pu_label_column: str, sensitive_label: str, require_sensitive: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of U and of S. A row is in S when its ``pu_label_column`` equals ``sensitive_label``.

    On a boolean column (``datasets.Value("bool")``) ``sensitive_label`` is a boolean: true/false/1/0 in any
    case. On any other column it is compared as an exact string with the value (a ClassLabel's name, "0" for
    the int 0). Raises PUDataError naming the flag at fault for a missing column, rows with no label (None),
    no U rows, or no S rows (when ``require_sensitive``).
    """
    columns = dataset.column_names
    if image_column not in columns:
        raise PUDataError(
            f"--image_column '{image_column}' is not a column of the dataset; its columns are "
            f"{columns}. Pass --image_column with one of them."
        )
    if pu_label_column not in columns:
        raise PUDataError(
            f"--pu_label_column '{pu_label_column}' is not a column of the dataset; its columns are "
            f"{columns}. Pass the column that says which rows are sensitive, or use an imagefolder "
            f"with '{UNLABELED}/' and '{SENSITIVE}/' sub-folders."
        )
    feature = dataset.features[pu_label_column]
    values = list(dataset[pu_label_column])
    missing = [row for row, value in enumerate(values) if value is None]
    if missing:
        raise PUDataError(
            f"--pu_label_column '{pu_label_column}' has no label (None) in {_plural_rows(len(missing))}: "
            f"{describe_rows(dataset, missing, image_column)}. Give every row a label "
            f"('{sensitive_label}' for S, another value for U) or remove those rows."
        )
    labels = _label_names(feature, values)
    wanted = str(sensitive_label)
    is_sensitive = _sensitive_mask(feature, labels, wanted, pu_label_column)
    sensitive = np.flatnonzero(is_sensitive)
    unlabeled = np.flatnonzero(~is_sensitive)
    seen = sorted(set(labels))[:10]
    if require_sensitive and len(sensitive) == 0:
        raise PUDataError(
            f"No sensitive (S) rows: no row has {pu_label_column} == '{wanted}' (values seen: {seen}). "
            f"Set --sensitive_label to the value that marks S, or add images to '{SENSITIVE}/'."
        )
    if len(unlabeled) == 0:
        raise PUDataError(
            f"No unlabeled (U) rows: every row has {pu_label_column} == '{wanted}'. "
            f"Add the unlabeled images (e.g. an '{UNLABELED}/' sub-folder)."
        )
    return unlabeled, sensitive


def load_captions(dataset, caption_column: str) -> list[str]:
    """The caption of every row, as str. Raises PUDataError naming --caption_column for a missing column, and
    naming the rows whose caption is missing (null) or not a string (an empty string is a valid caption)."""
    columns = dataset.column_names
    if caption_column not in columns:
        raise PUDataError(
            f"--caption_column '{caption_column}' is not a column of the dataset; its columns are "
            f"{columns}. Pass --caption_column with the caption column; a folder needs a "
            "metadata.jsonl with file_name and the caption on each line, e.g. "
            '{"file_name": "0001.png", "text": "a photo of a man"}.'
        )
    captions = list(dataset[caption_column])
    bad = [row for row, caption in enumerate(captions) if not isinstance(caption, str)]
    if bad:
        found = sorted({"None" if captions[row] is None else type(captions[row]).__name__ for row in bad})
        raise PUDataError(
            f"--caption_column '{caption_column}' has no text caption in {_plural_rows(len(bad))}: "
            f"{describe_rows(dataset, bad)} (found {', '.join(found)}). Give every row a string "
            'caption ("" for none) or remove those rows.'
        )
    return captions


def find_unreadable_images(dataset, image_column: str, max_reports: int = 5) -> list[str]:
    """Decode every image of ``image_column``; return descriptions (file path or row) of those that fail."""
    from datasets import Image as ImageFeature

    raw = (
        dataset.cast_column(image_column, ImageFeature(decode=False))
        if isinstance(dataset.features[image_column], ImageFeature)
        else dataset
    )
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
        raise PUDataError(
            "Unreadable image files (fix or remove them, or pass --skip_image_check):\n  " + "\n  ".join(problems)
        )


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

    def __call__(self, image: Image.Image, aug_seed: int = 0, flip: bool | None = None) -> torch.Tensor:
        rng = np.random.default_rng(aug_seed)
        flip_draw = rng.random() < 0.5  # drawn first, so flips() agrees with it
        if flip is None:
            flip = self.random_flip and flip_draw
        image = to_8_bit(image).convert("L" if self.channels == 1 else "RGB")
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


def images_as_tensor(dataset, image_column: str, rows, resolution: int, channels: int) -> torch.Tensor:
    """The images of ``rows``, centre-cropped to ``resolution`` and scaled to [-1, 1], stacked (N×C×H×W)."""
    transform = ImageTransform(resolution, channels, center_crop=True, random_flip=False)
    return torch.stack([transform(dataset[int(row)][image_column]) for row in rows])
