"""Stable Diffusion 3 (rectified flow) through train_pu_text_to_image.py: a tiny StableDiffusion3Pipeline built
offline (two CLIP encoders, a T5 encoder with a locally built tokenizer, an SD3Transformer2DModel), every method that
applies, full and LoRA, saved and reloaded with the stock pipeline class, resumed exactly."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_text_to_image import run, sd_args

from pu_diffusion.families import TextSide, detect_family, prepare_unet, unpack_pooled
from pu_diffusion.testing_utils import build_tiny_sd3, write_captioned_folder


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return build_tiny_sd3(str(tmp_path_factory.mktemp("tiny_sd3")))


@pytest.fixture
def captioned(tmp_path):
    return write_captioned_folder(tmp_path / "data")


def test_packed_sd3_conditioning_is_what_the_pipeline_itself_encodes(tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    assert detect_family(tiny_sd3) == "sd3"
    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    prompts = ["a photo of a man", "brad"]
    with torch.no_grad():
        tokens, _, pooled, _ = pipeline.encode_prompt(
            prompts, prompts, prompts, device="cpu", do_classifier_free_guidance=False
        )
    packed = TextSide.load("sd3", tiny_sd3).encode(prompts)
    assert packed.shape == (2, tokens.shape[1] + 1, tokens.shape[2])  # CLIP 16 + T5 256 tokens, + the pooled one
    unpacked_tokens, unpacked_pooled = unpack_pooled(packed, pooled.shape[-1])
    torch.testing.assert_close(unpacked_tokens, tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unpacked_pooled, pooled)


@pytest.mark.parametrize("method", ["pu", "unsupervised", "supervised", "erasediff"])
def test_every_method_trains_sd3_and_saves_a_stock_sd3_pipeline(tiny_sd3, captioned, tmp_path, method):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    out = tmp_path / method
    extra = []
    if method == "pu":  # cached latents and captions, and a validation grid through the SD3 pipeline
        extra = ["--center_crop", "--validation_prompts", "a photo of a man", "--num_validation_images", "1"]
    run(sd_args(tiny_sd3, captioned, out, "--method", method, "--max_train_steps", "2", *extra))
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, StableDiffusion3Pipeline)
    assert isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler) and pipeline.scheduler.config.shift == 3.0
    images = pipeline(
        "a photo of a man", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    before = load_file(f"{tiny_sd3}/transformer/diffusion_pytorch_model.safetensors")
    after = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[key], after[key]) for key in before)  # it trained
    card = (out / "README.md").read_text()
    assert "model family: sd3 (StableDiffusion3Pipeline)" in card
    if method == "pu":
        assert (out / "validation" / "final.png").exists() and "cached latents: True" in card


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_esd_trains_sd3_joint_attention_or_the_rest_of_its_blocks(tiny_sd3, captioned, tmp_path, method):
    """ESD on an MMDiT: esd-x changes the joint attention only, esd-u the blocks' other layers only; embedders and
    output layers stay; the result loads with the stock StableDiffusion3Pipeline."""
    from diffusers import StableDiffusion3Pipeline

    from pu_diffusion.esd import in_esd_set

    out = tmp_path / method
    args = ["--method", method, "--sensitive_caption", "a photo of brad", "--esd_sampling_steps", "3"]
    run(sd_args(tiny_sd3, captioned, out, *args, "--learning_rate", "1e-2", "--max_train_steps", "2"))
    before = load_file(f"{tiny_sd3}/transformer/diffusion_pytorch_model.safetensors")
    after = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(in_esd_set(key, method, transformer=True) for key in changed)
    assert all((".attn." in key) == (method == "esd-x") for key in changed)
    assert all(key.startswith("transformer_blocks.") for key in changed)  # pos/time/context embedders, proj_out stay
    assert "ESD concept prompt (the images are not used): a photo of brad" in (out / "README.md").read_text()
    StableDiffusion3Pipeline.from_pretrained(str(out))


def test_esd_x_t_of_a_flow_model_is_the_euler_run_stopped_at_the_sigma_it_returns(tiny_sd3):
    """A flow model's x_t: guided Euler steps of FlowMatchEulerDiscreteScheduler from the same noise, stopped where
    the returned timestep (σ·1000, as the model is called) says; the target is the frozen negatively guided
    velocity, v*(∅) − η(v*(c) − v*(∅))."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from pu_diffusion.esd import FrozenCopy, esd_target, sample_concept_latents

    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer")
    prepare_unet("sd3", transformer, None, 16)
    side = TextSide.load("sd3", tiny_sd3)
    concept, empty = side.encode(["brad"]), side.encode([""])
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_sd3, subfolder="scheduler")
    torch.manual_seed(3)
    latents, timesteps = sample_concept_latents(
        transformer, scheduler, concept_state=concept, empty_state=empty, shape=(2, 4, 8, 8), num_steps=5, stop=2
    )
    torch.manual_seed(3)
    manual = torch.randn(2, 4, 8, 8)
    reference = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_sd3, subfolder="scheduler")
    reference.set_timesteps(5)
    sigmas = reference.sigmas
    with torch.no_grad():  # two guided Euler steps by hand: x ← x + (σ_next − σ)·v
        for i, timestep in enumerate(reference.timesteps[:2]):
            v_0 = transformer(manual, timestep.expand(2), empty.expand(2, -1, -1), return_dict=False)[0]
            v_c = transformer(manual, timestep.expand(2), concept.expand(2, -1, -1), return_dict=False)[0]
            manual = manual + (sigmas[i + 1] - sigmas[i]) * (v_0 + 3.0 * (v_c - v_0))
    torch.testing.assert_close(latents, manual, rtol=1e-4, atol=1e-5)
    sigma = float(reference.sigmas[2])
    torch.testing.assert_close(timesteps, torch.full((2,), sigma * 1000))  # x_t at the third step's σ
    target = esd_target(FrozenCopy(transformer, lora=False), latents, timesteps, concept, empty, eta=2.0)
    with torch.no_grad():
        v_0 = transformer(latents, timesteps, empty.expand(2, -1, -1), return_dict=False)[0]
        v_c = transformer(latents, timesteps, concept.expand(2, -1, -1), return_dict=False)[0]
    torch.testing.assert_close(target, v_0 - 2.0 * (v_c - v_0), rtol=1e-4, atol=1e-5)


def test_the_audit_scores_an_sd3_image_as_the_stock_pipeline_computes_its_flow_loss(tiny_sd3):
    """ℓ(x, c) of the audit for an SD3 pipeline = ‖v_θ(x_t, σ, c) − (ε − z)‖² with z = (VAE mean − shift)·scale,
    x_t = (1 − σ)z + σε at the draw's σ (shift 3), and v_θ from the stock transformer call with the pipeline's own
    encode_prompt: nothing of the project's packing or hooks on the reference side."""
    from diffusers import StableDiffusion3Pipeline

    import audit_pu_diffusion as audit

    scorer = audit.Scorer(tiny_sd3, device="cpu")
    assert scorer.family == "sd3" and scorer.resolution == 16
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    captions = ["a photo of a man", "brad"]
    scores = scorer.score(images, captions, num_draws=1, seed=5, batch_size=8)

    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    noise, timesteps = audit.shared_draws(1, (4, 8, 8), 1000, seed=5)
    scheduler = pipeline.scheduler
    sigma = scheduler.sigmas.flip(0)[timesteps[0]]  # the training grid: σ of timestep index t (ascending)
    vae = pipeline.vae
    with torch.no_grad():
        z = (vae.encode(images).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        tokens, _, pooled, _ = pipeline.encode_prompt(captions, captions, captions, do_classifier_free_guidance=False)
        x_t = (1 - sigma) * z + sigma * noise[0]
        v = pipeline.transformer(
            hidden_states=x_t, timestep=(sigma * 1000).expand(2), encoder_hidden_states=tokens,
            pooled_projections=pooled,
        ).sample  # fmt: skip
    expected = ((v - (noise[0] - z)) ** 2).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4)


def test_sd3_trains_with_a_shorter_t5_sequence_and_samples_with_it(tiny_sd3, captioned, tmp_path):
    """--max_sequence_length 8: 16 CLIP + 8 T5 tokens (+ the pooled one) per caption, the validation grid sampled
    with the same length, and the model card says to pass it."""
    from diffusers import StableDiffusion3Pipeline

    side = TextSide.load("sd3", tiny_sd3, max_sequence_length=8)
    assert side.encode(["a photo of a man"]).shape[1] == 16 + 8 + 1 and side.sampling_kwargs() == {
        "max_sequence_length": 8
    }
    out = tmp_path / "out"
    extra = ["--max_sequence_length", "8", "--validation_prompts", "a photo of a man", "--num_validation_images", "1"]
    run(sd_args(tiny_sd3, captioned, out, "--max_train_steps", "1", *extra))
    assert (out / "validation" / "final.png").exists()
    assert "trained with max_sequence_length=8: pass it when sampling" in (out / "README.md").read_text()
    pipeline = StableDiffusion3Pipeline.from_pretrained(str(out))
    images = pipeline("a photo of a man", num_inference_steps=1, max_sequence_length=8, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_sd3_flow_matching_loss_is_the_velocity_error(tiny_sd3, captioned, tmp_path, monkeypatch):
    """What the transformer is trained on: x_t = (1 − σ) z + σ ε at its own σ·1000 timesteps, target ε − z."""
    import train_pu_text_to_image as script

    seen = []
    real = script.predict_noise

    def spy(unet, noisy_latents, timesteps, text_states):
        seen.append(timesteps.detach().clone())
        return real(unet, noisy_latents, timesteps, text_states)

    monkeypatch.setattr(script, "predict_noise", spy)
    run(sd_args(tiny_sd3, captioned, tmp_path / "out", "--max_train_steps", "2"))
    assert seen and all(t.dtype.is_floating_point and 0 < t.min() and t.max() <= 1000 for t in seen)


def test_sd3_lora_weights_load_into_the_base_pipeline(tiny_sd3, captioned, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    out = tmp_path / "lora"
    run(sd_args(tiny_sd3, captioned, out, "--rank", "4", "--learning_rate", "1e-2"))
    assert (out / "pytorch_lora_weights.safetensors").exists() and not (out / "transformer").exists()
    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    generate = dict(num_inference_steps=2, output_type="np")
    before = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    pipeline.load_lora_weights(str(out))
    after = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    assert "StableDiffusion3Pipeline.from_pretrained" in (out / "README.md").read_text()


def test_sd3_resume_equals_straight_training(tiny_sd3, captioned, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--proportion_empty_prompts", "0.5"]
    run(sd_args(tiny_sd3, captioned, straight, *extra))
    resumed.mkdir()
    for name in ("pu_run.json", "pu_outputs.json"):
        shutil.copy(straight / name, resumed / name)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(sd_args(tiny_sd3, captioned, resumed, *extra, "--resume_from_checkpoint", "latest"))
    a = load_file(str(straight / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "transformer" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prediction_type", "v_prediction"], "it predicts velocities"),
        (["--resolution", "17"], "--resolution 17 must be a multiple of 2"),
        (["--resolution", "20"], "more than this SD3 transformer's position embeddings cover"),
    ],
)
def test_sd3_refuses_what_does_not_apply_before_anything_is_written(tiny_sd3, captioned, tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(sd_args(tiny_sd3, captioned, out, *extra))
    assert not out.exists()
