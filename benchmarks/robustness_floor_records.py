#!/usr/bin/env python
"""The robustness suite's records of the recipe with the U filter's floor, from runs already made.

``--pu_filter_min_beta 0.1`` (train_pu_diffusion.py's default since 2026-12-06 where β is auto or below 0.1) makes
the filter cut with at least β = 0.1 and read the β left from it. It changed the run key of the suite's ``true``
rows with β < 0.1 and of every ``auto`` row. Where the floor provably trains what a cached run trained, this writes
the new key's record from that run, naming it under ``relabelled``:

- ``auto`` whose estimate was not trusted (its cut already used at least 0.1) or was at least 0.1: the floor does
  not bind, so the run is the cached ``auto`` run (key with ``--pu_filter_min_beta 0``);
- ``true`` with β below 0.1, and ``auto`` with a trusted estimate below 0.1: the cut is 0.1·|U| of the same
  cross-fitted scores and the β left is read from 0.1, which is exactly what ``default`` (β 0.1 given) trains: the
  cached ``default`` run of the same cell and seed. (The scores and the model's first weights do not depend on β:
  ``cross_fitted_scores`` seeds torch itself, and BBE draws from its own numpy generator.)

``--beta_auto_point midpoint`` (train_pu_diffusion.py's default with ``--beta auto`` since 2026-12-07) changed the
key of every ``auto`` row again; the rows of the point estimate are the β mode ``auto-estimate`` now (filed under
``auto``: robustness_benchmark.FILED_AS). The midpoint's record is written from runs already made where it trains
what they trained:

- an estimate not trusted (or not made): the point never enters (the cut's β is BBE's point or the floor, PU's
  the β left after it, at most 0.1), so the run is the ``auto-estimate`` run;
- a trusted estimate whose midpoint is below 0.1: the floor binds, so the run is the ``default`` run, as above.

A trusted midpoint of at least 0.1 trains a β no cached run trained: that row is trained for real.

Where a real run of the new key is cached, nothing is written for it; ``--verify`` compares it with the record this
script would derive (its samples' judged shares, per-class counts, FD and training log) and exits 1 on a difference.

    python benchmarks/robustness_floor_records.py --verify   # compare the real runs with their sources
    python benchmarks/robustness_floor_records.py            # write the records that are missing
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import robustness_benchmark as suite
from harness import read_json, write_json

from pu_diffusion.beta import AUTO_POINTS, DEFAULT_FILTER_MIN_BETA, floor_cut_beta, given_beta, point_of

NO_FLOOR = ["--pu_filter_min_beta", "0"]
COMPARED = ("evaluations", "per_class", "training_log")  # what the tables read, and the run's losses


def stems(args, cell, mode: str, seed: int) -> dict[str, str]:
    """Record paths of one (cell, β mode, seed): the new key's, default's, and the run it may be derived from: the
    same row without the floor (``true``, ``auto-estimate``), or the ``auto-estimate`` row (``auto``)."""
    flags = suite.run_flags(args, "pu", mode, cell)
    rows = [("new", mode, flags), ("default", "default", suite.run_flags(args, "pu", "default", cell))]
    if mode == "auto":
        rows.append(("estimate", "auto-estimate", suite.run_flags(args, "pu", "auto-estimate", cell)))
    else:
        rows.append(("no_floor", mode, flags + NO_FLOOR))
    return {
        name: suite.cached_path(args, cell, "pu", row_mode, suite.run_key(row_flags), seed)
        for name, row_mode, row_flags in rows
    }


def estimate_source(record: dict) -> str:
    """How a run named its β before the floor and the cut ("estimated with --beta auto: …", and the point)."""
    return record["beta"]["beta_source"].split(" (β = ")[0].split(", raised to the floor")[0]


def derive(args, cell, mode: str, paths: dict[str, str], floor: float) -> tuple[dict, str] | None:
    """The new key's record from the cached run that trained the same, and why; None when that run is missing."""
    no_floor = read_json(paths["no_floor"]) if os.path.isfile(paths.get("no_floor", "")) else None
    if mode == "true":
        below = float(f"{cell.true_beta:.6g}")  # as run_flags passes it
        source = given_beta(below)["beta_source"]
    elif mode == "auto":  # the midpoint, from the point estimate's run (the same scores and the same estimate)
        if suite.effective_flags(suite.run_flags(args, "pu", "auto", cell))["beta_margin"] != 1.0:
            return None  # the midpoint below is the β without a margin
        same = read_json(paths["estimate"]) if os.path.isfile(paths["estimate"]) else None
        estimated = same or (read_json(paths["new"]) if os.path.isfile(paths["new"]) else None)  # a real run's
        if estimated is None:
            return None
        estimate = estimated["beta"]["beta_estimate"]
        if estimate is None or not estimate["trusted"]:
            if same is None:
                return None
            why = "the estimate was not trusted: the point never enters (the cut uses BBE's point or the floor)"
            return same, f"{why}: the same run as {os.path.basename(paths['estimate'])}"
        below = point_of(estimate["estimate"], estimate["interval"], "midpoint")
        if below >= floor:
            return None  # a β no cached run trained
        source = estimate_source(estimated)
        source += "" if source.endswith(AUTO_POINTS["midpoint"]) else AUTO_POINTS["midpoint"]
    else:
        # the estimate (the same scores, with or without the floor): the old run's, or a real new run's to check it
        estimated = no_floor or (read_json(paths["new"]) if os.path.isfile(paths["new"]) else None)
        if estimated is None:
            return None
        estimate = estimated["beta"]["beta_estimate"]
        cut = estimated["beta"]["unlabeled_filter"]  # the β the cut used (point, margin, untrusted rule applied)
        below = cut.get("beta_below_floor", cut["beta_before"])
        source = estimate_source(estimated)
        if no_floor is None and below >= floor:
            return None  # a real run the floor did not bind: no earlier run trained it
        if below >= floor:
            trusted = estimate is not None and estimate["trusted"]
            why = f"its cut used β {below:.4f}" + ("" if trusted else " (the estimate was not trusted)")
            why += f", at least {floor:g}"
            return no_floor, f"the floor does not bind ({why}): the same run as {os.path.basename(paths['no_floor'])}"
    if not os.path.isfile(paths["default"]):
        return None
    default = read_json(paths["default"])
    record = copy.deepcopy(default)
    rest = default["beta"]["beta_source"].split("; then", 1)[1]  # the cut's part, as the run wrote it
    floored = floor_cut_beta({"beta": below, "beta_source": source}, floor)["beta_source"]  # the run's wording
    record["beta"]["beta_source"] = f"{floored} (β = {floor:.4f}); then{rest}"
    record["beta"]["unlabeled_filter"]["beta_below_floor"] = float(below)
    if mode != "true":
        record["beta"]["beta_estimate"] = estimate
    why = (
        f"β {below:.4f} is below the floor {floor:g}: the cut and the β left read {floor:g}, what β {floor:g} given "
        f"trains from the same scores: the same run as {os.path.basename(paths['default'])}"
    )
    return record, why


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=suite.OUTPUT_DIR)
    parser.add_argument("--verify", action="store_true", help="Compare real runs with their sources; write nothing.")
    parser.add_argument(
        "--output_json", default=None, help="Where the list goes (default: floor_records.json in --output_dir)."
    )
    args = parser.parse_args()
    suite_args = suite.parse_args(["--protocol", "full", "--output_dir", args.output_dir, "--report_only"])
    floor = DEFAULT_FILTER_MIN_BETA
    written, verified, differ, missing, unmatched = [], [], [], [], []
    for cell in suite.FULL_CELLS:
        for mode in ("true", "auto-estimate", "auto"):  # auto from auto-estimate's records: after them
            for seed in (0, 1):
                paths = stems(suite_args, cell, mode, seed)
                if paths["new"] == paths.get("no_floor"):  # β ≥ the floor given: the key did not change
                    continue
                derived = derive(suite_args, cell, mode, paths, floor)
                name = os.path.basename(paths["new"])
                existing = read_json(paths["new"]) if os.path.isfile(paths["new"]) else None
                if existing is not None and "relabelled" in existing:
                    written.append(f"{name}: {existing['relabelled']}")  # written by an earlier call
                    continue
                if existing is not None:  # a real run of the new key
                    if derived is None:
                        unmatched.append(name)
                        continue
                    same = all(existing[part] == derived[0][part] for part in COMPARED)
                    (verified if same else differ).append(f"{name}: {derived[1]}")
                    continue
                if args.verify:
                    continue
                if derived is None:
                    missing.append(name)
                    continue
                record, why = derived
                record = {**copy.deepcopy(record), "beta_mode": mode}
                record["flags"] = suite.run_flags(suite_args, "pu", mode, cell)
                record["key"] = suite.run_key(record["flags"])
                earlier = record.get("relabelled")  # a source written from another run names that one too
                record["relabelled"] = why + (f" (which was: {earlier})" if earlier else "")
                write_json(paths["new"], record)
                written.append(f"{name}: {why}")
    if not args.verify:  # what each record of the new keys is: a real run (checked against its source) or derived
        result = {
            "identical_to_source": verified,
            "different_from_source": differ,
            "real_without_source": unmatched,
            "written": written,
        }
        write_json(args.output_json or os.path.join(args.output_dir, "floor_records.json"), result)
    for title, lines in (("identical to its source", verified), ("DIFFERENT from its source", differ)):
        print(f"real runs {title}: {len(lines)}", *(f"  {line}" for line in lines), sep="\n")
    if not args.verify:
        print(f"written: {len(written)}", *(f"  {line}" for line in written), sep="\n")
        print(f"no source cached (train them): {len(missing)}", *(f"  {name}" for name in missing), sep="\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
