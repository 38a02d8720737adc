"""SDXL through train_pu_text_to_image.py: a tiny StableDiffusionXLPipeline built offline, every method, full and
LoRA, saved and reloaded with the stock pipeline class, resumed exactly."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_text_to_image import run, sd_args

from pu_diffusion.families import TextSide, detect_family, unpack_pooled
from pu_diffusion.testing_utils import build_tiny_sdxl, write_captioned_folder


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(str(tmp_path_factory.mktemp("tiny_sdxl")))


@pytest.fixture
def captioned(tmp_path):
    return write_captioned_folder(tmp_path / "data")


def test_packed_sdxl_conditioning_is_what_the_pipeline_itself_encodes(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    assert detect_family(tiny_sdxl) == "sdxl"
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    prompts = ["a photo of a man", "brad"]
    tokens, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    packed = TextSide.load("sdxl", tiny_sdxl).encode(prompts)
    assert packed.shape == (2, tokens.shape[1] + 1, tokens.shape[2])  # one extra token: the pooled embedding
    unpacked_tokens, unpacked_pooled = unpack_pooled(packed, pooled.shape[-1])
    torch.testing.assert_close(unpacked_tokens, tokens)
    torch.testing.assert_close(unpacked_pooled, pooled)
    # ∅ as the pipeline samples it (force_zeros_for_empty_prompt): zeros, which caption dropout and ESD then use
    _, negative, _, negative_pooled = pipeline.encode_prompt(
        prompts[:1], device="cpu", do_classifier_free_guidance=True
    )
    empty = TextSide.load("sdxl", tiny_sdxl).empty()
    assert (
        not negative.any() and not negative_pooled.any() and not empty.any() and empty.shape == (1, *packed.shape[1:])
    )


def test_sdxl_refuses_fp16_and_edm_variants_before_loading_weights(tiny_sdxl, tmp_path):
    import json
    from types import SimpleNamespace

    from accelerate import PartialState

    import train_pu_text_to_image as script

    PartialState()  # the script logs through accelerate
    args = script.parse_args(
        ["--pretrained_model_name_or_path", tiny_sdxl, "--train_data_dir", "d", "--resolution", "16"]
    )
    with pytest.raises(ValueError, match="SDXL's VAE overflows in fp16"):
        script.check_family(SimpleNamespace(mixed_precision="fp16"), args, "sdxl", tiny_sdxl)
    script.check_family(SimpleNamespace(mixed_precision="bf16"), args, "sdxl", tiny_sdxl)  # bf16 is fine
    playground = tmp_path / "playground"
    shutil.copytree(tiny_sdxl, playground)
    config = json.loads((playground / "vae" / "config.json").read_text())
    (playground / "vae" / "config.json").write_text(json.dumps({**config, "latents_mean": [0.0] * 4}))
    with pytest.raises(ValueError, match="EDM scheduler or a latent mean/std"):
        script.check_family(SimpleNamespace(mixed_precision="no"), args, "sdxl", str(playground))
    t5_length = script.parse_args(
        ["--pretrained_model_name_or_path", tiny_sdxl, "--train_data_dir", "d", "--max_sequence_length", "77"]
    )
    with pytest.raises(ValueError, match="--max_sequence_length sets the T5 encoder's tokens of SD3 and FLUX"):
        script.check_family(SimpleNamespace(mixed_precision="no"), t5_length, "sdxl", tiny_sdxl)
    with pytest.raises(ValueError, match=r"--max_sequence_length must lie in \[1, 512\]"):
        script.parse_args(
            ["--pretrained_model_name_or_path", tiny_sdxl, "--train_data_dir", "d", "--max_sequence_length", "0"]
        )


@pytest.mark.parametrize("method", ["pu", "unsupervised", "supervised", "erasediff", "esd-x"])
def test_every_method_trains_sdxl_and_saves_a_stock_sdxl_pipeline(tiny_sdxl, captioned, tmp_path, method):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    out = tmp_path / method
    extra = ["--sensitive_caption", "a photo of brad"] if method == "esd-x" else []
    if method == "pu":  # cached latents and captions, and a validation grid through the SDXL pipeline
        extra = ["--center_crop", "--validation_prompts", "a photo of a man", "--num_validation_images", "1"]
    run(sd_args(tiny_sdxl, captioned, out, "--method", method, "--max_train_steps", "2", *extra))
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, StableDiffusionXLPipeline)
    images = pipeline(
        "a photo of a man", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    before = load_file(f"{tiny_sdxl}/unet/diffusion_pytorch_model.safetensors")
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[key], after[key]) for key in before)  # it trained
    card = (out / "README.md").read_text()
    assert "model family: sdxl (StableDiffusionXLPipeline)" in card and "stable-diffusion-xl" in card
    if method == "pu":
        assert (out / "validation" / "final.png").exists() and "cached latents: True" in card


def test_sdxl_lora_weights_load_into_the_base_pipeline(tiny_sdxl, captioned, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "lora"
    run(sd_args(tiny_sdxl, captioned, out, "--rank", "4", "--learning_rate", "1e-2"))
    assert (out / "pytorch_lora_weights.safetensors").exists() and not (out / "unet").exists()
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    generate = dict(num_inference_steps=2, output_type="np")
    before = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    pipeline.load_lora_weights(str(out))
    after = pipeline("a photo of a man", generator=torch.Generator().manual_seed(0), **generate).images
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    assert "StableDiffusionXLPipeline.from_pretrained" in (out / "README.md").read_text()


def test_sdxl_resume_equals_straight_training(tiny_sdxl, captioned, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--proportion_empty_prompts", "0.5"]
    run(sd_args(tiny_sdxl, captioned, straight, *extra))
    resumed.mkdir()
    for name in ("pu_run.json", "pu_outputs.json"):
        shutil.copy(straight / name, resumed / name)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(sd_args(tiny_sdxl, captioned, resumed, *extra, "--resume_from_checkpoint", "latest"))
    a = load_file(str(straight / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "unet" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_the_audit_ranks_the_u_images_of_an_sdxl_pipeline_under_their_captions(tiny_sdxl, captioned, tmp_path):
    import csv

    import audit_pu_diffusion as audit

    scores = {}
    for caption in (None, "zzz"):
        out = tmp_path / f"audit-{caption}"
        argv = ["--pipeline", tiny_sdxl, "--train_data_dir", captioned, "--output_dir", str(out)]
        summary = audit.main(audit.parse_args(argv + (["--caption", caption] if caption else [])))
        with open(out / "audit.csv") as handle:
            scores[caption] = {row["file"]: float(row["score"]) for row in csv.DictReader(handle)}
        assert summary["num_images"] == len(scores[caption]) == 8 and (out / "top_k.png").exists()
    assert any(abs(scores[None][name] - scores["zzz"][name]) > 1e-6 for name in scores[None])  # ℓ(x, c) sees c


def test_an_unsupported_family_is_refused_before_anything_is_written(tiny_sdxl, captioned, tmp_path):
    import json

    other = tmp_path / "kandinsky"
    shutil.copytree(tiny_sdxl, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="is a KandinskyV22Pipeline; train_pu_text_to_image.py takes"):
        run(sd_args(str(other), captioned, out))
    assert not out.exists()
