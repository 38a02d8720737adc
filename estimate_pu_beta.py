"""Estimate β, the share of U that is sensitive, before training: ``python estimate_pu_beta.py``.

Reads the same data flags as the training scripts (``--train_data_dir my_data`` with ``unlabeled/`` and
``sensitive/``, or ``--dataset_name``; none: the built-in MNIST split), scores every image with a small U-vs-S
CNN that did not train on it (cross-fitting), and prints the estimate with its interval and the separability.
``--beta auto`` in the training scripts runs the same estimate, at min(--resolution, 32) pixels: pass
``--resolution`` to match a run trained below 32 px (the default here: 16 for the built-in data, else 32).

    python estimate_pu_beta.py --train_data_dir my_data --output_file beta.json
"""

from __future__ import annotations

import argparse
import json
import os

from pu_diffusion import training
from pu_diffusion.arguments import (
    DEFAULT_SCORE_PATIENCE,
    DEFAULT_SCORE_REPEATS,
    MAX_SCORE_PATIENCE,
    MAX_SCORE_REPEATS,
    HelpWithDefaults,
    add_data_arguments,
)
from pu_diffusion.beta import (
    AUTO_POINTS,
    DEFAULT_AUTO_POINT,
    DEFAULT_BETA,
    DEFAULT_FILTER_MIN_BETA,
    auto_point,
    untrusted_cut_beta,
)
from pu_diffusion.builtin_mnist import builtin_pu_dataset, builtin_pu_split
from pu_diffusion.class_prior import ESTIMATORS, estimate_beta_from_images
from pu_diffusion.cli import UsageError, run_cli
from pu_diffusion.image_data import pu_indices
from pu_diffusion.outputs import check_separate, check_writable, write_json_atomic
from pu_diffusion.presets import get_preset
from pu_diffusion.pu_dataset import images_as_tensor

WRITTEN_BY = "estimate_pu_beta.py"  # in every --output_file: an earlier estimate may be replaced, nothing else
EARLIER_WRITERS = (WRITTEN_BY, "pu_diffusion.estimate_beta")  # the name before the program moved to the root


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Estimate the share of U that is sensitive (β) from U and S.", formatter_class=HelpWithDefaults
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--preset", type=str, default="builtin-mnist-even", help="Built-in data when no dataset flag is given."
    )
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the built-in U/S/test split.")
    parser.add_argument("--estimator", type=str, default="bbe", choices=ESTIMATORS, help="bbe (default) or dedpul.")
    parser.add_argument("--folds", type=int, default=3, help="Cross-fitting folds (2–5).")
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_SCORE_REPEATS,
        help="Cross-fittings averaged, each with its own folds and CNN seeds (--beta_score_repeats of the training "
        "scripts, whose default this is).",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=DEFAULT_SCORE_PATIENCE,
        help="Epochs without a better held-out loss before each CNN stops (--beta_score_patience of the training "
        "scripts, whose default this is).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the folds, the CNNs and the bootstrap.")
    parser.add_argument("--output_file", type=str, default=None, help="Write the estimate as JSON here.")
    first, _ = parser.parse_known_args(input_args)  # the default resolution depends on the data flags
    builtin = not (first.dataset_name or first.train_data_dir)
    preset_resolution = get_preset(first.preset).training_defaults()["resolution"] if builtin else 32
    parser.set_defaults(resolution=min(preset_resolution, 32))  # what --beta auto scores at: min(training's, 32)
    args = parser.parse_args(input_args)
    if not 2 <= args.folds <= 5:
        parser.error(f"--folds must lie in 2..5; got {args.folds}.")
    if not 1 <= args.repeats <= MAX_SCORE_REPEATS:
        parser.error(f"--repeats must lie in 1..{MAX_SCORE_REPEATS}; got {args.repeats}.")
    if not 1 <= args.patience <= MAX_SCORE_PATIENCE:
        parser.error(f"--patience must lie in 1..{MAX_SCORE_PATIENCE}; got {args.patience}.")
    if args.resolution < 8:
        parser.error(f"--resolution must be at least 8; got {args.resolution}.")
    if args.output_file and os.path.isdir(args.output_file):
        parser.error(f"--output_file {args.output_file!r} is a folder: give a file path.")
    if args.output_file:
        check_output_file(args)
    return args


def check_output_file(args) -> None:
    """Before the estimate: --output_file is writable, apart from the data, and new or an earlier estimate's."""
    check_separate(
        args.output_file,
        "--output_file",
        {"--train_data_dir": args.train_data_dir, "--dataset_name": args.dataset_name},
    )
    check_writable(args.output_file, "--output_file", folder=False)
    if os.path.exists(args.output_file) and not written_by_us(args.output_file):
        raise UsageError(
            f"--output_file {args.output_file!r} exists and was not written by estimate_pu_beta.py, so it "
            "is left alone: give a new file name."
        )
    if os.path.exists(args.output_file + ".tmp") and not written_by_us(args.output_file):
        raise UsageError(
            f"--output_file {args.output_file!r}: {args.output_file + '.tmp'!r} (where the estimate is written before "
            "it is renamed) exists and is not an earlier estimate's: move it, or give another file name."
        )


def written_by_us(path: str) -> bool:
    """Whether ``path`` is an estimate this program wrote (its JSON carries WRITTEN_BY)."""
    try:
        with open(path) as handle:
            return json.load(handle).get("written_by") in EARLIER_WRITERS
    except (OSError, ValueError, AttributeError):
        return False


def load_images(args):
    """(U tensor, S tensor, description) at --resolution, centre-cropped."""

    if args.dataset_name or args.train_data_dir:
        dataset, unlabeled_rows, sensitive_rows = training.load_pu_data(args, require_sensitive=True)
        image_column, source = args.image_column, args.dataset_name or args.train_data_dir
    else:
        dataset = builtin_pu_dataset(builtin_pu_split(args.preset, args.split_seed))
        unlabeled_rows, sensitive_rows = pu_indices(dataset, "image", "label", "sensitive", require_sensitive=True)
        image_column, source = "image", f"built-in {args.preset} (split seed {args.split_seed})"
    mode = dataset[int(unlabeled_rows[0])][image_column].mode
    channels = 1 if mode in ("L", "1", "I", "I;16", "F") else 3
    unlabeled, sensitive = (
        images_as_tensor(dataset, image_column, rows, args.resolution, channels)
        for rows in (unlabeled_rows, sensitive_rows)
    )
    return unlabeled, sensitive, source


def main(args) -> dict:
    unlabeled, sensitive, source = load_images(args)
    folds = f"{args.folds}-fold cross-fitting × {args.repeats}"
    print(f"Scoring {len(unlabeled)} U and {len(sensitive)} S images from {source} ({folds})")
    estimate = estimate_beta_from_images(
        unlabeled,
        sensitive,
        args.estimator,
        folds=args.folds,
        seed=args.seed,
        repeats=args.repeats,
        patience=args.patience,
    )
    print(estimate.describe())
    taken = auto_point(estimate, DEFAULT_AUTO_POINT)  # what train_pu_diffusion.py --beta auto takes, if trusted
    if estimate.trusted:
        print(
            f"Trusted: {estimate.reason}. train_pu_diffusion.py --beta auto takes β = {taken:.3f}"
            f"{AUTO_POINTS[DEFAULT_AUTO_POINT]} (docs/beta_and_audit.md): its U filter cuts with it (at least "
            f"{DEFAULT_FILTER_MIN_BETA:g}) and PU trains with the β left; train_pu_text_to_image.py --beta auto "
            f"trains with {estimate.estimate:.3f}. Or give --beta yourself."
        )
    else:
        cut = untrusted_cut_beta(estimate.estimate)
        print(
            f"NOT trusted: {estimate.reason}. With --beta auto, train_pu_diffusion.py's U filter would drop the "
            f"{cut:.3f}·|U| most S-like U images and train PU with at most β = {DEFAULT_BETA} on the rest; "
            f"train_pu_text_to_image.py (and --pu_filter_unlabeled 0) would train with β = {DEFAULT_BETA}."
        )
    result = {
        **estimate.to_dict(),
        "midpoint": auto_point(estimate, "midpoint"),
        "auto_point": DEFAULT_AUTO_POINT,  # which point train_pu_diffusion.py --beta auto takes (if trusted) ...
        "auto_beta": taken,  # ... and its value
        "source": source,
        "folds": args.folds,
        "repeats": args.repeats,
        "patience": args.patience,
        "seed": args.seed,
        "written_by": WRITTEN_BY,
    }
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        write_json_atomic(args.output_file, result)
    return result


if __name__ == "__main__":
    run_cli(main, parse_args)
