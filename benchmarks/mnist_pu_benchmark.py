#!/usr/bin/env python
"""The paper's Table 2/3 comparison at CPU scale on the built-in MNIST data.

Trains unsupervised / supervised / PU (absPU; nnPU with --with_nnpu) for every split and seed with
train_pu_diffusion.py, evaluates each with the built-in classifier, and prints non-sensitive rate and
classifier-feature Fréchet distance as mean ± std with a paired t-test of PU against unsupervised.
Writes results.json (per-seed numbers, settings, wall times, versions) and methods_grid.png; with
--beta_sweep also a plot of both metrics against β (paper Figure 4).

    python benchmarks/mnist_pu_benchmark.py                 # ~60 min on 2 CPU cores
    python benchmarks/mnist_pu_benchmark.py --full          # paper-like steps/samples, for a GPU
    python benchmarks/mnist_pu_benchmark.py --smoke         # seconds; what the test runs
"""

import argparse
import json
import os
import platform
import shutil
import time

import numpy as np

from pu_diffusion.testing_utils import write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER = {  # non-sensitive rate, paper Table 2 (MNIST, from scratch)
    ("even", "unsupervised"): 0.904,
    ("even", "supervised"): 0.908,
    ("even", "pu"): 0.978,
    ("odd", "unsupervised"): 0.900,
    ("odd", "supervised"): 0.901,
    ("odd", "pu"): 0.975,
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="PU vs baselines on the built-in MNIST benchmark.")
    parser.add_argument("--methods", nargs="+", default=["unsupervised", "supervised", "pu"])
    parser.add_argument("--with_nnpu", action="store_true", help="Add nnPU (paper Alg. 1) as an extra column.")
    parser.add_argument("--splits", nargs="+", default=["even"], choices=["even", "odd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--sensitive_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--extra_train_args", default="", help="More flags for train_pu_diffusion.py, quoted.")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--num_inference_steps", type=int, default=100)
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument(
        "--beta_sweep",
        nargs="*",
        type=float,
        default=None,
        help="β values for a PU sweep (first split, first seed); writes beta_sweep.png.",
    )
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "benchmarks", "results", "mnist"))
    parser.add_argument("--keep_models", action="store_true", help="Keep every trained pipeline folder.")
    parser.add_argument(
        "--full", action="store_true", help="GPU scale: 3000 steps, 5 seeds, both splits, 2000 DDPM-1000 samples."
    )
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on a tiny UNet (for the tests).")
    args = parser.parse_args(input_args)
    if args.full:
        args.max_train_steps, args.seeds, args.splits = 3000, [0, 1, 2, 3, 4], ["even", "odd"]
        args.num_samples, args.sampler, args.num_inference_steps, args.with_nnpu = 2000, "ddpm", 1000, True
    if args.smoke:
        args.max_train_steps, args.seeds, args.num_samples, args.num_inference_steps = 2, [0, 1], 16, 2
        args.train_batch_size, args.sensitive_batch_size = 8, 4
    return args


def train_args(args, run_dir, method, split, seed, estimator="abs", beta=None):
    argv = [
        "--output_dir",
        run_dir,
        "--overwrite_output_dir",
        "--method",
        method,
        "--pu_estimator",
        estimator,
        "--preset",
        f"builtin-mnist-{split}",
        "--seed",
        str(seed),
        "--max_train_steps",
        str(args.max_train_steps),
        "--train_batch_size",
        str(args.train_batch_size),
        "--sensitive_batch_size",
        str(args.sensitive_batch_size),
        "--learning_rate",
        str(args.learning_rate),
        "--beta",
        str(args.beta if beta is None else beta),
        "--checkpointing_steps",
        "1000000",
        "--validation_steps",
        "0",
        "--report_to",
        "none",
        "--inference_scheduler",
        "ddim",
        "--num_inference_steps",
        "50",
        "--num_final_images",
        "16",
    ]
    if args.use_ema:
        argv.append("--use_ema")
    if args.smoke:
        config_dir = write_unet_config(os.path.join(args.output_dir, "tiny_unet"))
        argv += [
            "--model_config_name_or_path",
            config_dir,
            "--resolution",
            "8",
            "--lr_warmup_steps",
            "1",
            "--num_final_images",
            "4",
            "--num_inference_steps",
            "2",
        ]
    return argv + args.extra_train_args.split()


def train_and_evaluate(args, name, argv, seed):
    from accelerate.state import AcceleratorState, GradientState, PartialState

    import train_pu_diffusion
    from pu_diffusion.evaluation import evaluate_builtin_pipeline

    run_dir = argv[argv.index("--output_dir") + 1]
    start = time.time()
    stats = train_pu_diffusion.main(train_pu_diffusion.parse_args(argv))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    train_wall = time.time() - start
    metrics, samples = evaluate_builtin_pipeline(
        run_dir, args.num_samples, 250, args.sampler, args.num_inference_steps, seed=1000 + seed
    )
    result = {
        "name": name,
        "seed": seed,
        "train_seconds": round(train_wall, 1),
        "steps_per_second": round(stats["steps_per_second"], 3),
        **metrics,
    }
    print(
        f"[{name} seed {seed}] non-sensitive {metrics['non_sensitive_rate']:.4f}  "
        f"FD {metrics['frechet_distance_classifier_features']:.2f}  train {train_wall:.0f}s",
        flush=True,
    )
    return result, samples[:36]


def summarize(results, columns, splits):
    from scipy import stats

    table = {}
    for split in splits:
        for column in columns:
            rows = sorted((r for r in results if r["split"] == split and r["name"] == column), key=lambda r: r["seed"])
            if not rows:
                continue
            rate = np.array([r["non_sensitive_rate"] for r in rows])
            fd = np.array([r["frechet_distance_classifier_features"] for r in rows])
            entry = {
                "non_sensitive_rate_mean": rate.mean(),
                "non_sensitive_rate_std": rate.std(ddof=1) if len(rate) > 1 else 0.0,
                "fd_mean": fd.mean(),
                "fd_std": fd.std(ddof=1) if len(fd) > 1 else 0.0,
                "seeds": len(rows),
                "paper_non_sensitive_rate": PAPER.get((split, column)),
            }
            base = sorted(
                (r for r in results if r["split"] == split and r["name"] == "unsupervised"), key=lambda r: r["seed"]
            )
            if column != "unsupervised" and len(base) == len(rows) and len(rows) > 1:
                entry["p_rate_vs_unsupervised"] = float(
                    stats.ttest_rel(rate, [r["non_sensitive_rate"] for r in base]).pvalue
                )
                entry["p_fd_vs_unsupervised"] = float(
                    stats.ttest_rel(fd, [r["frechet_distance_classifier_features"] for r in base]).pvalue
                )
            table[f"{split}/{column}"] = entry
    return table


def format_table(table):
    lines = [
        "| split | method | non-sensitive rate | classifier-FD | p (rate) vs unsup. | p (FD) vs unsup. | paper rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, entry in table.items():
        split, method = key.split("/")
        p_rate = entry.get("p_rate_vs_unsupervised")
        p_fd = entry.get("p_fd_vs_unsupervised")
        lines.append(
            f"| {split} | {method} | {entry['non_sensitive_rate_mean']:.3f} ± {entry['non_sensitive_rate_std']:.3f} "
            f"| {entry['fd_mean']:.2f} ± {entry['fd_std']:.2f} | {'' if p_rate is None else f'{p_rate:.3g}'} "
            f"| {'' if p_fd is None else f'{p_fd:.3g}'} | {entry['paper_non_sensitive_rate'] or ''} |"
        )
    return "\n".join(lines)


def save_methods_grid(samples_by_name, path):
    """One labelled 6×6 sample grid per method, side by side."""
    from PIL import Image, ImageDraw

    tiles = []
    for name, samples in samples_by_name.items():
        images = ((samples.clamp(-1, 1) + 1) * 127.5).round().byte()[:, 0].numpy()
        size = images.shape[-1]
        scale = max(1, 48 // size)
        grid = Image.new("L", (6 * size * scale, 6 * size * scale + 14), 255)
        for index, image in enumerate(images[:36]):
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


def beta_sweep(args, split, seed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for beta in args.beta_sweep:
        run_dir = os.path.join(args.output_dir, "runs", f"{split}_beta{beta}_s{seed}")
        result, _ = train_and_evaluate(
            args, f"pu-beta{beta}", train_args(args, run_dir, "pu", split, seed, beta=beta), seed
        )
        rows.append({"beta": beta, **result})
        if not args.keep_models:
            shutil.rmtree(run_dir, ignore_errors=True)
    figure, left = plt.subplots(figsize=(5, 3.2))
    betas = [r["beta"] for r in rows]
    left.plot(betas, [r["non_sensitive_rate"] for r in rows], "o-", color="tab:blue")
    left.set_xlabel("β")
    left.set_ylabel("non-sensitive rate", color="tab:blue")
    right = left.twinx()
    right.plot(betas, [r["frechet_distance_classifier_features"] for r in rows], "s--", color="tab:red")
    right.set_ylabel("classifier-FD", color="tab:red")
    figure.tight_layout()
    figure.savefig(os.path.join(args.output_dir, "beta_sweep.png"), dpi=120)
    return rows


def main(args):
    import diffusers
    import torch

    os.makedirs(args.output_dir, exist_ok=True)
    columns = list(args.methods) + (["pu-nn"] if args.with_nnpu else [])
    results, grids, start = [], {}, time.time()
    for split in args.splits:
        for seed in args.seeds:
            for column in columns:
                method, estimator = ("pu", "nn") if column == "pu-nn" else (column, "abs")
                run_dir = os.path.join(args.output_dir, "runs", f"{split}_{column}_s{seed}")
                result, samples = train_and_evaluate(
                    args, column, train_args(args, run_dir, method, split, seed, estimator), seed
                )
                result["split"] = split
                results.append(result)
                if split == args.splits[0] and seed == args.seeds[0]:
                    grids[column] = samples
                if not args.keep_models:
                    shutil.rmtree(run_dir, ignore_errors=True)
    table = summarize(results, columns, args.splits)
    report = {
        "table": table,
        "per_seed": results,
        "settings": {
            key: os.path.relpath(value, ROOT) if isinstance(value, str) and os.path.isabs(value) else value
            for key, value in vars(args).items()
        },  # no machine paths in results
        "wall_seconds": round(time.time() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "metric_note": "Fréchet distance in the penultimate features of the project's MNIST classifier "
        "(classifier-FD), not Inception FID.",
    }
    if args.beta_sweep:
        report["beta_sweep"] = beta_sweep(args, args.splits[0], args.seeds[0])
    save_methods_grid(grids, os.path.join(args.output_dir, "methods_grid.png"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=float)
    print("\n" + format_table(table))
    print(f"\nwall time {report['wall_seconds']:.0f}s; results in {args.output_dir}/results.json, methods_grid.png")
    return report


if __name__ == "__main__":
    main(parse_args())
