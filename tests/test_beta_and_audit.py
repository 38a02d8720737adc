"""--beta auto (class-prior estimation from U and S) and the audit of U with a trained model."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import record_pu_risk_betas, tiny_args
from PIL import Image
from safetensors.torch import load_file

import audit_pu_diffusion as audit
import train_pu_diffusion as script
from pu_diffusion import beta
from pu_diffusion.arguments import DEFAULT_SCORE_PATIENCE, DEFAULT_SCORE_REPEATS
from pu_diffusion.class_prior import (
    BetaEstimate,
    best_bin_estimate,
    cross_fitted_scores,
    estimate_class_prior,
    increasing_fit,
    normal_part_auc,
    roc_auc,
)

TRUE_BETA = 1 / 11


def mixture_scores(seed, n_normal=2000, n_hidden=200, n_sensitive=200, gap=5.0):
    """U = normal N(0, 1) + a 1/11 share of S-like N(gap, 1); S = N(gap, 1). gap 5: AUC(S, normal) ≈ 0.9998."""
    rng = np.random.default_rng(seed)
    unlabeled = np.concatenate([rng.normal(0, 1, n_normal), rng.normal(gap, 1, n_hidden)])
    return unlabeled, rng.normal(gap, 1, n_sensitive)


def test_best_bin_estimate_hand_value():
    # c = 1: q_U = 1/4, q_S = 1 → 0.25 (+ slack / 1); c = 0: q_U = q_S = 1 → 1 (+ the same slack)
    assert best_bin_estimate([0, 0, 0, 1], [1, 1]) == pytest.approx(0.25)


def test_best_bin_estimate_matches_a_direct_computation_where_the_slack_decides():
    import math

    unlabeled = [0.0] * 90 + [1.0] * 9 + [2.0] * 1
    sensitive = [0.0] * 1 + [1.0] * 7 + [2.0] * 2  # the top bin (c = 2) has the lowest ratio but q_S = 0.2
    slack = 1.01 * (math.sqrt(math.log(40) / 200) + math.sqrt(math.log(40) / 20))
    objectives = {}
    for c in (0.0, 1.0, 2.0):
        q_u = sum(x >= c for x in unlabeled) / 100
        q_s = sum(x >= c for x in sensitive) / 10
        objectives[c] = (q_u / q_s + slack / q_s, q_u / q_s)
    best = min(objectives.values())
    assert best == objectives[1.0]  # slack / q_S rules out the purest bin; slack alone would not
    assert objectives[2.0][1] < objectives[1.0][1] and objectives[2.0][1] + slack < objectives[1.0][0]
    assert best_bin_estimate(unlabeled, sensitive) == pytest.approx(best[1])  # 0.10 / 0.9


def test_increasing_fit_pools_adjacent_violators():
    np.testing.assert_allclose(increasing_fit(np.array([1, 3, 2, 4, 0, 5.0])), [1, 2.25, 2.25, 2.25, 2.25, 5])


def test_auc_and_its_normal_part():
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([1], [1]) == 0.5
    # a perfect classifier against U with 10 % S-like reaches 1 − 0.1/2 = 0.95; its normal part is then perfect
    assert normal_part_auc(0.95, 0.1) == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ["bbe", "dedpul"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_is_close_and_its_interval_covers_the_truth(estimator, seed):
    unlabeled, sensitive = mixture_scores(seed)
    assert roc_auc(sensitive, unlabeled[:2000]) >= 0.99  # S against U's normal part: well separated
    estimate = estimate_class_prior(unlabeled, sensitive, estimator, seed=seed)
    assert abs(estimate.estimate - TRUE_BETA) <= 0.02
    assert estimate.interval[0] <= TRUE_BETA <= estimate.interval[1]
    assert estimate.trusted


def test_low_separability_is_not_trusted_and_training_falls_back(caplog):
    unlabeled, sensitive = mixture_scores(0, gap=0.5)  # S barely differs from the normal images
    estimate = estimate_class_prior(unlabeled, sensitive)
    assert not estimate.trusted and "AUC" in estimate.reason
    args = script.parse_args(["--beta", "auto", "--beta_margin", "1.5"])
    resolved = beta.beta_from_estimate(estimate, args.beta_margin)
    assert resolved["beta"] == beta.DEFAULT_BETA and "not trusted" in resolved["beta_source"]
    few = estimate_class_prior(*mixture_scores(0, n_normal=40, n_hidden=4, n_sensitive=6))
    assert not few.trusted and "wider" in few.reason  # separable, but too few images for a narrow interval
    trusted = estimate_class_prior(*mixture_scores(0))
    assert beta.beta_from_estimate(trusted, args.beta_margin)["beta"] == pytest.approx(1.5 * trusted.estimate)
    lower = beta.beta_from_estimate(trusted, 1.0, "lower")
    assert lower["beta"] == pytest.approx(trusted.interval[0]) and lower["beta"] < trusted.estimate
    assert "lower end" in lower["beta_source"]
    assert beta.beta_from_estimate(estimate, 1.0, "lower")["beta"] == beta.DEFAULT_BETA  # untrusted: the default
    middle = beta.beta_from_estimate(trusted, 2.0, "midpoint")  # the margin multiplies the midpoint
    assert middle["beta"] == pytest.approx(trusted.estimate + trusted.interval[0])
    assert "--beta_auto_point midpoint" in middle["beta_source"] and "--beta_margin 2.0" in middle["beta_source"]
    assert beta.beta_from_estimate(estimate, 1.0, "midpoint")["beta"] == beta.DEFAULT_BETA
    assert script.parse_args(["--beta", "auto", "--beta_auto_point", "midpoint"]).beta_auto_point == "midpoint"
    with pytest.raises(ValueError, match="point must be one of"):
        beta.beta_from_estimate(estimate, 1.0, "upper")  # refused even where the estimate is not trusted
    assert script.parse_args(["--beta", "auto", "--beta_auto_point", "lower"]).beta_auto_point == "lower"
    assert script.parse_args(["--beta", "auto"]).beta_auto_point == "midpoint"  # the default since 2026-12-07
    assert script.parse_args(["--beta", "0.2"]).beta_auto_point == "estimate"  # a given β: the flag does nothing
    assert script.parse_args(["--beta", "auto", "--beta_auto_point", "estimate"]).beta_auto_point == "estimate"
    with pytest.raises(ValueError, match="--beta_auto_point lower picks what --beta auto trains with"):
        script.parse_args(["--beta", "0.2", "--beta_auto_point", "lower"])


def test_cross_fitted_scores_separate_distinct_images():
    torch.manual_seed(0)
    dark = torch.rand(60, 1, 8, 8) * 0.4 - 1  # U: dark images
    bright = torch.rand(20, 1, 8, 8) * 0.4 + 0.6  # S: bright images
    unlabeled_scores, sensitive_scores = cross_fitted_scores(dark, bright, folds=2, seed=0, max_epochs=15)
    assert unlabeled_scores.shape == (60,) and sensitive_scores.shape == (20,)
    assert roc_auc(sensitive_scores, unlabeled_scores) > 0.95


def test_repeated_cross_fitting_is_the_mean_of_independent_cross_fittings():
    """repeats=2: each image's score is the mean of the cross-fitting with the given seed and the one with
    seed + 1000 (its own folds and CNN seeds); repeats=1 is one cross-fitting, as before the flag."""
    torch.manual_seed(0)
    dark, bright = torch.rand(40, 1, 8, 8) * 0.4 - 1, torch.rand(12, 1, 8, 8) * 0.4 + 0.6
    quick = {"folds": 2, "max_epochs": 2}
    first = cross_fitted_scores(dark, bright, seed=0, **quick)
    second = cross_fitted_scores(dark, bright, seed=1000, **quick)
    both = cross_fitted_scores(dark, bright, seed=0, repeats=2, **quick)
    for part in range(2):
        assert not np.allclose(first[part], second[part])  # other folds and seeds: other scores
        np.testing.assert_allclose(both[part], (first[part] + second[part]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 1 repeat"):
        cross_fitted_scores(dark, bright, repeats=0, **quick)


@pytest.mark.parametrize(
    "flags,repeats,patience",
    [
        # nothing is scored: what runs made before the flags record
        (["--beta", "0.1", "--pu_filter_unlabeled", "0"], 1, 4),
        (["--method", "unsupervised"], 1, 4),
        (["--beta", "auto"], DEFAULT_SCORE_REPEATS, DEFAULT_SCORE_PATIENCE),
        (["--beta", "0.1"], DEFAULT_SCORE_REPEATS, DEFAULT_SCORE_PATIENCE),  # the default filter scores U and S
        (["--beta", "0.1", "--pu_filter_unlabeled", "1"], DEFAULT_SCORE_REPEATS, DEFAULT_SCORE_PATIENCE),
        (["--beta", "auto", "--beta_score_repeats", "1"], 1, DEFAULT_SCORE_PATIENCE),
        (["--beta", "auto", "--beta_score_repeats", "5"], 5, DEFAULT_SCORE_PATIENCE),
    ],
)
def test_score_repeats_default_where_the_cnns_run(tmp_path, flags, repeats, patience):
    args = script.parse_args(["--output_dir", str(tmp_path / "out"), *flags])
    assert (args.beta_score_repeats, args.beta_score_patience) == (repeats, patience)


def test_the_u_vs_s_cnns_are_cross_fitted_as_the_flags_say(tmp_path, tiny_unet_config, monkeypatch):
    calls = []

    def scores(unlabeled, sensitive, estimator, **kwargs):
        calls.append((kwargs.get("repeats"), kwargs.get("patience")))
        return trusted_estimate(0.2)(unlabeled, sensitive, estimator)

    def filter_scores(unlabeled, sensitive, **kwargs):  # the filter's scores: S-like = the bright images
        calls.append((kwargs.get("repeats"), kwargs.get("patience")))
        return unlabeled.mean(dim=(1, 2, 3)).numpy(), sensitive.mean(dim=(1, 2, 3)).numpy()

    monkeypatch.setattr(beta, "estimate_beta_from_images", scores)
    monkeypatch.setattr(beta, "cross_fitted_scores", filter_scores)
    data = write_planted_folder(tmp_path / "data")
    for name, extra in (
        ("default", ["--beta", "auto"]),
        ("set", ["--beta", "auto", "--beta_score_repeats", "2", "--beta_score_patience", "7"]),
        ("filter", ["--beta", "0.1"]),  # --method pu filters U by default
        ("off", ["--beta", "0.1", "--pu_filter_unlabeled", "0"]),
    ):
        flags = tiny_args(tmp_path / name, tiny_unet_config(), "--train_data_dir", data, *extra, unfiltered=False)
        script.main(script.parse_args(flags))
    assert calls == [
        (DEFAULT_SCORE_REPEATS, DEFAULT_SCORE_PATIENCE),
        (2, 7),
        (DEFAULT_SCORE_REPEATS, DEFAULT_SCORE_PATIENCE),
    ]
    filtered = json.loads((tmp_path / "filter" / "pu_run.json").read_text())
    assert filtered["pu_filter_unlabeled"] == 1.0
    assert len(filtered["beta_resolved"]["unlabeled_filter"]["dropped_positions"]) == 4  # 0.1 × 44 U images
    off = json.loads((tmp_path / "off" / "pu_run.json").read_text())
    assert off["pu_filter_unlabeled"] == 0.0 and "unlabeled_filter" not in off["beta_resolved"]


def test_a_beta_auto_run_from_before_the_score_flags_resumes_with_their_old_values(
    tmp_path, tiny_unet_config, monkeypatch
):
    """A pu_run.json without --beta_score_repeats and --beta_score_patience is refused by name when resumed with
    the new defaults, with the fix, and resumes with the old values (reading its recorded β, scoring nothing)."""
    from pu_diffusion.cli import UsageError

    monkeypatch.setattr(beta, "estimate_beta_from_images", trusted_estimate(0.2))
    data, out = write_planted_folder(tmp_path / "data"), tmp_path / "old"
    flags = ["--train_data_dir", data, "--beta", "auto", "--pu_filter_unlabeled", "0"]
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *flags, "--max_train_steps", "3")))
    recorded = json.loads((out / "pu_run.json").read_text())
    del recorded["beta_score_repeats"], recorded["beta_score_patience"]  # as written before the flags existed
    (out / "pu_run.json").write_text(json.dumps(recorded))
    resume = tiny_args(out, tiny_unet_config(), *flags, "--resume_from_checkpoint", "latest")
    with pytest.raises(UsageError, match="add --beta_score_patience 4 --beta_score_repeats 1 to resume it as it was"):
        script.main(script.parse_args(resume))
    monkeypatch.setattr(beta, "estimate_beta_from_images", None)  # a resumed run reads its β, it scores nothing
    script.main(script.parse_args([*resume, "--beta_score_repeats", "1", "--beta_score_patience", "4"]))
    assert json.loads((out / "train_stats.json").read_text())["global_step"] == 6
    assert json.loads((out / "pu_run.json").read_text())["beta_resolved"]["beta"] == pytest.approx(0.19)  # midpoint


def write_planted_folder(root, n_dark=40, n_bright_in_u=4, n_sensitive=12, size=8):
    """U: dark images and a few bright ones (hidden sensitive); S: bright images."""
    rng = np.random.default_rng(0)
    for name, count, low in (
        ("unlabeled", n_dark, 0),
        ("unlabeled", n_bright_in_u, 200),
        ("sensitive", n_sensitive, 200),
    ):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        start = len(os.listdir(os.path.join(root, name)))
        for index in range(count):
            pixels = rng.integers(low, low + 56, (size, size), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(root, name, f"{low:03d}_{start + index:03d}.png"))
    return str(root)


def test_beta_auto_falls_back_openly_and_leaves_the_seed_alone(tmp_path, tiny_unet_config):
    """The real estimator on 44 U / 12 S: not trusted, β = 0.1 recorded with the reason; and since estimation
    must not touch the training's random state, the run trains exactly what --beta 0.1 trains."""
    data = write_planted_folder(tmp_path / "data")
    auto, given = tmp_path / "auto", tmp_path / "given"
    off = ["--pu_filter_unlabeled", "0"]  # --beta auto alone (the filter's own fallback: its tests below)
    script.main(
        script.parse_args(tiny_args(auto, tiny_unet_config(), "--train_data_dir", data, "--beta", "auto", *off))
    )
    run = json.loads((auto / "pu_run.json").read_text())
    assert run["beta"] == "auto"
    resolved = run["beta_resolved"]
    estimate = resolved["beta_estimate"]
    assert estimate["n_unlabeled"] == 44 and estimate["n_sensitive"] == 12 and estimate["estimator"] == "bbe"
    assert not estimate["trusted"] and resolved["beta"] == beta.DEFAULT_BETA
    card = (auto / "README.md").read_text()
    assert "not trusted" in card and "β (fraction of U assumed sensitive): **0.1**" in card
    script.main(
        script.parse_args(tiny_args(given, tiny_unet_config(), "--train_data_dir", data, "--beta", "0.1", *off))
    )
    a, b = (load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")) for folder in (auto, given))
    assert all(torch.equal(a[key], b[key]) for key in a)


def trusted_estimate(value):
    return lambda unlabeled, sensitive, estimator, **kwargs: BetaEstimate(
        value, (value - 0.02, value + 0.02), estimator, 0.9, 0.99, len(unlabeled), len(sensitive), True, "ok"
    )


def test_a_resume_trains_with_the_recorded_beta(tmp_path, tiny_unet_config, monkeypatch):
    data = write_planted_folder(tmp_path / "data")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--train_data_dir", data, "--beta", "auto", "--pu_filter_unlabeled", "0"]
    monkeypatch.setattr(beta, "estimate_beta_from_images", trusted_estimate(0.23))
    script.main(script.parse_args(tiny_args(straight, tiny_unet_config(), *flags)))
    # the default point: halfway between the estimate 0.23 and its interval's lower end 0.21
    assert json.loads((straight / "pu_run.json").read_text())["beta_resolved"]["beta"] == pytest.approx(0.22)

    def no_estimation(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the recorded β")

    monkeypatch.setattr(beta, "estimate_beta_from_images", no_estimation)
    seen = record_pu_risk_betas(monkeypatch)
    resumed.mkdir()
    shutil.copy(straight / "pu_run.json", resumed / "pu_run.json")
    shutil.copy(straight / "pu_outputs.json", resumed / "pu_outputs.json")  # what the run claimed
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    resume = [*flags, "--resume_from_checkpoint", "latest"]
    script.main(script.parse_args(tiny_args(resumed, tiny_unet_config(), *resume)))
    assert seen and all(value == pytest.approx(0.22) for value in seen)
    a, b = (load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")) for folder in (straight, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="holds a different run"):  # another margin is another run
        script.main(script.parse_args(tiny_args(resumed, tiny_unet_config(), *resume, "--beta_margin", "1.5")))


def test_an_estimate_that_cannot_be_made_falls_back(tmp_path, tiny_unet_config, monkeypatch):
    def constant_scores(*args, **kwargs):
        raise ValueError("DEDPUL needs scores that vary within U and within S.")

    monkeypatch.setattr(beta, "estimate_beta_from_images", constant_scores)
    out = tmp_path / "out"
    data = write_planted_folder(tmp_path / "data")
    flags = ["--train_data_dir", data, "--beta", "auto", "--pu_filter_unlabeled", "0"]
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *flags)))
    resolved = json.loads((out / "pu_run.json").read_text())["beta_resolved"]
    assert resolved["beta"] == beta.DEFAULT_BETA and "could not estimate" in resolved["beta_source"]


def test_a_trusted_estimates_point_is_what_the_risk_uses(tmp_path, tiny_unet_config, monkeypatch):
    """--beta auto's β × --beta_margin reaches the risk: the midpoint by default (0.19 for 0.2 with the interval's
    lower end at 0.18), the point estimate with --beta_auto_point estimate."""
    off = ["--pu_filter_unlabeled", "0"]  # the filter's β left: test_train_unconditional.py
    monkeypatch.setattr(beta, "estimate_beta_from_images", trusted_estimate(0.2))
    seen = record_pu_risk_betas(monkeypatch)
    out = tmp_path / "out"
    data = write_planted_folder(tmp_path / "data")
    script.main(
        script.parse_args(
            tiny_args(out, tiny_unet_config(), "--train_data_dir", data, "--beta", "auto", "--beta_margin", "1.5", *off)
        )
    )
    assert seen and all(value == pytest.approx(0.285) for value in seen)
    assert json.loads((out / "pu_run.json").read_text())["beta_resolved"]["beta"] == pytest.approx(0.285)
    card = (out / "README.md").read_text()
    assert "× --beta_margin 1.5" in card and "--beta_auto_point midpoint" in card
    seen.clear()
    point = ["--train_data_dir", data, "--beta", "auto", "--beta_auto_point", "estimate", "--max_train_steps", "1"]
    script.main(script.parse_args(tiny_args(tmp_path / "point", tiny_unet_config(), *point, *off)))
    assert seen and all(value == pytest.approx(0.2) for value in seen)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--beta", "auto", "--method", "unsupervised"], "--beta auto estimates β for --method pu"),
        (
            ["--beta", "0.1", "--beta_margin", "2"],
            "--beta_margin 2.0 multiplies the estimate of --beta auto; with --beta 0.1 give the β you want directly",
        ),
        (["--method", "unsupervised", "--beta_margin", "2"], "--method unsupervised takes no --beta auto: drop it"),
        (["--method", "supervised", "--beta_auto_point", "lower"], "--method supervised takes no --beta auto: drop it"),
        (["--beta", "auto", "--beta_margin", "0"], "--beta_margin must be > 0"),
        (
            ["--beta", "0.1", "--pu_filter_unlabeled", "0", "--beta_score_repeats", "3"],
            "--beta_score_repeats 3 sets how",
        ),
        (["--method", "unsupervised", "--beta_score_patience", "10"], "and --pu_filter_unlabeled 0 nothing is scored"),
        (["--beta", "auto", "--beta_score_patience", "0"], "--beta_score_patience must lie in 1..40"),
        (["--beta", "auto", "--beta_score_repeats", "0"], "--beta_score_repeats must lie in 1..10; got 0"),
        (["--beta", "auto", "--beta_score_repeats", "11"], "--beta_score_repeats must lie in 1..10; got 11"),
    ],
)
def test_bad_beta_flags_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        script.parse_args(["--output_dir", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()


def test_estimate_beta_command_writes_json(tmp_path):
    import estimate_pu_beta as estimate_beta

    data = write_planted_folder(tmp_path / "data", n_dark=30, n_bright_in_u=3, n_sensitive=8)
    out = tmp_path / "beta.json"
    result = estimate_beta.main(
        estimate_beta.parse_args(
            ["--train_data_dir", data, "--resolution", "8", "--folds", "2", "--repeats", "2", "--output_file", str(out)]
        )
    )
    saved = json.loads(out.read_text())
    assert saved["n_unlabeled"] == 33 and saved["n_sensitive"] == 8 and saved == json.loads(json.dumps(result))
    assert saved["repeats"] == 2 and saved["patience"] == DEFAULT_SCORE_PATIENCE
    assert 0 <= saved["estimate"] <= 1 and saved["interval"][0] <= saved["interval"][1]
    lower = min(saved["estimate"], saved["interval"][0])
    assert saved["midpoint"] == pytest.approx((saved["estimate"] + lower) / 2)
    assert saved["auto_point"] == "midpoint" and saved["auto_beta"] == saved["midpoint"]  # what --beta auto takes


def test_audit_draws_are_shared_across_images(tiny_unet_config):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config())).eval()
    scheduler = DDPMScheduler(num_train_timesteps=100)
    a, b = torch.rand(2, 1, 8, 8) * 2 - 1
    scores = audit.audit_scores(unet, scheduler, torch.stack([a, b, a]), num_draws=4, batch_size=2).tolist()
    assert scores[0] == pytest.approx(scores[2], rel=1e-5)  # same image, other position and batch: same score
    assert scores[0] != pytest.approx(scores[1])
    assert list(audit.ranks_of([0.1, 3.0, 2.0])) == [3, 1, 2]
    _, timesteps = audit.shared_draws(64, (1, 8, 8), 100, timestep_range=(20, 30))
    assert timesteps.min() >= 20 and timesteps.max() < 30
    with pytest.raises(ValueError, match="--timestep_range"):
        audit.shared_draws(4, (1, 8, 8), 100, timestep_range=(20, 200))
    quality = audit.ranking_quality([0.1, 3.0, 2.0, 0.0], [False, True, False, False])
    assert quality == {"auc": 1.0, "precision_at_k": 1.0, "k": 1}
    quality = audit.ranking_quality([0.1, 3.0, 2.0, 0.0, 5.0], [False, True, False, True, False], top_k=3)
    assert quality["sensitive_in_top_k"] == 1 and quality["precision_at_k"] == 0.5  # top 3: 5.0, 3.0 (✓), 2.0


def test_audit_ranks_a_planted_outlier_first(tmp_path, tiny_unet_config):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, count in (("unlabeled", 24), ("sensitive", 4)):
        os.makedirs(data / name)
        for index in range(count):
            pixels = np.full((8, 8), 20, dtype=np.uint8) + rng.integers(0, 8, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(data / name / f"plain_{index:03d}.png")
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)  # nothing like what the model learned
    Image.fromarray(checker, mode="L").save(data / "unlabeled" / "outlier.png")
    model = tmp_path / "model"
    steps = ["--max_train_steps", "40", "--checkpointing_steps", "100", "--learning_rate", "3e-3"]
    flags = tiny_args(model, tiny_unet_config(), "--train_data_dir", str(data), "--method", "unsupervised")
    script.main(script.parse_args([*flags, *steps]))  # later flags win: 40 steps
    out = tmp_path / "audit"
    summary = audit.main(
        audit.parse_args(
            ["--pipeline", str(model), "--train_data_dir", str(data), "--output_dir", str(out), "--top_k", "4"]
            + ["--beta", "0.08"]
        )
    )
    with open(out / "audit.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 25 and rows[0]["file"] == os.path.join("unlabeled", "outlier.png") and rows[0]["rank"] == "1"
    assert [int(row["rank"]) for row in rows] == list(range(1, 26))
    assert (out / "top_k.png").exists() and summary["num_images"] == 25
    assert summary["beta"] == 0.08 and summary["estimated_sensitive_images"] == 2  # β × |U|
    assert audit.recorded_beta(str(model)) is None  # an unsupervised run never used a β


def test_the_audit_reads_a_filtered_runs_beta_over_all_of_u(tmp_path):
    """A --pu_filter_unlabeled run trained with the β left in the U it kept; the audit ranks all of U, so it takes
    the β the cut used."""
    folder = tmp_path / "model"
    folder.mkdir()
    cut = {"factor": 1.0, "beta_before": 0.23, "n_unlabeled": 2200, "dropped_positions": list(range(506))}
    run = {"method": "pu", "beta": "auto", "beta_resolved": {"beta": 0.0117, "unlabeled_filter": cut}}
    (folder / "pu_run.json").write_text(json.dumps(run))
    assert audit.recorded_beta(str(folder)) == 0.23  # the estimate the cut used
    cut.update(beta_before=0.1, beta_below_floor=0.05)  # --pu_filter_min_beta raised the cut's: U holds about 0.05
    (folder / "pu_run.json").write_text(json.dumps(run))
    assert audit.recorded_beta(str(folder)) == 0.05
    del run["beta_resolved"]["unlabeled_filter"]  # PU on all of U: the β it trained with
    (folder / "pu_run.json").write_text(json.dumps(run))
    assert audit.recorded_beta(str(folder)) == 0.0117


def test_audit_refuses_a_missing_pipeline(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        audit.parse_args(["--pipeline", str(tmp_path / "nowhere")])
    assert refused.value.code == 2
    assert f"error: --pipeline '{tmp_path / 'nowhere'}' is not a folder." in capsys.readouterr().err


def test_audit_of_a_builtin_run_scores_its_ranking_against_a_reference(tmp_path, tiny_unet_config):
    model = tmp_path / "model"
    off = ["--pu_filter_unlabeled", "0"]  # a filtered run's β for the audit: the test below
    script.main(script.parse_args(tiny_args(model, tiny_unet_config(), "--beta", "0.09", *off)))
    out = tmp_path / "audit"
    summary = audit.main(
        audit.parse_args(
            ["--pipeline", str(model), "--reference_pipeline", str(model), "--output_dir", str(out)]
            + ["--num_draws", "2", "--timestep_range", "100", "600"]
        )
    )
    assert summary["num_images"] == 2200 and summary["beta"] == 0.09 and summary["estimated_sensitive_images"] == 198
    quality = summary["ranking_quality"]
    assert set(quality) == {"score", "pipeline ℓ alone", "reference ℓ alone"}
    assert quality["pipeline ℓ alone"] == quality["reference ℓ alone"]  # the same model, the same shared draws
    assert quality["score"]["auc"] == 0.5 and quality["score"]["k"] == 200  # ℓ − ℓ = 0 for every image
    assert all(0 <= entry["sensitive_in_top_k"] <= summary["top_k"] == 64 for entry in quality.values())
    assert summary["timestep_range"] == [100, 600]
    flow = tmp_path / "flow"  # a flow-matching reference scores on another scale: refused before scoring
    script.main(
        script.parse_args(tiny_args(flow, tiny_unet_config(), "--objective", "flow_matching", "--max_train_steps", "1"))
    )
    with pytest.raises(ValueError, match="same objective and number of timesteps"):
        audit.main(
            audit.parse_args(
                ["--pipeline", str(model), "--reference_pipeline", str(flow), "--output_dir", str(tmp_path / "a2")]
            )
        )
    flow_audit = audit.main(
        audit.parse_args(["--pipeline", str(flow), "--output_dir", str(tmp_path / "a3"), "--num_draws", "1"])
    )
    assert flow_audit["num_images"] == 2200  # a flow-matching model is scored with its own flow-matching ℓ


def test_filter_by_scores_drops_the_top_scores_and_estimates_the_share_left_from_s():
    from pu_diffusion.beta import drop_filtered, filter_by_scores

    # 90 normal U images score 0..89 / 100; the 10 hidden sensitive ones 10..19; S: 15 above the cut, 5 below it
    unlabeled = np.concatenate([np.arange(90) / 100, np.arange(10, 20)])
    sensitive = np.concatenate([np.arange(10, 25), [-5.0] * 5])
    cut = filter_by_scores(unlabeled, sensitive, beta=0.1, factor=1.0)
    assert cut["dropped_positions"] == list(range(90, 100)) and cut["threshold"] == 10.0
    assert cut["sensitive_recall"] == 0.75  # S's share at or above the cut stands for U's sensitive images
    assert cut["beta_left"] == pytest.approx(0.1 * 100 * 0.25 / 90)
    assert len(filter_by_scores(unlabeled, sensitive, beta=0.1, factor=2.0)["dropped_positions"]) == 20
    assert filter_by_scores(unlabeled, sensitive, beta=0.0, factor=1.0)["dropped_positions"] == []
    assert len(filter_by_scores(unlabeled, sensitive, beta=0.9, factor=10)["dropped_positions"]) == 98  # keeps 2
    rows = np.arange(1000, 1100)
    assert drop_filtered(rows, {"n_unlabeled": 100, **cut}).tolist() == list(range(1000, 1090))
    with pytest.raises(ValueError, match="resume with the data the run started with"):
        drop_filtered(rows[:50], {"n_unlabeled": 100, **cut})


def one_process():
    """What resolve_filtered_beta reads of an Accelerator, for one CPU process (and accelerate's logger state)."""
    from types import SimpleNamespace

    from accelerate import PartialState

    PartialState()
    return SimpleNamespace(is_main_process=True, num_processes=1, device="cpu")


def test_the_filter_warns_and_falls_back_on_an_untrusted_estimate_as_beta_auto_does(monkeypatch, caplog):
    accelerator = one_process()
    scores = (np.arange(100) / 100.0, np.arange(90, 100) / 100.0)
    monkeypatch.setattr(beta, "cross_fitted_scores", lambda unlabeled, sensitive, s=scores, **kwargs: s)
    untrusted = BetaEstimate(0.3, (0.1, 0.5), "bbe", 0.7, 0.7, 100, 10, False, "the interval is wide")
    monkeypatch.setattr(beta, "estimate_class_prior", lambda unlabeled, sensitive, estimator: untrusted)
    images = (torch.zeros(100, 1, 4, 4), torch.zeros(10, 1, 4, 4))
    with caplog.at_level("WARNING"):
        resolved = beta.resolve_filtered_beta(accelerator, lambda: images, None, 1.0, "bbe", 1.0, "estimate", 60)
    assert resolved["unlabeled_filter"]["beta_before"] == beta.DEFAULT_BETA
    assert len(resolved["unlabeled_filter"]["dropped_positions"]) == 10  # round(1.0 · 0.1 · 100)
    assert "the estimate cannot be trusted" in caplog.text and "the interval is wide" in caplog.text

    def cannot(unlabeled, sensitive, estimator):
        raise ValueError("constant scores")

    monkeypatch.setattr(beta, "estimate_class_prior", cannot)
    caplog.clear()
    with caplog.at_level("WARNING"):
        resolved = beta.resolve_filtered_beta(accelerator, lambda: images, None, 1.0, "bbe", 1.0, "estimate", 60)
    assert resolved["unlabeled_filter"]["beta_before"] == beta.DEFAULT_BETA and "could not estimate" in caplog.text


@pytest.mark.parametrize(
    "estimate,normal_auc,trusted,rule,cut_beta",
    [
        (0.26, 0.95, False, "estimate", 0.26),  # wide interval only: the cut uses the point estimate
        (0.05, 0.95, False, "estimate", 0.1),  # ... at least the default
        (0.26, 0.95, False, "default", 0.1),  # the rule of runs made before the flag
        (0.26, 0.80, False, "estimate", 0.26),  # untrusted for separability too: the cut uses it
        (0.26, 0.60, False, "estimate", 0.1),  # scores near chance (AUC < 0.75): the default cut, not the estimate
        (0.60, 0.95, False, "estimate", 0.3),  # an untrusted estimate never cuts more than 30 % of U
        (0.26, 0.95, True, "estimate", 0.26),  # trusted: the estimate, whatever the rule
        (0.26, 0.95, True, "default", 0.26),
    ],
)
def test_the_filter_cuts_with_an_untrusted_estimate_above_the_default(
    monkeypatch, caplog, estimate, normal_auc, trusted, rule, cut_beta
):
    accelerator = one_process()
    scores = (np.arange(100) / 100.0, np.arange(70, 100) / 100.0)  # S: the top 30 of U's scale
    monkeypatch.setattr(beta, "cross_fitted_scores", lambda unlabeled, sensitive, s=scores, **kwargs: s)
    reason = "ok" if trusted else "the interval is wider than 0.1"
    made = BetaEstimate(estimate, (estimate - 0.1, estimate + 0.1), "bbe", 0.9, normal_auc, 100, 30, trusted, reason)
    monkeypatch.setattr(beta, "estimate_class_prior", lambda unlabeled, sensitive, estimator: made)
    images = (torch.zeros(100, 1, 4, 4), torch.zeros(30, 1, 4, 4))
    with caplog.at_level("WARNING"):
        resolved = beta.resolve_filtered_beta(
            accelerator, lambda: images, None, 1.0, "bbe", 1.0, "estimate", 60, untrusted=rule
        )
    cut = resolved["unlabeled_filter"]
    assert cut["beta_before"] == pytest.approx(cut_beta)
    assert len(cut["dropped_positions"]) == round(cut_beta * 100)
    assert resolved["beta_estimate"]["estimate"] == estimate  # the estimate itself is recorded as it was made
    changed = not trusted and cut_beta != beta.DEFAULT_BETA
    assert (f"the cut uses β = {cut_beta:.4f} (the point estimate" in caplog.text) == changed
    assert ("capped at 0.3)" in caplog.text) == (changed and estimate > 0.3)
    assert resolved["beta"] <= (beta.DEFAULT_BETA if changed else 1)
    assert ("--pu_filter_untrusted_beta estimate" in resolved["beta_source"]) == changed
    assert ("barely better than chance: the cut uses the default β = 0.1" in caplog.text) == (normal_auc < 0.75)
    with pytest.raises(ValueError, match="rule must be one of"):
        beta.filter_cut_beta(resolved, "upper")


def test_after_an_untrusted_cut_pu_trains_with_at_most_the_default_beta(monkeypatch):
    """S's scores spread over U's whole scale: the cut of 26 holds a quarter of S, so the β left would be ≈ 0.26;
    an untrusted estimate sets how much is dropped, never a β above the default for PU."""
    accelerator = one_process()
    scores = (np.arange(100) / 100.0, np.arange(0, 100, 3) / 100.0)
    monkeypatch.setattr(beta, "cross_fitted_scores", lambda unlabeled, sensitive, s=scores, **kwargs: s)
    images = (torch.zeros(100, 1, 4, 4), torch.zeros(34, 1, 4, 4))
    for trusted, left in ((False, beta.DEFAULT_BETA), (True, None)):
        made = BetaEstimate(0.26, (0.16, 0.36), "bbe", 0.8, 0.8, 100, 34, trusted, "wide" if not trusted else "ok")
        monkeypatch.setattr(beta, "estimate_class_prior", lambda unlabeled, sensitive, estimator, m=made: m)
        resolved = beta.resolve_filtered_beta(
            accelerator, lambda: images, None, 1.0, "bbe", 1.0, "estimate", 60, untrusted="estimate"
        )
        uncapped = 0.26 * 100 * (1 - resolved["unlabeled_filter"]["sensitive_recall"]) / 74
        assert len(resolved["unlabeled_filter"]["dropped_positions"]) == 26 and uncapped > 0.2
        assert resolved["beta"] == pytest.approx(left if left is not None else uncapped)
        assert resolved["unlabeled_filter"]["beta_left"] == resolved["beta"]
        assert "untrusted_cut" not in resolved


@pytest.mark.parametrize(
    "flags,rule",
    [
        (["--beta", "auto", "--pu_filter_unlabeled", "1"], "estimate"),
        (["--beta", "auto", "--pu_filter_unlabeled", "1", "--pu_filter_untrusted_beta", "default"], "default"),
        (["--beta", "0.1", "--pu_filter_unlabeled", "1"], "default"),
        (["--beta", "auto"], "estimate"),  # --method pu filters by default
        (["--beta", "auto", "--pu_filter_unlabeled", "0"], "default"),
    ],
)
def test_the_untrusted_cut_rule_defaults_to_the_estimate_where_the_filter_estimates_beta(tmp_path, flags, rule):
    assert script.parse_args(["--output_dir", str(tmp_path / "out"), *flags]).pu_filter_untrusted_beta == rule


@pytest.mark.parametrize(
    "flags,factor",
    [([], 1.0), (["--beta", "auto"], 1.0), (["--pu_filter_unlabeled", "0"], 0.0), (["--method", "erasediff"], 0.0)],
)
def test_method_pu_filters_u_by_default_and_zero_turns_it_off(tmp_path, flags, factor):
    assert script.parse_args(["--output_dir", str(tmp_path / "out"), *flags]).pu_filter_unlabeled == factor


def test_the_resume_hint_of_a_run_older_than_the_cap_and_the_filter_names_only_the_flags_that_are_accepted(tmp_path):
    """A pu_run.json from before the cap, its shape flags, the score flags and the filter: the hint restores the cap
    and the filter (which decide the rest), and those flags parse into exactly what the run stored."""
    from pu_diffusion.run_dir import resume_hint

    before = ["--output_dir", str(tmp_path), "--beta", "0.1", "--pu_sensitive_cap", "0", "--pu_filter_unlabeled", "0"]
    old = vars(script.parse_args(before))
    for key in ("pu_sensitive_cap_reference", "pu_sensitive_cap_fraction", "pu_filter_unlabeled",
                "pu_filter_untrusted_beta", "beta_score_repeats", "beta_score_patience"):  # fmt: skip
        del old[key]  # as written before these flags existed
    now = vars(script.parse_args(["--output_dir", str(tmp_path)]))
    differing = sorted(key for key in set(old) | set(now) if old.get(key) != now.get(key))
    hint = resume_hint(old, now, differing)
    assert hint == (
        " That run was trained with β 0.1 (train_pu_diffusion.py's default for --method pu is --beta auto since "
        "2026-12-07) and without the U filter (on by default since 2026-12-06) and without the S-loss cap (on by "
        "default since 2026-12-05): add --beta 0.1 --pu_filter_unlabeled 0 --pu_sensitive_cap 0 to resume it as it "
        "was trained."
    )
    fixed = vars(script.parse_args(before))  # the hint's flags: everything the run stored, as it stored it
    assert all(fixed[key] == value for key, value in old.items())
    # one flag added later, alone: its value before it existed
    auto = vars(script.parse_args(["--output_dir", str(tmp_path), "--pu_filter_unlabeled", "0", "--beta", "auto"]))
    added = {key: value for key, value in auto.items() if key != "beta_score_repeats"}
    assert resume_hint(added, {**auto, "beta_score_repeats": 3}, ["beta_score_repeats"]) == (
        " That run was trained before --beta_score_repeats existed: add --beta_score_repeats 1 to resume it as it was "
        "trained."
    )


@pytest.mark.parametrize(
    "flags,expected",
    [
        ([], "auto"),  # --method pu, the built-in job included
        (["--beta", "0.1"], 0.1),
        (["--beta", "0.25", "--pu_filter_unlabeled", "0"], 0.25),
        (["--method", "supervised", "--supervised_form", "weighted"], 0.1),  # reads β, cannot estimate it
        (["--method", "unsupervised"], 0.1),
    ],
)
def test_method_pu_estimates_beta_by_default_and_the_other_methods_keep_one_tenth(tmp_path, flags, expected):
    args = script.parse_args(["--output_dir", str(tmp_path / "out"), *flags])
    assert args.beta == expected
    if expected == "auto":  # what --beta auto derives with the filter on: the midpoint, the cut's rule and floor
        assert (args.beta_auto_point, args.pu_filter_untrusted_beta, args.pu_filter_min_beta) == (
            "midpoint",
            "estimate",
            0.1,
        )
    assert "When not given: auto with --method pu, 0.1 otherwise." in " ".join(
        script.build_parser().format_help().split()
    )


def test_the_default_on_data_whose_s_cannot_be_told_apart_trains_as_beta_one_tenth(tmp_path, tiny_unet_config):
    """No --beta on 16 random U and 6 random S images: the default --beta auto scores them with real CNNs, cannot
    trust the estimate (chance-level AUC), and the run cuts and trains as β 0.1 would, not with the estimate."""
    from pu_diffusion.testing_utils import write_imagefolder

    data = write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6, size=8)
    out = tmp_path / "out"
    flags = tiny_args(out, tiny_unet_config(), "--train_data_dir", data, "--max_train_steps", "2", unfiltered=False)
    script.main(script.parse_args(flags))
    record = json.loads((out / "pu_run.json").read_text())
    resolved = record["beta_resolved"]
    assert record["beta"] == "auto" and not resolved["beta_estimate"]["trusted"]
    assert resolved["beta_estimate"]["normal_auc"] < beta.UNTRUSTED_CUT_MIN_AUC
    cut = resolved["unlabeled_filter"]
    assert cut["beta_before"] == beta.DEFAULT_BETA and len(cut["dropped_positions"]) == 2  # round(0.1 × 16)


def test_text_to_image_keeps_a_given_beta_of_one_tenth_by_default():
    import train_pu_text_to_image

    assert train_pu_text_to_image.build_parser().get_default("beta") == 0.1


def assert_refused_then_resumed(monkeypatch, resume: list[str], hint: str, fix: list[str], out) -> None:
    """Resuming with ``resume`` is refused with ``hint`` (the end of the error); with ``fix`` added it resumes to
    step 6 and scores nothing (the fixes here restore runs whose U was not scored)."""
    from pu_diffusion.cli import UsageError

    with pytest.raises(UsageError) as refused:
        script.main(script.parse_args(resume))
    assert str(refused.value).endswith(hint)
    monkeypatch.setattr(beta, "cross_fitted_scores", None)
    monkeypatch.setattr(beta, "estimate_beta_from_images", None)
    script.main(script.parse_args([*resume, *fix]))
    assert json.loads((out / "train_stats.json").read_text())["global_step"] == 6


def test_a_run_from_before_beta_auto_was_the_default_is_refused_by_name_and_resumes_with_beta_one_tenth(
    tmp_path, tiny_unet_config, monkeypatch
):
    """A PU run trained with β 0.1 when no --beta was given (the default before 2026-12-07), resumed with the same
    flags, would estimate β: it is refused with the one flag that restores it, and resumes with it, scoring nothing."""
    data, out = write_planted_folder(tmp_path / "data"), tmp_path / "old"
    flags = ["--train_data_dir", data, "--pu_filter_unlabeled", "0"]
    script.main(
        script.parse_args(tiny_args(out, tiny_unet_config(), *flags, "--beta", "0.1", "--max_train_steps", "3"))
    )
    assert json.loads((out / "pu_run.json").read_text())["beta"] == 0.1
    resume = tiny_args(out, tiny_unet_config(), *flags, "--resume_from_checkpoint", "latest", unfiltered=False)
    hint = (
        "That run was trained with β 0.1 (train_pu_diffusion.py's default for --method pu is --beta auto since "
        "2026-12-07): add --beta 0.1 to resume it as it was trained."
    )
    assert_refused_then_resumed(monkeypatch, resume, hint, ["--beta", "0.1"], out)


@pytest.mark.parametrize("auto", [False, True])
def test_a_run_without_the_filter_resumes_with_filter_zero(tmp_path, tiny_unet_config, monkeypatch, auto):
    """A PU run trained without the filter (the default before 2026-12-06) is refused by name when resumed with
    today's default, with the one flag that fixes it (with --beta auto, not the cut rule the filter derives), and
    resumes with it."""
    monkeypatch.setattr(beta, "estimate_beta_from_images", trusted_estimate(0.1))
    data, out = write_planted_folder(tmp_path / "data"), tmp_path / "old"
    flags = ["--train_data_dir", data, "--beta", "auto" if auto else "0.1"]
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *flags, "--pu_filter_unlabeled", "0")))
    recorded = json.loads((out / "pu_run.json").read_text())
    for key in ("pu_filter_unlabeled", "pu_filter_untrusted_beta"):  # as written before the flags existed
        del recorded[key]
    (out / "pu_run.json").write_text(json.dumps(recorded))
    resume = tiny_args(out, tiny_unet_config(), *flags, "--resume_from_checkpoint", "latest", unfiltered=False)
    hint = (
        "That run was trained without the U filter (on by default since 2026-12-06): add --pu_filter_unlabeled 0 to "
        "resume it as it was trained."
    )
    assert_refused_then_resumed(monkeypatch, resume, hint, ["--pu_filter_unlabeled", "0"], out)


@pytest.mark.parametrize(
    "flags", [["--beta", "0.1", "--pu_filter_unlabeled", "1"], ["--beta", "auto", "--pu_filter_unlabeled", "0"]]
)
def test_the_untrusted_cut_rule_is_refused_where_nothing_is_cut_with_an_estimate(tmp_path, flags):
    from pu_diffusion.cli import UsageError

    with pytest.raises(UsageError, match="it needs --beta auto and --pu_filter_unlabeled; drop it"):
        script.parse_args(["--output_dir", str(tmp_path / "out"), *flags, "--pu_filter_untrusted_beta", "estimate"])


def test_a_filter_run_from_before_the_cut_rule_resumes_with_its_old_value(tmp_path, tiny_unet_config, monkeypatch):
    """A --beta auto --pu_filter_unlabeled pu_run.json without --pu_filter_untrusted_beta is refused by name when
    resumed with the new default, with the fix, and resumes with the old value (reading its recorded cut)."""
    from pu_diffusion.cli import UsageError

    def filter_scores(unlabeled, sensitive, **kwargs):  # S-like = the bright images
        return unlabeled.mean(dim=(1, 2, 3)).numpy(), sensitive.mean(dim=(1, 2, 3)).numpy()

    monkeypatch.setattr(beta, "cross_fitted_scores", filter_scores)
    monkeypatch.setattr(beta, "estimate_class_prior", trusted_estimate(0.1))
    data, out = write_planted_folder(tmp_path / "data"), tmp_path / "old"
    flags = ["--train_data_dir", data, "--beta", "auto", "--pu_filter_unlabeled", "1"]
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *flags, "--max_train_steps", "3")))
    recorded = json.loads((out / "pu_run.json").read_text())
    assert recorded["pu_filter_untrusted_beta"] == "estimate"
    del recorded["pu_filter_untrusted_beta"]  # as written before the flag existed
    (out / "pu_run.json").write_text(json.dumps(recorded))
    resume = tiny_args(out, tiny_unet_config(), *flags, "--resume_from_checkpoint", "latest")
    with pytest.raises(UsageError, match="add --pu_filter_untrusted_beta default to resume it as it was trained"):
        script.main(script.parse_args(resume))
    monkeypatch.setattr(beta, "cross_fitted_scores", None)  # a resumed run reads its cut, it scores nothing
    script.main(script.parse_args([*resume, "--pu_filter_untrusted_beta", "default"]))
    assert json.loads((out / "train_stats.json").read_text())["global_step"] == 6
    assert json.loads((out / "pu_run.json").read_text())["beta_resolved"] == recorded["beta_resolved"]


def test_the_filter_warns_when_its_cut_holds_few_of_the_sensitive_images(monkeypatch, caplog):
    accelerator = one_process()
    images = (torch.zeros(100, 1, 4, 4), torch.zeros(10, 1, 4, 4))
    for sensitive_scores, warned in ((np.arange(90, 100) / 100.0, False), (np.arange(85, 95) / 100.0, True)):
        scores = (np.arange(100) / 100.0, sensitive_scores)  # the cut (10 of 100) is at 0.90: S holds 100 % or 50 %
        monkeypatch.setattr(beta, "cross_fitted_scores", lambda unlabeled, sensitive, s=scores, **kwargs: s)
        caplog.clear()
        with caplog.at_level("WARNING"):
            resolved = beta.resolve_filtered_beta(accelerator, lambda: images, 0.1, 1.0, "bbe", 1.0, "estimate", 60)
        assert resolved["unlabeled_filter"]["sensitive_recall"] == (0.5 if warned else 1.0)
        assert ("holds only an estimated 50 %" in caplog.text) == warned


def test_few_sensitive_warning_fires_only_when_s_is_smaller_than_what_beta_hides_in_u():
    assert beta.few_sensitive_warning(100, 1100, 1 / 11) is None  # S as large as U's ≈100 sensitive images
    message = beta.few_sensitive_warning(50, 1250, 0.2)
    assert "S holds 50 images, fewer than the ≈250 sensitive images" in message and "--pu_filter_unlabeled" in message


def test_a_pu_run_with_a_small_s_says_so_in_its_card(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    data = write_planted_folder(tmp_path / "data")  # 44 U, 12 S
    off = ["--pu_filter_unlabeled", "0"]  # the warning is for PU on all of U
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), "--train_data_dir", data, "--beta", "0.5", *off)))
    assert (
        "- warning: S holds 12 images, fewer than the ≈22 sensitive images β = 0.500" in (out / "README.md").read_text()
    )
    quiet = tmp_path / "quiet"
    script.main(
        script.parse_args(tiny_args(quiet, tiny_unet_config(), "--train_data_dir", data, "--beta", "0.2", *off))
    )
    assert "warning:" not in (quiet / "README.md").read_text()


@pytest.mark.parametrize(
    "given,estimate,trusted,floored",
    [
        (0.05, None, None, True),  # a given β below the floor: the cut and the β left read the floor
        (0.2, None, None, False),  # above it: as given
        (None, 0.05, True, True),  # --beta auto's trusted estimate below it
        (None, 0.26, False, False),  # an untrusted one already cuts with at least the default
    ],
)
def test_the_filter_cuts_with_at_least_the_floor(monkeypatch, given, estimate, trusted, floored):
    accelerator = one_process()
    scores = (np.arange(100) / 100.0, np.arange(70, 100) / 100.0)
    monkeypatch.setattr(beta, "cross_fitted_scores", lambda unlabeled, sensitive, s=scores, **kwargs: s)
    if estimate is not None:
        made = BetaEstimate(estimate, (estimate - 0.01, estimate + 0.01), "bbe", 0.9, 0.95, 100, 30, trusted, "ok")
        monkeypatch.setattr(beta, "estimate_class_prior", lambda unlabeled, sensitive, estimator: made)
    images = (torch.zeros(100, 1, 4, 4), torch.zeros(30, 1, 4, 4))

    def resolve(floor):
        return beta.resolve_filtered_beta(
            accelerator, lambda: images, given, 1.0, "bbe", 1.0, "estimate", 60, untrusted="estimate", min_beta=floor
        )

    off, on = resolve(0.0), resolve(0.1)
    first = given if given is not None else estimate if trusted else beta.untrusted_cut_beta(estimate)
    assert off["unlabeled_filter"]["beta_before"] == pytest.approx(first)
    cut = on["unlabeled_filter"]
    assert cut["beta_before"] == pytest.approx(0.1 if floored else first)
    assert len(cut["dropped_positions"]) == round(cut["beta_before"] * 100)
    # the β left is read from the β the cut used: 30 S scores, the cut at 0.90 holds a third of them
    recall = cut["sensitive_recall"]
    assert on["beta"] == pytest.approx(
        min(
            cut["beta_before"] * 100 * (1 - recall) / (100 - len(cut["dropped_positions"])),
            0.1 if not trusted and given is None else 1,
        )
    )
    assert ("raised to the floor 0.1 for the cut (--pu_filter_min_beta)" in on["beta_source"]) == floored
    assert cut.get("beta_below_floor") == (pytest.approx(first) if floored else None)
    if not floored:
        assert on == off
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\)"):
        beta.floor_cut_beta(on, 1.0)


@pytest.mark.parametrize(
    "flags,floor",
    [
        (["--beta", "auto"], 0.1),
        (["--beta", "0.05"], 0.1),
        (["--beta", "0.1"], 0.0),  # it could not change the cut: runs like it keep their value
        ([], 0.1),  # --beta auto, the default of --method pu
        (["--beta", "0.05", "--pu_filter_unlabeled", "0"], 0.0),
        (["--beta", "0.05", "--method", "supervised"], 0.0),
        (["--beta", "auto", "--pu_filter_min_beta", "0"], 0.0),
        (["--beta", "0.3", "--pu_filter_min_beta", "0.4"], 0.4),
    ],
)
def test_the_filter_floor_defaults_to_the_default_beta_where_it_can_bind(tmp_path, flags, floor):
    assert script.parse_args(["--output_dir", str(tmp_path / "out"), *flags]).pu_filter_min_beta == floor


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--pu_filter_unlabeled", "0", "--pu_filter_min_beta", "0.1"], "it needs --method pu with --pu_filter_unlab"),
        (["--method", "unsupervised", "--pu_filter_min_beta", "0.1"], "it needs --method pu with --pu_filter_unlab"),
        (["--pu_filter_min_beta", "1"], r"--pu_filter_min_beta is a β in \[0, 1\) \(0: no floor\); got 1\."),
        (["--pu_filter_min_beta=-0.1"], r"--pu_filter_min_beta is a β in \[0, 1\) \(0: no floor\); got -0\.1\."),
    ],
)
def test_a_bad_filter_floor_is_refused_by_name(tmp_path, flags, message):
    from pu_diffusion.cli import UsageError

    with pytest.raises(UsageError, match=message):
        script.parse_args(["--output_dir", str(tmp_path / "out"), *flags])


def test_a_beta_auto_run_from_before_the_midpoint_default_gets_the_flag_that_resumes_it(tmp_path):
    """A --beta auto pu_run.json written when the point estimate was the default (with or without the flag stored):
    the hint restores it, and the restored flags parse into what the run stored."""
    from pu_diffusion.run_dir import resume_hint

    old = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "auto", "--beta_auto_point", "estimate"]))
    now = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "auto"]))
    expected = (
        " That run was trained with --beta auto's point estimate (train_pu_diffusion.py's default is the midpoint "
        "since 2026-12-07): add --beta_auto_point estimate to resume it as it was trained."
    )
    assert resume_hint(old, now, ["beta_auto_point"]) == expected
    assert resume_hint({k: v for k, v in old.items() if k != "beta_auto_point"}, now, ["beta_auto_point"]) == expected
    import train_pu_text_to_image

    text = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--beta", "auto"]
    assert train_pu_text_to_image.parse_args(text).beta_auto_point == "estimate"  # not measured there: unchanged
    given = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "0.2"]))
    assert resume_hint(given, {**given, "beta_auto_point": "midpoint"}, ["beta_auto_point"]) == ""  # not auto


def test_a_beta_auto_run_trained_with_the_point_estimate_resumes_only_with_it(tmp_path, tiny_unet_config, monkeypatch):
    """A --beta auto run made when BBE's point was the default is refused by name when resumed with today's default
    (the midpoint), and resumes with --beta_auto_point estimate on its recorded β, scoring nothing."""
    from pu_diffusion.cli import UsageError

    monkeypatch.setattr(beta, "estimate_beta_from_images", trusted_estimate(0.2))
    data, out = write_planted_folder(tmp_path / "data"), tmp_path / "old"
    flags = ["--train_data_dir", data, "--beta", "auto", "--pu_filter_unlabeled", "0"]
    old = [*flags, "--beta_auto_point", "estimate"]
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *old, "--max_train_steps", "3")))
    resume = ["--resume_from_checkpoint", "latest"]
    with pytest.raises(UsageError, match="add --beta_auto_point estimate to resume it as it was trained"):
        script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *flags, *resume)))
    monkeypatch.setattr(beta, "estimate_beta_from_images", None)  # a resumed run reads its β, it scores nothing
    script.main(script.parse_args(tiny_args(out, tiny_unet_config(), *old, *resume)))
    assert json.loads((out / "train_stats.json").read_text())["global_step"] == 6
    assert json.loads((out / "pu_run.json").read_text())["beta_resolved"]["beta"] == 0.2


def test_a_filter_run_from_before_the_floor_gets_the_flag_that_resumes_it(tmp_path):
    """A --beta auto --pu_filter_unlabeled pu_run.json without --pu_filter_min_beta: the hint restores 0 (no floor),
    which parses into what the run stored."""
    from pu_diffusion.run_dir import resume_hint

    old = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "auto", "--pu_filter_min_beta", "0"]))
    del old["pu_filter_min_beta"]  # as written before the flag existed
    now = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "auto"]))
    hint = resume_hint(old, now, ["pu_filter_min_beta"])
    assert hint == (
        " That run was trained before --pu_filter_min_beta existed: add --pu_filter_min_beta 0.0 to resume it as it "
        "was trained."
    )
    fixed = vars(script.parse_args(["--output_dir", str(tmp_path), "--beta", "auto", "--pu_filter_min_beta", "0.0"]))
    assert all(fixed[key] == value for key, value in old.items())
