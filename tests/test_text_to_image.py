"""train_pu_text_to_image.py on a tiny Stable Diffusion pipeline built in the test (offline)."""

import os

import pytest
import torch
from safetensors.torch import load_file

import train_pu_text_to_image as script
from pu_diffusion.testing_utils import build_tiny_sd, write_captioned_folder

ORIGINAL_MAKE_COMPUTE_LOSS = script.make_compute_loss


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

    def make_spy(*args, **kwargs):
        real = ORIGINAL_MAKE_COMPUTE_LOSS(*args, **kwargs)

        def spy(unet, batch):
            terms = real(unet, batch)
            seen.append(terms.log_dict())
            return terms

        return spy

    monkeypatch.setattr(script, "make_compute_loss", make_spy)
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


def test_pu_warns_when_s_captions_never_appear_in_u(tiny_sd, captioned):
    def warning(*extra):
        args = script.parse_args(sd_args(tiny_sd, captioned, "/tmp/unused", *extra))
        _, unlabeled, sensitive, captions = script.load_data(args)
        return script.sensitive_caption_warning(args, captions, unlabeled, sensitive)

    assert warning("--method", "pu") is None  # the default scores S under U's captions
    # S is captioned "a photo of brad", U "a photo of a man"
    message = warning("--method", "pu", "--sensitive_conditioning", "own")
    assert "'a photo of brad'" in message and "--sensitive_conditioning unlabeled" in message
    own_caption_is_u = ["--sensitive_conditioning", "own", "--sensitive_caption", "a photo of a man"]
    assert warning("--method", "pu", *own_caption_is_u) is None
    assert warning("--method", "supervised", "--sensitive_conditioning", "own") is None  # its own risk's choice


def test_unlabeled_captions_for_sensitive_rows_draws_only_u_captions():
    from pu_diffusion.text_to_image import unlabeled_captions_for_sensitive_rows

    states = torch.arange(6, dtype=torch.float32).view(6, 1, 1).expand(6, 2, 3).clone()
    is_sensitive = torch.tensor([False, False, False, False, True, True])
    seen = set()
    for seed in range(40):
        out = unlabeled_captions_for_sensitive_rows(states, is_sensitive, torch.Generator().manual_seed(seed))
        assert torch.equal(out[:4], states[:4])  # U rows keep their own captions
        seen |= {int(value) for value in out[4:, 0, 0]}
    assert seen == {0, 1, 2, 3}  # every S row takes one of the batch's U captions, all of them in turn
    assert torch.equal(unlabeled_captions_for_sensitive_rows(states, torch.zeros(6, dtype=torch.bool)), states)
    with pytest.raises(ValueError, match="needs U rows"):
        unlabeled_captions_for_sensitive_rows(states, torch.ones(6, dtype=torch.bool))


@pytest.mark.parametrize("conditioning", ["unlabeled", "own"])
def test_pu_scores_s_rows_under_the_chosen_captions(tiny_sd, captioned, tmp_path, monkeypatch, conditioning):
    """What the UNet sees for the S rows: a U row's caption by default, S's own caption with 'own'."""
    seen = []
    real = script.predict_noise

    def spy(unet, noisy_latents, timesteps, text_states):
        seen.append(text_states.detach().clone())
        return real(unet, noisy_latents, timesteps, text_states)

    monkeypatch.setattr(script, "predict_noise", spy)
    run(sd_args(tiny_sd, captioned, tmp_path / "out", "--method", "pu", "--sensitive_conditioning", conditioning))
    man, brad = script.TextSide.load("sd", tiny_sd).encode(["a photo of a man", "a photo of brad"])
    assert seen
    for states in seen:  # every batch holds 2 S rows (--sensitive_batch_size 2) among U rows
        is_man = [torch.allclose(row, man, atol=1e-5) for row in states]
        is_brad = [torch.allclose(row, brad, atol=1e-5) for row in states]
        assert all(a or b for a, b in zip(is_man, is_brad))
        assert sum(is_brad) == (0 if conditioning == "unlabeled" else 2)


@pytest.mark.parametrize("proportion", [0.0, 0.5, 1.0])
def test_caption_dropout_reaches_the_unet(tiny_sd, captioned, tmp_path, monkeypatch, proportion):
    """--proportion_empty_prompts replaces that share of the captions the UNet sees by the empty prompt's states."""
    seen = []
    real = script.predict_noise
    empty_state = script.TextSide.load("sd", tiny_sd).encode([""])

    def spy(unet, noisy_latents, timesteps, text_states):
        matches = (text_states - empty_state.to(text_states.dtype)).flatten(1).abs().amax(1) < 1e-6
        seen.extend(matches.tolist())
        return real(unet, noisy_latents, timesteps, text_states)

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


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--method", "erasediff", "--erasediff_lambda", "-1"],  # adaptive λ, K = 2 inner passes
        ["--method", "esd-u", "--esd_sampling_steps", "3"],  # x_t drawn by sampling: global RNG state
    ],
)
def test_resume_equals_straight_training(tiny_sd, captioned, tmp_path, extra):
    import shutil

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(sd_args(tiny_sd, captioned, straight, *extra))
    resumed.mkdir()
    shutil.copy(straight / "pu_run.json", resumed / "pu_run.json")
    shutil.copy(straight / "pu_outputs.json", resumed / "pu_outputs.json")  # what the run claimed
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(sd_args(tiny_sd, captioned, resumed, *extra, "--resume_from_checkpoint", "latest"))
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


def test_erasediff_forget_target_is_the_models_own_prediction_under_the_anchor(
    tiny_sd, captioned, tmp_path, monkeypatch
):
    """Anchor = the S caption: the target equals the prediction being trained, so L_f starts at exactly 0."""
    same = losses_of_first_step(
        tiny_sd,
        captioned,
        tmp_path / "same",
        *("--method", "erasediff", "--erasediff_anchor_prompt", "a photo of brad", "--erasediff_inner_steps", "0"),
        monkeypatch=monkeypatch,
    )
    assert same[0]["L_S-"] == pytest.approx(0.0, abs=1e-10) and same[0]["L_U-"] > 0
    other = losses_of_first_step(  # the default anchor: U's one caption, "a photo of a man"
        tiny_sd, captioned, tmp_path / "other", "--method", "erasediff", monkeypatch=monkeypatch
    )
    assert other[0]["L_S-"] > 0 and other[0]["lambda"] == pytest.approx(0.1)
    assert "EraseDiff anchor prompt: a photo of a man" in (tmp_path / "other" / "README.md").read_text()


def test_erasediff_trains_lora_adapters(tiny_sd, captioned, tmp_path):
    pytest.importorskip("peft")
    lora = tmp_path / "lora"
    run(sd_args(tiny_sd, captioned, lora, "--method", "erasediff", "--erasediff_lambda", "-1", "--rank", "4"))
    adapters = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    up = {key: value for key, value in adapters.items() if "lora_B" in key or "lora.up" in key}
    assert up and any(value.abs().max() > 0 for value in up.values())  # B starts at zero: only training moves it
    base_unet = load_file(os.path.join(tiny_sd, "unet", "diffusion_pytorch_model.safetensors"))
    assert not any("lora" in key for key in base_unet)  # adapters only: the base stays as it was


def test_erasediff_without_a_single_u_caption_asks_for_the_anchor(tiny_sd, tmp_path):
    import json

    data = write_captioned_folder(tmp_path / "data")
    rows = [json.loads(line) for line in open(os.path.join(data, "metadata.jsonl"))]
    rows[0]["text"] = "a photo of a woman"
    with open(os.path.join(data, "metadata.jsonl"), "w") as handle:
        handle.write("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--erasediff_anchor_prompt"):
        run(sd_args(tiny_sd, data, out, "--method", "erasediff"))
    assert not out.exists()


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_esd_trains_only_its_parameter_set_and_leaves_the_base_frozen(tiny_sd, captioned, tmp_path, method):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from pu_diffusion.esd import in_esd_set, is_cross_attention

    out = tmp_path / method
    run(sd_args(tiny_sd, captioned, out, "--method", method, "--esd_sampling_steps", "3", "--learning_rate", "1e-2"))
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    trained = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed, "nothing trained"
    assert all(in_esd_set(name, method) for name in changed)
    assert all(is_cross_attention(name) == (method == "esd-x") for name in changed)
    if method == "esd-u":  # as the authors' noxattn: time embedding and output layers stay
        assert not any(name.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for name in changed)
    card = (out / "README.md").read_text()
    assert "ESD concept prompt (the images are not used): a photo of brad" in card and "ESD frozen copy (MB)" in card
    StableDiffusionPipeline.from_pretrained(str(out))


def test_esd_target_is_the_frozen_negative_guidance_and_the_copy_stays_frozen(tiny_sd):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pu_diffusion.esd import ESDContext, FrozenCopy, esd_step, esd_target, select_esd_parameters

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    concept, empty = torch.randn(1, 16, 16), torch.randn(1, 16, 16)
    frozen = FrozenCopy(unet, lora=False)
    with torch.no_grad():
        e_c = unet(latents, timesteps, concept.expand(2, -1, -1)).sample
        e_0 = unet(latents, timesteps, empty.expand(2, -1, -1)).sample
    target = esd_target(frozen, latents, timesteps, concept, empty, eta=1.5)
    torch.testing.assert_close(target, e_0 - 1.5 * (e_c - e_0), rtol=1e-4, atol=1e-5)
    trainable = select_esd_parameters(unet, "esd-x")
    before = {k: v.clone() for k, v in frozen.unet.state_dict().items()}
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    scheduler = DDIMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    context = ESDContext(frozen, scheduler, concept, latent_shape=(4, 8, 8), sampling_steps=3)
    for _ in range(2):
        esd_step(unet, unet, context, empty, batch_size=2).objective.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, before[k]) for k, v in frozen.unet.state_dict().items())  # θ* never moved
    assert any(not torch.equal(v, before[k]) for k, v in unet.state_dict().items())  # θ did


def test_esd_with_lora_uses_the_adapter_free_base_and_keeps_the_trainable_set(tiny_sd):
    pytest.importorskip("peft")
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from pu_diffusion.esd import FrozenCopy, select_esd_parameters

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    latents, timesteps, text = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 16, 16)
    with torch.no_grad():
        base = unet(latents, timesteps, text).sample
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q"]))
    with torch.no_grad():  # as after some training: B starts at zero
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    trainable = select_esd_parameters(unet, "esd-u")
    assert trainable and all("lora_" in n and ".attn2." not in n for n, p in unet.named_parameters() if p.requires_grad)
    flags = [p.requires_grad for p in unet.parameters()]
    frozen = FrozenCopy(unet, lora=True)
    assert frozen.extra_bytes == 0
    torch.testing.assert_close(frozen(latents, timesteps, text), base, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(unet(latents, timesteps, text).sample, base)  # adapters back on
    assert [p.requires_grad for p in unet.parameters()] == flags


def test_esd_x_with_lora_trains_cross_attention_adapters_against_the_adapter_free_base(tiny_sd, captioned, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    run(sd_args(tiny_sd, captioned, out, "--method", "esd-x", "--rank", "4", "--esd_sampling_steps", "2"))
    weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert weights and all("lora" in name for name in weights)
    assert "ESD frozen copy (MB): 0.0" in (out / "README.md").read_text()  # the LoRA-off base, no copy


def test_esd_x_t_is_the_ddim_run_stopped_at_the_timestep_it_returns(tiny_sd):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pu_diffusion.esd import sample_concept_latents

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    concept, empty = torch.randn(1, 16, 16), torch.randn(1, 16, 16)
    scheduler = DDIMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    torch.manual_seed(3)
    latents, timesteps = sample_concept_latents(
        unet, scheduler, concept_state=concept, empty_state=empty, shape=(2, 4, 8, 8), num_steps=5, stop=2
    )
    torch.manual_seed(3)  # the same run by hand: two guided DDIM steps from the same noise
    manual = torch.randn(2, 4, 8, 8)
    reference = DDIMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    reference.set_timesteps(5)
    with torch.no_grad():
        for timestep in reference.timesteps[:2]:
            e_0 = unet(manual, timestep, empty.expand(2, -1, -1)).sample
            e_c = unet(manual, timestep, concept.expand(2, -1, -1)).sample
            manual = reference.step(e_0 + 3.0 * (e_c - e_0), timestep, manual).prev_sample
    torch.testing.assert_close(latents, manual, rtol=1e-4, atol=1e-5)
    assert timesteps.tolist() == [int(reference.timesteps[2])] * 2  # x_t sits at the third step's timestep


def test_beta_auto_scores_the_images_and_the_risk_uses_the_estimate(tiny_sd, captioned, tmp_path, monkeypatch):
    from conftest import record_pu_risk_betas

    from pu_diffusion import beta
    from pu_diffusion.class_prior import BetaEstimate

    shapes = []

    def estimate(unlabeled, sensitive, estimator, **kwargs):
        shapes.append((tuple(unlabeled.shape), tuple(sensitive.shape)))
        return BetaEstimate(0.25, (0.2, 0.3), estimator, 0.9, 0.99, len(unlabeled), len(sensitive), True, "ok")

    monkeypatch.setattr(beta, "estimate_beta_from_images", estimate)
    seen = record_pu_risk_betas(monkeypatch)
    out = tmp_path / "out"
    run(sd_args(tiny_sd, captioned, out, "--beta", "auto", "--beta_estimator", "dedpul"))
    ((u_shape, s_shape),) = shapes
    assert u_shape[1:] == (3, 16, 16) and s_shape[1:] == (3, 16, 16)  # RGB at min(--resolution, 32)
    assert seen and all(value == 0.25 for value in seen)
    assert "β (fraction of U assumed sensitive): **0.25**" in (out / "README.md").read_text()


def test_audit_of_an_sd_lora_output_loads_its_adapters_as_load_lora_weights_does(tiny_sd, captioned, tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    import audit_pu_diffusion as audit

    out = tmp_path / "lora"
    run(sd_args(tiny_sd, captioned, out, "--rank", "4", "--learning_rate", "1e-1", "--max_train_steps", "2"))
    scorer = audit.Scorer(str(out), device="cpu")
    assert scorer.lora and scorer.family == "sd"
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd)
    plain = reference.unet(torch.zeros(1, 4, 8, 8), 500, torch.ones(1, 16, 16)).sample
    reference.load_lora_weights(str(out))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([100, 800]), torch.randn(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(scorer.unet(x, t, text).sample, reference.unet(x, t, text).sample)
        assert not torch.allclose(reference.unet(torch.zeros(1, 4, 8, 8), 500, torch.ones(1, 16, 16)).sample, plain)
    summary = audit.main(
        audit.parse_args(["--pipeline", str(out), "--train_data_dir", captioned, "--output_dir", str(tmp_path / "a")])
    )
    assert summary["num_images"] == 8


def test_a_lora_folder_without_its_run_file_is_one_error_in_the_audit(tmp_path):
    import audit_pu_diffusion as audit

    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds LoRA weights but no pu_run.json naming their base model"):
        audit.Scorer(str(tmp_path), device="cpu")
    import json

    missing = str(tmp_path / "moved-base")  # the base was moved since training: one error naming it
    (tmp_path / "pu_run.json").write_text(json.dumps({"pretrained_model_name_or_path": missing}))
    with pytest.raises(ValueError, match=f"its base model '{missing}' \\(named in its pu_run.json\\)"):
        audit.Scorer(str(tmp_path), device="cpu")


def test_audit_scores_a_stable_diffusion_pipeline_under_each_images_caption(tiny_sd, captioned, tmp_path):
    import csv

    import audit_pu_diffusion as audit

    out = tmp_path / "audit"
    summary = audit.main(
        audit.parse_args(["--pipeline", tiny_sd, "--train_data_dir", captioned, "--output_dir", str(out)])
    )
    with open(out / "audit.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["num_images"] == len(rows) == 8  # the U images of the captioned folder
    assert all(row["file"].startswith("unlabeled_") for row in rows)
    assert summary["beta"] is None and summary["estimated_sensitive_images"] is None  # a base model: no run, no β
    # ℓ(x, c) depends on the caption: another one gives other scores
    other = tmp_path / "other"
    audit.main(
        audit.parse_args(
            ["--pipeline", tiny_sd, "--train_data_dir", captioned, "--output_dir", str(other), "--caption", "zzz"]
        )
    )
    with open(other / "audit.csv") as handle:
        other_scores = {row["file"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert any(abs(float(row["score"]) - other_scores[row["file"]]) > 1e-6 for row in rows)


def test_text_to_image_pu_has_no_default_cap_and_refuses_cap_zero_with_a_fraction():
    """The S-loss cap is train_pu_diffusion.py's default only (not measured for text-to-image)."""
    from pu_diffusion.cli import UsageError

    base = ["--pretrained_model_name_or_path", "base", "--train_data_dir", "data", "--method", "pu"]
    args = script.parse_args(base)
    assert (args.pu_sensitive_cap, args.pu_sensitive_cap_fraction, args.pu_sensitive_cap_reference) == (
        None,
        None,
        "batch",
    )
    assert script.parse_args([*base, "--pu_sensitive_cap", "0"]).pu_sensitive_cap is None
    with pytest.raises(UsageError, match="--pu_sensitive_cap 0 turns the S-loss cap off"):
        script.parse_args([*base, "--pu_sensitive_cap", "0", "--pu_sensitive_cap_fraction", "0.4"])
