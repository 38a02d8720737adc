#!/usr/bin/env python
"""β estimators compared offline, on scores that benchmarks/filter_score_probe.py saved (--save_scores).

Each draw's cross-fitted U-vs-S scores and the mask of U's hidden sensitive images are read back, so every
estimator and trust rule sees the same scores and the comparison takes seconds. Per estimator: mean |error|, the
share of draws within 0.02, the bootstrap interval's coverage, how many estimates are trusted, and how many
trusted ones are more than 30 % off (the robustness suite's β targets, issue 28); and what a `--beta auto
--pu_filter_unlabeled 1` run would cut under each --pu_filter_untrusted_beta rule
(without --pu_filter_min_beta: runs made before 2026-12-06's floor).

    python benchmarks/filter_score_probe.py ... --save_scores benchmarks/results/robustness/probe_scores
    python benchmarks/beta_offline_probe.py --scores_dir benchmarks/results/robustness/probe_scores
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from filter_score_probe import cuts_under_rules
from harness import markdown_table, write_json, written_by

from pu_diffusion.beta import UNTRUSTED_CUT_RULES, auto_point
from pu_diffusion.class_prior import best_bin_estimate, estimate_class_prior

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITTEN_BY = "beta_offline_probe.py"


def top_bin_share(unlabeled, sensitive) -> float:
    """The share of S at or above the threshold BBE picks: how much of S its estimate rests on."""
    estimate = best_bin_estimate(unlabeled, sensitive)
    thresholds = np.unique(np.concatenate([unlabeled, sensitive]))
    q_u = np.array([(unlabeled >= c).mean() for c in thresholds])
    q_s = np.array([(sensitive >= c).mean() for c in thresholds])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(q_s > 0, q_u / q_s, np.inf)
    return float(q_s[int(np.argmin(np.abs(ratio - estimate)))])


def draw_rows(path: str) -> dict:
    data = np.load(path)
    unlabeled, sensitive, hidden = data["unlabeled"], data["sensitive"], data["hidden"].astype(bool)
    true_beta = float(hidden.mean())
    estimates, made = {}, {}
    for estimator in ("bbe", "dedpul"):
        made[estimator] = estimate_class_prior(unlabeled, sensitive, estimator)
        estimates[estimator] = {
            "estimate": made[estimator].estimate,
            "interval": list(made[estimator].interval),
            "trusted": made[estimator].trusted,
            "normal_auc": made[estimator].normal_auc,
        }
    bbe, dedpul = estimates["bbe"], estimates["dedpul"]
    for point in ("lower", "midpoint"):  # --beta_auto_point's other points, as training picks them
        estimates[f"bbe-{point}"] = {**bbe, "estimate": auto_point(made["bbe"], point)}
    smaller = min(bbe["estimate"], dedpul["estimate"])
    estimates["min(bbe, dedpul)"] = {**bbe, "estimate": smaller}  # trusted as BBE is; no interval of its own
    estimates["min(bbe, dedpul)"]["interval"] = None
    return {
        "draw": os.path.basename(path)[: -len(".npz")],
        "true_beta": true_beta,
        "bbe_top_bin_s_share": top_bin_share(unlabeled, sensitive),
        "estimates": estimates,
        "auto_filter": auto_filter(unlabeled, sensitive, hidden, made["bbe"]),
    }


def auto_filter(unlabeled, sensitive, hidden, estimate) -> dict:
    """What a --beta auto --beta_auto_point estimate --pu_filter_unlabeled 1 run without --pu_filter_min_beta cuts
    under each
    --pu_filter_untrusted_beta rule (the probe's :func:`filter_score_probe.cuts_under_rules`): the cut's β, the
    share of U's hidden images dropped, the β PU trains with and the true share left; ``estimate``: BBE's on these
    scores."""
    runs = cuts_under_rules(unlabeled, sensitive, hidden, estimate)
    return {
        rule: {
            "beta_cut": run["beta_cut"],
            "hidden_dropped_share": run["hidden_dropped_share"],
            "beta_trained": run["beta_left"],
            "true_beta_left": run["true_beta_left"],
        }
        for rule, run in runs.items()
    }


def summarise_rules(draws: list[dict]) -> dict:
    summary = {}
    for rule in UNTRUSTED_CUT_RULES:
        runs = [draw["auto_filter"][rule] for draw in draws]
        caught = np.array([run["hidden_dropped_share"] for run in runs])
        over = np.array([run["beta_trained"] - run["true_beta_left"] for run in runs])
        summary[rule] = {
            "mean_hidden_dropped_share": float(caught.mean()),
            "min_hidden_dropped_share": float(caught.min()),
            "mean_true_beta_left": float(np.mean([run["true_beta_left"] for run in runs])),
            "max_beta_trained_over_true_left": float(over.max()),
        }
    return summary


def summarise(draws: list[dict]) -> dict:
    summary = {}
    for name in draws[0]["estimates"]:
        errors, covered, trusted, far = [], [], 0, 0
        for draw in draws:
            made, truth = draw["estimates"][name], draw["true_beta"]
            errors.append(made["estimate"] - truth)
            if made["interval"] is not None:
                covered.append(made["interval"][0] <= truth <= made["interval"][1])
            trusted += made["trusted"]
            far += made["trusted"] and abs(made["estimate"] - truth) > 0.3 * truth
        errors = np.abs(errors), np.asarray(errors)
        summary[name] = {
            "draws": len(draws),
            "mean_abs_error": float(errors[0].mean()),
            "mean_signed_error": float(errors[1].mean()),
            "within_0.02": float((errors[0] <= 0.02).mean()),
            "coverage": float(np.mean(covered)) if covered else None,
            "trusted": trusted,
            "trusted_more_than_30pct_off": far,
        }
    return summary


def format_tables(draws: list[dict], summary: dict) -> tuple[str, str]:
    names = list(summary)
    per_draw = markdown_table(
        ["draw", "true β", *names, "BBE trusted", "S share in BBE's top bin"],
        [[d["draw"], f"{d['true_beta']:.3f}", *(f"{d['estimates'][n]['estimate']:.3f}" for n in names),
          "yes" if d["estimates"]["bbe"]["trusted"] else "no", f"{d['bbe_top_bin_s_share']:.2f}"] for d in draws],
    )  # fmt: skip
    totals = markdown_table(
        ["estimator", "draws", "mean |error| (signed)", "within 0.02", "coverage", "trusted", "trusted, > 30 % off"],
        [[n, str(s["draws"]), f"{s['mean_abs_error']:.3f} ({s['mean_signed_error']:+.3f})", f"{s['within_0.02']:.0%}",
          "–" if s["coverage"] is None else f"{s['coverage']:.0%}", str(s["trusted"]),
          str(s["trusted_more_than_30pct_off"])] for n, s in summary.items()],
    )  # fmt: skip
    return per_draw, totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores_dir", required=True, help="filter_score_probe.py's --save_scores folder.")
    parser.add_argument("--pattern", default="*.npz", help="Which saved draws to read (a glob in --scores_dir).")
    parser.add_argument(
        "--output_json", default=os.path.join(ROOT, "benchmarks", "results", "robustness", "beta_offline.json")
    )
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.scores_dir, args.pattern)))
    if not paths:
        parser.error(f"--scores_dir {args.scores_dir!r} holds no {args.pattern}: run filter_score_probe.py with "
                     "--save_scores first.")  # fmt: skip
    if os.path.isdir(args.output_json):
        parser.error(f"--output_json {args.output_json!r} is a folder: name a .json file.")
    if os.path.exists(args.output_json) and not written_by(args.output_json, WRITTEN_BY):
        parser.error(f"--output_json {args.output_json!r} exists and is not this program's output: name a new file.")
    draws = [draw_rows(path) for path in paths]
    summary, rules = summarise(draws), summarise_rules(draws)
    per_draw, totals = format_tables(draws, summary)
    rule_table = markdown_table(
        ["--pu_filter_untrusted_beta", "hidden dropped, mean (min)", "true β left, mean", "β trained − true left, max"],
        [[rule, f"{r['mean_hidden_dropped_share']:.3f} ({r['min_hidden_dropped_share']:.2f})",
          f"{r['mean_true_beta_left']:.4f}", f"{r['max_beta_trained_over_true_left']:+.4f}"] for rule, r in rules.items()],
    )  # fmt: skip
    print(per_draw, totals, rule_table, sep="\n\n")
    write_json(
        args.output_json,
        {"draws": draws, "summary": summary, "rules": rules, "table": per_draw, "totals": totals,
         "rule_table": rule_table, "written_by": WRITTEN_BY},
    )  # fmt: skip


if __name__ == "__main__":
    main()
