"""train_pu_text_to_image.py on a tiny Stable Diffusion pipeline built in the test (offline)."""

import os

import pytest
import torch
from safetensors.torch import load_file

import train_pu_text_to_image as script
from pu_diffusion.testing_utils import build_tiny_sd, write_captioned_folder

ORIGINAL_COMPUTE_LOSS = script.compute_loss


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture
def captioned(tmp_path):
    return write_captioned_folder(tmp_path / "data")


def sd_args(model, data, out, *extra):
    return [
        "--pretrained_model_name_or_path",
        model,
        "--train_data_dir",
        data,
        "--output_dir",
        str(out),
        "--resolution",
        "16",
        "--train_batch_size",
        "4",
        "--sensitive_batch_size",
        "2",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "0",
        "--seed",
        "0",
        "--report_to",
        "none",
        "--learning_rate",
        "1e-3",
        "--lr_warmup_steps",
        "0",
        "--num_inference_steps",
        "2",
        *extra,
    ]


def run(argv):
    return script.main(script.parse_args(argv))


def test_end_to_end_writes_a_loadable_sd_pipeline(tiny_sd, captioned, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    out = tmp_path / "out"
    run(
        sd_args(
            tiny_sd,
            captioned,
            out,
            "--validation_prompts",
            "a photo of a man",
            "--num_validation_images",
            "2",
            "--proportion_empty_prompts",
            "0.2",
            "--random_flip",
        )
    )
    for name in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae",
        "text_encoder",
        "tokenizer",
        "validation/final.png",
        "README.md",
        "checkpoint-4/unet/diffusion_pytorch_model.safetensors",
    ]:
        assert (out / name).exists(), name
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, StableDiffusionPipeline)
    image = pipeline(
        "a photo of a man", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert image.shape == (1, 16, 16, 3)
    base = load_file(os.path.join(tiny_sd, "unet", "diffusion_pytorch_model.safetensors"))
    tuned = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert "a photo of a man" in (out / "README.md").read_text()


def losses_of_first_step(tiny_sd, data, out, *extra, monkeypatch):
    """Run 1 step and capture the per-step risk terms via the logs."""
    seen = []
    real = ORIGINAL_COMPUTE_LOSS

    def spy(*args, **kwargs):
        terms = real(*args, **kwargs)
        seen.append(terms.log_dict())
        return terms

    monkeypatch.setattr(script, "compute_loss", spy)
    run(sd_args(tiny_sd, data, out, "--max_train_steps", "2", "--checkpointing_steps", "100", *extra))
    return seen


@pytest.mark.parametrize("extra", [[], ["--random_flip", "--proportion_empty_prompts", "0.5"]])
def test_caching_changes_no_loss_value(tiny_sd, captioned, tmp_path, monkeypatch, extra):
    """Cached latents/text states give the losses of encoding every batch (centre crops: what the cache holds)."""
    cached = losses_of_first_step(
        tiny_sd, captioned, tmp_path / "a", "--center_crop", "--cache_latents", *extra, monkeypatch=monkeypatch
    )
    plain = losses_of_first_step(
        tiny_sd, captioned, tmp_path / "b", "--center_crop", "--no_cache_latents", *extra, monkeypatch=monkeypatch
    )
    assert len(cached) == len(plain) == 2
    for first, second in zip(cached, plain):
        for key in ("risk", "L_U-", "L_S-"):
            assert first[key] == pytest.approx(second[key], rel=1e-4), key


def test_random_crops_are_kept_without_the_cache(tiny_sd, captioned, tmp_path, monkeypatch):
    """Past the cache's row limit (or without --center_crop) crops stay random: the cache never forces centre crops."""
    from pu_diffusion import text_to_image

    seen = []
    real = text_to_image.TextImageDataset.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append((self.transform.center_crop, self.latent_cache is not None))

    monkeypatch.setattr(script.TextImageDataset, "__init__", spy)
    monkeypatch.setattr(text_to_image, "CACHE_LATENTS_MAX_ROWS", 0)
    run(sd_args(tiny_sd, captioned, tmp_path / "random", "--max_train_steps", "1"))
    run(sd_args(tiny_sd, captioned, tmp_path / "many", "--center_crop", "--max_train_steps", "1"))
    assert seen == [(False, False), (True, False)]
    monkeypatch.setattr(text_to_image, "CACHE_LATENTS_MAX_ROWS", 10_000)
    run(sd_args(tiny_sd, captioned, tmp_path / "few", "--center_crop", "--max_train_steps", "1"))
    assert seen[-1] == (True, True)
    with pytest.raises(ValueError, match="--cache_latents encodes centre crops"):
        script.parse_args(sd_args(tiny_sd, captioned, tmp_path / "x", "--cache_latents"))


def test_sensitive_caption_replaces_s_captions(tiny_sd, captioned):
    args = script.parse_args(sd_args(tiny_sd, captioned, "/tmp/unused", "--sensitive_caption", "a photo of a man"))
    dataset, unlabeled, sensitive, captions = script.load_data(args)
    assert len(sensitive) == 4 and all(captions[int(r)] == "a photo of a man" for r in sensitive)
    args = script.parse_args(sd_args(tiny_sd, captioned, "/tmp/unused"))
    _, _, sensitive, captions = script.load_data(args)
    assert all(captions[int(r)] == "a photo of brad" for r in sensitive)


@pytest.mark.parametrize("proportion", [0.0, 0.5, 1.0])
def test_caption_dropout_reaches_the_unet(tiny_sd, captioned, tmp_path, monkeypatch, proportion):
    """--proportion_empty_prompts replaces that share of the captions the UNet sees by the empty prompt's states."""
    seen = []
    real = script.predict_noise

    def spy(unet, noisy_latents, timesteps, text_states, empty_state=None, guidance_scale=None):
        matches = (text_states - empty_state.to(text_states.dtype)).flatten(1).abs().amax(1) == 0
        seen.extend(matches.tolist())
        return real(unet, noisy_latents, timesteps, text_states, empty_state, guidance_scale)

    monkeypatch.setattr(script, "predict_noise", spy)
    run(
        sd_args(
            tiny_sd,
            captioned,
            tmp_path / "out",
            "--proportion_empty_prompts",
            str(proportion),
            "--max_train_steps",
            "8",
            "--checkpointing_steps",
            "100",
        )
    )
    assert len(seen) == 8 * 6
    share = sum(seen) / len(seen)
    if proportion in (0.0, 1.0):
        assert share == proportion
    else:
        assert 0.25 < share < 0.75


def test_guided_pu_loss_uses_the_guided_prediction(tiny_sd):
    from diffusers import UNet2DConditionModel

    from pu_diffusion.text_to_image import predict_noise

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    text, empty = torch.randn(2, 16, 16), torch.randn(1, 16, 16)
    with torch.no_grad():
        conditional = unet(latents, timesteps, text).sample
        unconditional = unet(latents, timesteps, empty.expand(2, -1, -1)).sample
        guided = predict_noise(unet, latents, timesteps, text, empty, guidance_scale=3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-4, atol=1e-5)


def test_resume_equals_straight_training(tiny_sd, captioned, tmp_path):
    import shutil

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(sd_args(tiny_sd, captioned, straight))
    resumed.mkdir()
    shutil.copy(straight / "pu_run.json", resumed / "pu_run.json")
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(sd_args(tiny_sd, captioned, resumed, "--resume_from_checkpoint", "latest"))
    a = load_file(str(straight / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "unet" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_lora_weights_load_into_the_base_pipeline(tiny_sd, captioned, tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    run(sd_args(tiny_sd, captioned, out, "--rank", "4", "--learning_rate", "1e-2"))
    assert (out / "pytorch_lora_weights.safetensors").exists() and not (out / "unet").exists()
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    before = pipeline(
        "a photo of a man", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    pipeline.load_lora_weights(str(out))
    after = pipeline(
        "a photo of a man", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    namespace = run_card_usage(out)  # the model card's own usage snippet runs as written
    assert namespace["image"].size == (16, 16)


def run_card_usage(out):
    """Execute the python block of the model card's Usage section; return its variables."""
    card = (out / "README.md").read_text()
    code = card.split("## Usage", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)  # noqa: S102 - the snippet a user would copy
    return namespace


def test_full_pipeline_card_usage_runs_and_names_the_safety_checker(tiny_sd, captioned, tmp_path):
    out = tmp_path / "out"
    run(sd_args(tiny_sd, captioned, out, "--max_train_steps", "1", "--checkpointing_steps", "100"))
    assert "safety checker: none (the base model has none)" in (out / "README.md").read_text()
    assert run_card_usage(out)["image"].size == (16, 16)


def test_v_prediction_on_an_epsilon_base_samples_with_v_prediction(tiny_sd, captioned, tmp_path):
    """Training on v-targets must reach the saved (and validation) pipeline's scheduler too."""
    from diffusers import DiffusionPipeline

    out = tmp_path / "out"
    run(
        sd_args(
            tiny_sd,
            captioned,
            out,
            "--prediction_type",
            "v_prediction",
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "100",
            "--validation_prompts",
            "a photo of a man",
            "--num_validation_images",
            "1",
        )
    )
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    base = DiffusionPipeline.from_pretrained(tiny_sd)
    assert base.scheduler.config.prediction_type == "epsilon"


def test_sub_folder_layout_with_metadata(tiny_sd, tmp_path):
    data = write_captioned_folder(tmp_path / "folders", with_folders=True)
    args = script.parse_args(sd_args(tiny_sd, data, tmp_path / "o"))
    _, unlabeled, sensitive, _ = script.load_data(args)
    assert (len(unlabeled), len(sensitive)) == (8, 4)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--caption_column", "caption"], "--caption_column 'caption'"),
        (["--sensitive_label", "nobody"], "No sensitive"),
        (["--beta", "1.5"], "--beta must lie in"),
    ],
)
def test_bad_input_is_refused(tiny_sd, captioned, tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(sd_args(tiny_sd, captioned, out, *extra))
    assert not out.exists()
