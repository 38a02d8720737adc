import json
import os

import numpy as np
import pytest
import torch

from conftest import tiny_args
from pu_diffusion.digit_classifier import DigitClassifier, load_or_train_digit_classifier
from pu_diffusion.metrics import CLASSIFIER_FD, frechet_distance, non_sensitive_rate


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


def test_classifier_cache_roundtrip(tmp_path, monkeypatch):
    import pu_diffusion.digit_classifier as evaluation

    calls = []

    def fake_train(resolution, seed):
        calls.append(resolution)
        return DigitClassifier(resolution), {"accuracy_held_out": 0.5, "resolution": resolution}

    monkeypatch.setattr(evaluation, "train_digit_classifier", fake_train)
    first, info = load_or_train_digit_classifier(8, str(tmp_path))
    second, info2 = load_or_train_digit_classifier(8, str(tmp_path))
    assert calls == [8] and info2 == info
    assert os.path.exists(tmp_path / "mnist_classifier_r8_s0.safetensors")
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])


def test_evaluate_a_tiny_saved_pipeline_end_to_end(tmp_path, tiny_unet_config, monkeypatch):
    import evaluate_pu_diffusion
    import pu_diffusion.digit_classifier as evaluation
    import train_pu_diffusion

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    real_train = evaluation.train_digit_classifier
    monkeypatch.setattr(evaluation, "train_digit_classifier", lambda r, s: real_train(r, s, epochs=1))
    out = tmp_path / "model"
    train_pu_diffusion.main(train_pu_diffusion.parse_args(tiny_args(out, tiny_unet_config(), "--max_train_steps", "2")))
    argv = ["--pipeline", str(out), "--num_samples", "12", "--num_inference_steps", "2", "--update_model_card"]
    metrics = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ["non_sensitive_rate", CLASSIFIER_FD, "feature_space", "classifier", "num_samples", "sampler",
                "sensitive_classes", "predicted_class_counts", "classifier_accuracy", "samples_per_second"]:
        assert key in saved, key
    assert saved["sensitive_classes"] == [1, 3, 5, 7, 9] and saved["num_samples"] == 12
    assert sum(saved["predicted_class_counts"]) == 12
    assert 0 <= saved["non_sensitive_rate"] <= 1 and "not Inception" in saved["feature_space"]
    assert (out / "eval" / "samples_eval.png").exists()
    assert "## Evaluation (evaluate_pu_diffusion.py)" in (out / "README.md").read_text()
    again = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))  # deterministic given its seed
    assert again["non_sensitive_rate"] == metrics["non_sensitive_rate"]
    assert again[CLASSIFIER_FD] == pytest.approx(metrics[CLASSIFIER_FD])
    assert (out / "README.md").read_text().count("## Evaluation (evaluate_pu_diffusion.py)") == 1


def test_benchmark_smoke_mode(tmp_path, monkeypatch):
    import importlib.util

    import pu_diffusion.digit_classifier as evaluation

    monkeypatch.setenv("PU_DIFFUSION_CACHE", str(tmp_path / "cache"))
    real_train = evaluation.train_digit_classifier
    monkeypatch.setattr(evaluation, "train_digit_classifier", lambda r, s: real_train(r, s, epochs=1))
    spec = importlib.util.spec_from_file_location("bench", os.path.join(os.path.dirname(__file__), "..",
                                                                        "benchmarks", "mnist_pu_benchmark.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(bench.parse_args(["--smoke", "--with_nnpu", "--beta_sweep", "0.1", "0.3",
                                          "--output_dir", str(tmp_path / "bench")]))
    assert set(report["table"]) == {"even/unsupervised", "even/supervised", "even/pu", "even/pu-nn"}
    assert len(report["per_seed"]) == 8
    assert "p_rate_vs_unsupervised" in report["table"]["even/pu"]
    assert (tmp_path / "bench" / "results.json").exists() and (tmp_path / "bench" / "methods_grid.png").exists()
    assert not (tmp_path / "bench" / "runs" / "even_pu_s0").exists()
    assert [row["beta"] for row in report["beta_sweep"]] == [0.1, 0.3]
    assert (tmp_path / "bench" / "beta_sweep.png").exists()


def load_benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_benchmarks_run_and_write_json(tmp_path):
    speed = load_benchmark("speed")
    report = speed.main(speed.parse_args(["--resolution", "8", "--rounds", "2", "--warmup", "1",
                                          "--generation_samples", "2", "--generation_steps", "2",
                                          "--output", str(tmp_path / "speed.json")]))
    assert set(report["steps_per_second"]) == {"unsupervised", "supervised", "pu"}
    assert report["ratio_vs_unsupervised"]["unsupervised"] == 1.0 and all(v > 0 for v in report["peak_memory_mb"].values())
    sd = load_benchmark("sd_speed")
    report = sd.main(sd.parse_args(["--resolution", "16", "--rounds", "2", "--unlabeled_batch_size", "2",
                                    "--sensitive_batch_size", "1", "--output", str(tmp_path / "sd.json")]))
    assert report["speedup_ours_vs_authors"] > 0 and json.loads((tmp_path / "sd.json").read_text())["peak_memory_mb"]


def test_scoring_images_with_the_models_own_loss(tiny_unet_config):
    from diffusers import DDPMScheduler, UNet2DModel

    from pipelines import diffusion_losses, normal_probability
    from pu_diffusion.losses import per_sample_diffusion_loss

    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config()))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    losses = diffusion_losses(unet, scheduler, images, num_draws=3, generator=torch.Generator().manual_seed(0))
    assert losses.shape == (5,) and (losses > 0).all()
    # one draw reproduces ℓ computed by hand with the same noise and timesteps
    generator = torch.Generator().manual_seed(1)
    single = diffusion_losses(unet, scheduler, images, num_draws=1, generator=generator)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (5,), generator=generator)
    with torch.no_grad():
        expected = per_sample_diffusion_loss(unet(scheduler.add_noise(images, noise, timesteps), timesteps).sample, noise)
    torch.testing.assert_close(single, expected)
    probability = normal_probability(losses)
    assert ((probability > 0) & (probability <= 1)).all()


def test_evaluate_with_a_transformers_classifier(tmp_path, tiny_unet_config):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    import evaluate_pu_diffusion
    from pu_diffusion.testing_utils import write_imagefolder

    classifier = tmp_path / "classifier"
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=3,
                       id2label={0: "cat", 1: "dog", 2: "face"}, label2id={"cat": 0, "dog": 1, "face": 2})
    ViTForImageClassification(config).save_pretrained(str(classifier))
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(str(classifier))
    pipeline_dir = tmp_path / "pipe"
    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config(3)))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(pipeline_dir))
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=6, n_sensitive=0, size=8)
    argv = ["--pipeline", str(pipeline_dir), "--num_samples", "6", "--num_inference_steps", "2",
            "--classifier_name_or_path", str(classifier), "--sensitive_labels", "face", "--test_data_dir", test_dir]
    metrics = evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv))
    counts = metrics["predicted_class_counts"]
    assert metrics["sensitive_classes"] == [2] and sum(counts) == 6
    assert metrics["non_sensitive_rate"] == pytest.approx(1 - counts[2] / 6)
    assert np.isfinite(metrics[CLASSIFIER_FD]) and "not Inception" in metrics["feature_space"]
    assert (pipeline_dir / "eval" / "metrics.json").exists()
    with pytest.raises(ValueError, match="--sensitive_labels: 'nose'"):
        evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args(argv[:-3] + ["nose", "--test_data_dir", test_dir]))
