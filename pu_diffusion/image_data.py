"""U/S image data: loading through `datasets`, checking the files, labelling rows as U or S, reading captions.

Every row of a PU dataset has an image and a PU label: it belongs to S (labelled sensitive) or to U
(unlabeled). The training scripts see one `datasets.Dataset` plus the index lists of U and S rows,
and draw batches of a fixed number of U rows and of S rows with :class:`pu_diffusion.batch_sampler.PUBatchSampler`.
The image transform and the torch dataset over those rows are in :mod:`pu_diffusion.pu_dataset`.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from .cli import UsageError
from .wording import article, first_few, json_kind, plural_rows, relative_path

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
            f"{first_few(unlisted)}. `datasets` loads only the images a metadata.jsonl lists (file_name, relative "
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
                    f"{where}: a JSON {json_kind(row)}, not an object. Each line must be one JSON "
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
                kind = json_kind(value)
                first_number, first_kind = first_kinds.setdefault(key, (number, kind))
                if kind != first_kind:
                    raise PUDataError(
                        f'{where}: "{key}" is {article(kind)} but line {first_number} has '
                        f"{article(first_kind)}; give a key the same type on every line."
                    )
    return file_names


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
        names = [relative_path(paths[row], common) if paths[row] else f"row {row}" for row in rows[:limit]]
    return first_few(names, limit, total=len(rows))


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
            f"--pu_label_column '{pu_label_column}' has no label (None) in {plural_rows(len(missing))}: "
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
            f"--caption_column '{caption_column}' has no text caption in {plural_rows(len(bad))}: "
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
