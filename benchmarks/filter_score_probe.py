#!/usr/bin/env python
"""How well the U-vs-S CNN scores behind --beta auto and --pu_filter_unlabeled find U's hidden sensitive images.

For robustness-suite cells (the same draws as benchmarks/robustness_benchmark.py: U in the order the training
script reads it, S), this scores U and S with cross-fitted CNNs under a few scoring variants and reports, per
variant, what no training run can see: the AUC of U's hidden sensitive images against U's normal ones, the share of
them among the top β·|U| scores (what --pu_filter_unlabeled 1 drops with the true β), BBE's estimate, and what
larger cuts would leave (F = 1, 1.5, 2: share of the hidden images dropped, true β left, kept images per class),
and what a `--beta auto --pu_filter_unlabeled 1` run would cut under each --pu_filter_untrusted_beta rule
(without --pu_filter_min_beta: runs made before 2026-12-06's floor).
Seconds per cell and variant on a CPU; nothing is trained but the small CNNs.

    python benchmarks/filter_score_probe.py --cells 1,2,5,8,9_S50_b0.200 3,5_S50_b0.091 --seeds 0
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from accelerate import PartialState
from harness import markdown_table, read_json, write_json, written_by
from robustness_benchmark import FULL_CELLS, draw_cell, mnist_source
from sklearn.metrics import roc_auc_score
from torch.nn import functional

import pu_diffusion.class_prior as class_prior
from pu_diffusion.beta import UNTRUSTED_CUT_RULES, beta_from_estimate, filter_cut, filter_cut_beta
from pu_diffusion.cli import UsageError
from pu_diffusion.outputs import check_writable
from pu_diffusion.pu_dataset import ImageTransform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name: (folds, shift augmentation in pixels, repeats averaged, early-stopping patience)
    "3 folds (the default before session 16)": (3, 0, 1, 4),
    "10 folds": (10, 0, 1, 4),
    "3 folds, ±2 px shifts": (3, 2, 1, 4),
    "3 folds × 3 repeats": (3, 0, 3, 4),
    "3 folds, patience 10": (3, 0, 1, 10),
    "3 folds × 3 repeats, patience 10": (3, 0, 3, 10),
}
CUTS = (1.0, 1.5, 2.0)


def shifted(images: torch.Tensor, rng: np.random.Generator, pad: int) -> torch.Tensor:
    """Each image moved by up to ``pad`` pixels each way (background filled with -1)."""
    height, width = images.shape[-2:]
    padded = functional.pad(images, (pad,) * 4, value=-1.0)
    dy, dx = rng.integers(0, 2 * pad + 1, (2, len(images)))
    return torch.stack([padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(len(images))])


def probe(source, cell, seed: int, variant: str, save_scores: str | None = None) -> dict:
    rows = draw_cell(source, cell, seed)
    unlabeled_rows = np.sort(np.concatenate([rows["unlabeled_normal"], rows["unlabeled_sensitive"]]))  # file order
    hidden = np.isin(unlabeled_rows, rows["unlabeled_sensitive"])
    transform = ImageTransform(16, 1, center_crop=True, random_flip=False)

    def tensors(part):
        return torch.stack([transform(source.load(int(row))) for row in part])

    folds, pad, repeats, patience = VARIANTS[variant]
    augment = (lambda batch, rng: shifted(batch, rng, pad)) if pad else None
    start = time.time()
    unlabeled, sensitive = class_prior.cross_fitted_scores(
        tensors(unlabeled_rows), tensors(rows["sensitive"]), folds, repeats=repeats, augment=augment, patience=patience
    )
    seconds = time.time() - start
    if save_scores:  # the scores and which U images are hidden: estimators can be compared offline, in seconds
        os.makedirs(save_scores, exist_ok=True)
        slug = "".join(c if c.isalnum() else "_" for c in variant)
        np.savez_compressed(
            os.path.join(save_scores, f"{cell.name}_s{seed}_{slug}.npz"),
            unlabeled=unlabeled, sensitive=sensitive, hidden=hidden,
        )  # fmt: skip
    estimate = class_prior.estimate_class_prior(unlabeled, sensitive, "bbe")
    order = np.argsort(-unlabeled, kind="stable")
    cuts = {}
    for factor in CUTS:
        k = int(round(factor * hidden.sum()))
        kept = np.sort(order[k:])
        classes, counts = np.unique(source.classes[unlabeled_rows[kept]], return_counts=True)
        cuts[f"F{factor:g}"] = {
            "dropped": k,
            "hidden_dropped_share": round(float(hidden[order[:k]].sum() / hidden.sum()), 3),
            "estimated_share": round(float(np.mean(sensitive >= unlabeled[order[k - 1]])), 3),
            "true_beta_left": round(float(hidden[kept].mean()), 4),
            "kept_per_class": {str(name): int(count) for name, count in zip(classes, counts)},
        }
    auto_filter = {
        rule: {key: round(value, 3 if key.endswith("share") else 4) for key, value in run.items()}
        for rule, run in cuts_under_rules(unlabeled, sensitive, hidden, estimate).items()
    }
    return {
        "cell": cell.name,
        "seed": seed,
        "variant": variant,
        "auc_hidden_vs_normal": round(float(roc_auc_score(hidden, unlabeled)), 3),
        "bbe": round(estimate.estimate, 4),
        "interval": [round(value, 4) for value in estimate.interval],
        "trusted": estimate.trusted,
        "true_beta": round(float(hidden.mean()), 4),
        "seconds": round(seconds, 1),
        "cuts": cuts,
        "auto_filter": auto_filter,
    }


def cuts_under_rules(unlabeled, sensitive, hidden, estimate) -> dict:
    """What a --beta auto --beta_auto_point estimate --pu_filter_unlabeled 1 run (--beta auto before 2026-12-07)
    without --pu_filter_min_beta cuts under each
    --pu_filter_untrusted_beta rule, with the training script's own functions: {rule: beta_cut, dropped,
    hidden_dropped_share, estimated_share, beta_left (the β PU trains with), true_beta_left}."""
    PartialState()  # the library's accelerate logger (filter_cut_beta warns) needs one
    first = beta_from_estimate(estimate)
    runs = {}
    for rule in UNTRUSTED_CUT_RULES:
        cut_first = filter_cut_beta(first, rule)
        cut = filter_cut(unlabeled, sensitive, cut_first, 1.0)
        kept = np.ones(len(unlabeled), dtype=bool)
        kept[cut["dropped_positions"]] = False
        runs[rule] = {
            "beta_cut": cut_first["beta"],
            "dropped": len(cut["dropped_positions"]),
            "hidden_dropped_share": float(hidden[~kept].sum() / hidden.sum()),
            "estimated_share": cut["sensitive_recall"],
            "beta_left": cut["beta_left"],
            "true_beta_left": float(hidden[kept].mean()),
        }
    return runs


def format_table(results: list[dict]) -> str:
    return markdown_table(
        ["cell", "seed", "scores", "AUC hidden vs normal", "BBE (true)", "dropped at F 1 / 1.5 / 2",
         "share of hidden dropped", "true β left"],
        [[r["cell"], str(r["seed"]), r["variant"], f"{r['auc_hidden_vs_normal']:.3f}",
          f"{r['bbe']:.3f} ({r['true_beta']:.3f})", " / ".join(str(c["dropped"]) for c in r["cuts"].values()),
          " / ".join(f"{c['hidden_dropped_share']:.2f}" for c in r["cuts"].values()),
          " / ".join(f"{c['true_beta_left']:.3f}" for c in r["cuts"].values())] for r in results],
    )  # fmt: skip


def format_rule_table(results: list[dict]) -> str:
    """Per draw, what a --beta auto --pu_filter_unlabeled 1 run without --pu_filter_min_beta cuts under each
    --pu_filter_untrusted_beta rule."""
    rows = []
    for r in results:
        runs = [r["auto_filter"][rule] for rule in UNTRUSTED_CUT_RULES]
        rows.append(
            [r["cell"], str(r["seed"]), r["variant"], f"{r['bbe']:.3f} ({r['true_beta']:.3f})",
             "yes" if r["trusted"] else "no", " / ".join(f"{run['beta_cut']:.3f}" for run in runs),
             " / ".join(f"{run['hidden_dropped_share']:.2f}" for run in runs),
             " / ".join(f"{run['beta_left']:.3f} ({run['true_beta_left']:.3f})" for run in runs)]
        )  # fmt: skip
    rules = " / ".join(UNTRUSTED_CUT_RULES)
    return markdown_table(
        ["cell", "seed", "scores", "BBE (true)", "trusted", f"cut β ({rules})", f"share of hidden dropped ({rules})",
         f"β left, trained (true) ({rules})"],
        rows,
    )  # fmt: skip


WRITTEN_BY = "filter_score_probe.py"  # in every --output_json: an earlier probe may be replaced, nothing else


def written_by_probe(path: str) -> bool:
    if written_by(path, WRITTEN_BY):
        return True
    try:  # or one from before the marker
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"results", "table"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [cell.name for cell in FULL_CELLS]
    parser.add_argument("--cells", nargs="+", default=[names[11], names[6]], help=f"Of {names}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--output_json", default=os.path.join(ROOT, "benchmarks", "results", "robustness", "filter_score_probe.json")
    )
    parser.add_argument(
        "--save_scores",
        default=None,
        help="A folder to write each draw's scores into (<cell>_s<seed>_<variant>.npz: unlabeled, sensitive, hidden).",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.cells) - set(names))
    if unknown:
        parser.error(f"--cells: unknown {unknown}; the cells are {names}.")
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds must be >= 0; got {args.seeds}.")
    if os.path.isdir(args.output_json):
        parser.error(f"--output_json {args.output_json!r} is a folder: name a .json file.")
    try:  # a path that cannot be written is refused now, not after minutes of scoring
        check_writable(args.output_json, "--output_json", folder=False)
    except UsageError as error:
        parser.error(str(error))
    if os.path.exists(args.output_json) and not written_by_probe(args.output_json):
        parser.error(f"--output_json {args.output_json!r} exists and is not this probe's output: name a new file.")
    source = mnist_source()
    results = []
    for seed in args.seeds:
        for cell in (cell for cell in FULL_CELLS if cell.name in args.cells):
            for variant in args.variants:
                results.append(probe(source, cell, seed, variant, args.save_scores))
                print(f"{cell.name} seed {seed} {variant}: AUC {results[-1]['auc_hidden_vs_normal']}", flush=True)
    table, rule_table = format_table(results), format_rule_table(results)
    print(table, rule_table, sep="\n\n")
    write_json(
        args.output_json, {"results": results, "table": table, "rule_table": rule_table, "written_by": WRITTEN_BY}
    )


if __name__ == "__main__":
    main()
