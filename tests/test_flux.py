"""FLUX (rectified flow, packed latents, guidance embedding) through train_pu_text_to_image.py: a tiny FluxPipeline
built offline (a CLIP encoder, a T5 encoder with a locally built tokenizer, a FluxTransformer2DModel with FLUX-dev's
guidance embedding and dynamically shifted scheduler), trained, saved and reloaded with the stock FluxPipeline,
LoRA loaded with load_lora_weights, resumed exactly, and bad input refused."""

import copy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_text_to_image import run, sd_args

from pu_diffusion.families import (
    TextSide,
    detect_family,
    flux_image_ids,
    flux_training_scheduler,
    pack_flux_latents,
    prepare_unet,
    unpack_flux_latents,
    unpack_pooled,
)
from pu_diffusion.testing_utils import build_tiny_flux, write_captioned_folder


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    return build_tiny_flux(str(tmp_path_factory.mktemp("tiny_flux")))


@pytest.fixture
def captioned(tmp_path):
    return write_captioned_folder(tmp_path / "data")


def test_flux_conditioning_packing_and_call_are_the_pipelines_own(tiny_flux):
    """The packed conditioning equals FluxPipeline.encode_prompt; the latent packing and position ids equal the
    pipeline's; and the hooked call model(x_t, σ·1000, states) returns what the pipeline's own call of the
    transformer returns (patches, ids, timestep σ, guidance 3.5), unpacked."""
    from diffusers import FluxPipeline

    assert detect_family(tiny_flux) == "flux"
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    prompts = ["a photo of a man", "brad"]
    with torch.no_grad():
        tokens, pooled, text_ids = pipeline.encode_prompt(prompts, prompts, device="cpu")
    side = TextSide.load("flux", tiny_flux)
    packed = side.encode(prompts)
    unpacked_tokens, unpacked_pooled = unpack_pooled(packed, pooled.shape[-1])
    torch.testing.assert_close(unpacked_tokens, tokens)
    torch.testing.assert_close(unpacked_pooled, pooled)
    latents = torch.randn(2, 4, 8, 6)
    assert torch.equal(pack_flux_latents(latents), FluxPipeline._pack_latents(latents, 2, 4, 8, 6))
    assert torch.equal(unpack_flux_latents(pack_flux_latents(latents), 8, 6), latents)
    assert torch.equal(flux_image_ids(8, 6), FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))

    transformer = pipeline.transformer
    sigma = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        theirs = transformer(
            hidden_states=pack_flux_latents(latents), timestep=sigma, guidance=torch.full((2,), 3.5),
            pooled_projections=pooled, encoder_hidden_states=tokens, txt_ids=text_ids,
            img_ids=flux_image_ids(8, 6), return_dict=False,
        )[0]  # fmt: skip
        prepare_unet("flux", transformer, side, 16)
        ours = transformer(latents, sigma * 1000, packed, return_dict=False)[0]
        again = transformer(  # a pipeline's own call goes through the hooks untouched
            hidden_states=pack_flux_latents(latents), timestep=sigma, guidance=torch.full((2,), 3.5),
            pooled_projections=pooled, encoder_hidden_states=tokens, txt_ids=text_ids,
            img_ids=flux_image_ids(8, 6),
        ).sample  # fmt: skip
    torch.testing.assert_close(ours, unpack_flux_latents(theirs, 8, 6))
    torch.testing.assert_close(again, theirs)


def test_flux_training_sigmas_are_shifted_as_the_pipeline_samples_at_that_size(tiny_flux):
    """FLUX-dev's dynamic shift μ(tokens) at sampling equals the fixed shift e^μ the training scheduler gets."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    base = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_flux, subfolder="scheduler")
    for latent_size in (8, 64, 128):  # 16 px here; 512 and 1,024 px for the real VAE
        sampler = copy.deepcopy(base)
        mu = calculate_shift((latent_size // 2) ** 2)
        grid = np.linspace(1.0, 1 / 20, 20)
        sampler.set_timesteps(sigmas=grid, mu=mu)
        trainer = flux_training_scheduler(copy.deepcopy(base), latent_size)
        shift = trainer.config.shift
        assert not trainer.config.use_dynamic_shifting
        expected = torch.from_numpy(shift * grid / (1 + (shift - 1) * grid)).float()
        torch.testing.assert_close(sampler.sigmas[:-1], expected, rtol=1e-5, atol=1e-6)
    assert base.config.use_dynamic_shifting  # the loaded one is not changed by a copy's


@pytest.mark.parametrize("method", ["pu", "erasediff"])
def test_flux_trains_and_saves_a_stock_flux_pipeline(tiny_flux, captioned, tmp_path, method):
    from diffusers import DiffusionPipeline, FluxPipeline

    out = tmp_path / method
    extra = []
    if method == "pu":  # cached latents and captions, and a validation grid through FluxPipeline at 16 px
        extra = ["--center_crop", "--validation_prompts", "a photo of a man", "--num_validation_images", "1"]
    run(sd_args(tiny_flux, captioned, out, "--method", method, "--max_train_steps", "2", *extra))
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, FluxPipeline) and pipeline.scheduler.config.use_dynamic_shifting  # the base's own
    images = pipeline(
        "a photo of a man", height=16, width=16, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    before = load_file(f"{tiny_flux}/transformer/diffusion_pytorch_model.safetensors")
    after = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[key], after[key]) for key in before)  # it trained
    card = (out / "README.md").read_text()
    assert "model family: flux (FluxPipeline)" in card
    if method == "pu":
        assert (out / "validation" / "final.png").exists() and "cached latents: True" in card


def test_esd_x_trains_flux_joint_attention_and_esd_u_the_rest_of_its_blocks(tiny_flux, captioned, tmp_path):
    """ESD on FLUX: x_t from the Euler flow sampler at the training size (packed 2×2 patches), the frozen copy's
    negatively guided velocity; esd-x as LoRA on the joint attention (the base loads it), esd-u full on the rest of
    the double and single blocks."""
    from diffusers import FluxPipeline

    from pu_diffusion.esd import in_esd_set

    esd = ["--sensitive_caption", "a photo of brad", "--esd_sampling_steps", "3", "--learning_rate", "1e-2"]
    lora = tmp_path / "esd-x"
    run(sd_args(tiny_flux, captioned, lora, "--method", "esd-x", "--rank", "4", "--max_train_steps", "2", *esd))
    weights = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    assert weights and all(".attn." in name and "lora" in name for name in weights)
    assert "ESD frozen copy (MB): 0.0" in (lora / "README.md").read_text()  # the LoRA-off base, no copy
    FluxPipeline.from_pretrained(tiny_flux).load_lora_weights(str(lora))

    full = tmp_path / "esd-u"
    run(sd_args(tiny_flux, captioned, full, "--method", "esd-u", "--max_train_steps", "2", *esd))
    before = load_file(f"{tiny_flux}/transformer/diffusion_pytorch_model.safetensors")
    after = load_file(str(full / "transformer" / "diffusion_pytorch_model.safetensors"))
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(in_esd_set(key, "esd-u", transformer=True) and ".attn." not in key for key in changed)
    assert any(key.startswith("single_transformer_blocks.") for key in changed)
    FluxPipeline.from_pretrained(str(full))


def test_flux_lora_weights_load_into_the_base_pipeline_and_resume_exactly(tiny_flux, captioned, tmp_path):
    from diffusers import FluxPipeline

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--rank", "4", "--learning_rate", "1e-2", "--proportion_empty_prompts", "0.5"]
    run(sd_args(tiny_flux, captioned, straight, *extra))
    assert (straight / "pytorch_lora_weights.safetensors").exists() and not (straight / "transformer").exists()
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    generate = dict(height=16, width=16, num_inference_steps=2, output_type="np")
    before = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    pipeline.load_lora_weights(str(straight))
    after = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    assert not np.allclose(before, after)
    assert "FluxPipeline.from_pretrained" in (straight / "README.md").read_text()

    resumed.mkdir()
    for name in ("pu_run.json", "pu_outputs.json"):
        shutil.copy(straight / name, resumed / name)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(sd_args(tiny_flux, captioned, resumed, *extra, "--resume_from_checkpoint", "latest"))
    a = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_the_audit_scores_a_flux_lora_output_with_its_adapters_and_the_training_shift(tiny_flux, captioned, tmp_path):
    import csv
    import math

    from diffusers import FluxPipeline

    import audit_pu_diffusion as audit

    out = tmp_path / "lora"
    run(sd_args(tiny_flux, captioned, out, "--rank", "4", "--learning_rate", "1e-1", "--max_train_steps", "2"))
    scorer = audit.Scorer(str(out), device="cpu")
    assert scorer.lora and scorer.family == "flux" and scorer.resolution == 16
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * ((8 // 2) ** 2 - 256)  # FluxPipeline's calculate_shift at 16 px
    assert scorer.scheduler.config.shift == pytest.approx(math.exp(mu))
    reference = FluxPipeline.from_pretrained(tiny_flux)
    base = copy.deepcopy(reference.transformer)
    reference.load_lora_weights(str(out))  # the stock way to load the adapters
    for model in (reference.transformer, base):
        prepare_unet("flux", model, None, 16)
    x, t, states = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 700.0]), scorer.text_side.encode(["a", "brad"])
    with torch.no_grad():
        ours, stock, plain = (
            model(x, t, states, return_dict=False)[0] for model in (scorer.unet, reference.transformer, base)
        )
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, plain)  # the adapters are in

    audited = tmp_path / "audit"
    summary = audit.main(
        audit.parse_args(["--pipeline", str(out), "--train_data_dir", captioned, "--output_dir", str(audited)])
    )
    with open(audited / "audit.csv") as handle:
        assert len(list(csv.DictReader(handle))) == summary["num_images"] == 8
    assert summary["beta"] is not None  # the run's β


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--method", "esd-u", "--sensitive_caption", "a photo of brad", "--rank", "4"],
            "its LoRA adapters \\(--rank\\) all sit in the joint attention",
        ),
        (["--prediction_type", "v_prediction"], "it predicts velocities"),
        (["--resolution", "18"], "--resolution 18 must be a multiple of 4"),
    ],
)
def test_flux_refuses_what_does_not_apply_before_anything_is_written(tiny_flux, captioned, tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(sd_args(tiny_flux, captioned, out, *extra))
    assert not out.exists()


def test_flux_refuses_fp16(tiny_flux, tmp_path):
    import train_pu_text_to_image as script

    args = script.parse_args(["--pretrained_model_name_or_path", tiny_flux, "--train_data_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="FLUX's T5 encoder and transformer overflow in fp16"):
        script.check_family(SimpleNamespace(mixed_precision="fp16"), args, "flux", tiny_flux)
