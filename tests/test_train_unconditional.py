"""End-to-end runs of train_pu_diffusion.py on a tiny UNet (offline, a few seconds each)."""

import glob
import json
import os
import shutil

import pytest
import torch
from conftest import tiny_args
from safetensors.torch import load_file

import train_pu_diffusion as script
from pu_diffusion.testing_utils import write_imagefolder


def run(argv):
    script.main(script.parse_args(argv))


def unet_weights(folder):
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def test_builtin_run_writes_a_loadable_pipeline(tmp_path, tiny_unet_config):
    from diffusers import DDPMPipeline, DiffusionPipeline

    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--use_ema", "--validation_steps", "3", "--num_validation_images", "2"))
    for name in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "samples.png",
        "README.md",
        "pu_run.json",
        "pu_split.json",
        "checkpoint-3",
        "checkpoint-6",
        "samples/step_3.png",
        "logs/train_log.jsonl",
    ]:
        assert (out / name).exists(), name
    assert not glob.glob(str(out / "**" / "*.bin"), recursive=True) or all(
        "checkpoint-" in path for path in glob.glob(str(out / "**" / "*.bin"), recursive=True)
    )
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert {"risk", "L_U-", "L_S-", "L_S+", "neg_risk", "nn_branch", "lr"} <= set(records[-1])
    bands = [key for key in records[-1] if key.startswith("S n t")]  # ℓ⁺ on S per quarter of the timesteps
    assert len(bands) == 4 and sum(record[key] for record in records for key in bands) > 0
    card = (out / "README.md").read_text()
    assert "method: `pu`" in card and "β" in card and "unlabeled (U) images: 2200" in card and "samples.png" in card
    assert "capped at κ = min(4, 0.4/β) times the unlabeled data's mean ℓ at its noise level" in card
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, DDPMPipeline)
    images = pipeline(
        batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (2, 8, 8, 1) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(
    "extra",
    [
        ["--pu_estimator", "nn"],
        ["--pu_min_timestep", "300"],  # S rows draw t ≥ 300 from the resumed random state too
        ["--sensitive_augment", "0.3"],  # S zoomed per (row, aug_seed): the same views after resuming
        ["--gradient_accumulation_steps", "2", "--use_ema"],
        ["--method", "erasediff", "--erasediff_lambda", "-1"],  # adaptive λ, inner passes, uniform forget target
        ["--objective", "flow_matching", "--flow_shift", "3"],
        # the dropped U images are read back, not scored again (one cross-fitting: the scorer is not what is tested)
        ["--pu_filter_unlabeled", "1", "--beta", "0.1", "--beta_score_repeats", "1", "--beta_score_patience", "4"],
    ],
)
def test_resume_equals_straight_training(tmp_path, tiny_unet_config, extra):
    """A run interrupted after checkpoint-3 and resumed ends with the weights of the uninterrupted run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(tiny_args(straight, tiny_unet_config(), *extra))
    resumed.mkdir()  # the interrupted run: its flags and its checkpoint at step 3, nothing after
    shutil.copy(straight / "pu_run.json", resumed / "pu_run.json")
    shutil.copy(straight / "pu_outputs.json", resumed / "pu_outputs.json")  # what the run claimed
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run(tiny_args(resumed, tiny_unet_config(), *extra, "--resume_from_checkpoint", "latest"))
    assert_same_weights(straight, resumed)
    assert_same_weights(straight / "checkpoint-6", resumed / "checkpoint-6")
    if "--use_ema" in extra:
        assert_same_weights(straight / "checkpoint-6", resumed / "checkpoint-6", subfolder="unet_ema")
    start = load_file(str(resumed / "checkpoint-3" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(start[k], v) for k, v in unet_weights(resumed).items())  # training went on


def test_timestep_cap_reference_reaches_the_risk_and_is_recorded(tmp_path, tiny_unet_config):
    """--pu_sensitive_cap_reference timestep trains other weights than the batch reference, and pu_run.json says so."""
    batch, matched = tmp_path / "batch", tmp_path / "matched"
    cap = ["--pu_sensitive_cap", "1", "--max_train_steps", "3"]
    run(tiny_args(batch, tiny_unet_config(), *cap))
    run(tiny_args(matched, tiny_unet_config(), *cap, "--pu_sensitive_cap_reference", "timestep"))
    assert any(not torch.equal(unet_weights(batch)[k], v) for k, v in unet_weights(matched).items())
    recorded = json.loads((matched / "pu_run.json").read_text())
    assert json.dumps(recorded).count('"timestep"') == 1


def test_cap_fraction_is_kappa_over_the_resolved_beta(tmp_path, tiny_unet_config):
    """--pu_sensitive_cap_fraction ρ trains exactly what --pu_sensitive_cap ρ/β trains, and that cap binds; with
    both flags the smaller κ holds (here κ 1 = 0.5/β beats κ 3)."""
    common = ["--beta", "0.5", "--max_train_steps", "3"]
    kappa, fraction, uncapped = tmp_path / "kappa", tmp_path / "fraction", tmp_path / "uncapped"
    both = tmp_path / "both"
    run(tiny_args(kappa, tiny_unet_config(), *common, "--pu_sensitive_cap", "1"))
    run(tiny_args(fraction, tiny_unet_config(), *common, "--pu_sensitive_cap_fraction", "0.5"))
    run(tiny_args(both, tiny_unet_config(), *common, "--pu_sensitive_cap", "3", "--pu_sensitive_cap_fraction", "0.5"))
    run(tiny_args(uncapped, tiny_unet_config(), *common, "--pu_sensitive_cap", "0"))
    assert all(torch.equal(unet_weights(kappa)[k], v) for k, v in unet_weights(fraction).items())
    assert all(torch.equal(unet_weights(kappa)[k], v) for k, v in unet_weights(both).items())
    assert any(not torch.equal(unet_weights(kappa)[k], v) for k, v in unet_weights(uncapped).items())
    assert json.loads((fraction / "pu_run.json").read_text())["pu_sensitive_cap_fraction"] == 0.5


CAP_FLAGS = [
    "--pu_sensitive_cap",
    "4",
    "--pu_sensitive_cap_fraction",
    "0.4",
    "--pu_sensitive_cap_reference",
    "timestep",
]


def test_pu_caps_the_s_loss_by_default_and_zero_turns_the_cap_off():
    """--method pu without a cap flag gets DEFAULT_SENSITIVE_CAP; a cap flag replaces it whole; 0 is the paper's
    uncapped risk (recorded as None, like every run before the default); other methods get no cap."""
    from pu_diffusion.arguments import DEFAULT_SENSITIVE_CAP
    from pu_diffusion.cli import UsageError

    def cap(*flags):
        args = script.parse_args(list(flags))
        return args.pu_sensitive_cap, args.pu_sensitive_cap_fraction, args.pu_sensitive_cap_reference

    assert cap() == tuple(DEFAULT_SENSITIVE_CAP.values()) == (4.0, 0.4, "timestep")
    assert cap("--pu_estimator", "nn") == (4.0, 0.4, "timestep")
    assert cap("--pu_sensitive_cap_reference", "batch") == (4.0, 0.4, "batch")  # a given reference is kept
    assert cap("--pu_sensitive_cap", "8") == (8.0, None, "batch")  # a given κ is the whole cap, as before
    assert cap("--pu_sensitive_cap_fraction", "0.3") == (None, 0.3, "batch")
    assert cap("--pu_sensitive_cap", "0") == (None, None, "batch")
    assert cap("--method", "unsupervised") == (None, None, "batch")
    for flags in (["--pu_sensitive_cap_fraction", "0.4"], ["--pu_sensitive_cap_reference", "timestep"]):
        with pytest.raises(UsageError, match="--pu_sensitive_cap 0 turns the S-loss cap off"):
            script.parse_args(["--pu_sensitive_cap", "0", *flags])
    with pytest.raises(UsageError, match=r"must be > 0 \(or 0: no cap\)"):
        script.parse_args(["--pu_sensitive_cap", "-1"])
    with pytest.raises(SystemExit):  # a κ that rounds to 0 is not the 0 that turns the cap off
        script.parse_args(["--pu_sensitive_cap", "1e-400"])


def test_the_default_cap_trains_what_its_flags_train_and_an_uncapped_run_resumes_with_cap_zero(
    tmp_path, tiny_unet_config
):
    """No flag = the cap's flags spelled out (bit-identical weights); a run without the cap (pu_run.json from before
    the default) is refused by name when resumed with the default, with the fix, and resumes with it."""
    from pu_diffusion.cli import UsageError

    default, spelled, uncapped = tmp_path / "default", tmp_path / "spelled", tmp_path / "uncapped"
    steps = ["--max_train_steps", "3", "--beta", "0.5"]  # κ = min(4, 0.4/β) = 0.8: binds within 3 steps
    run(tiny_args(default, tiny_unet_config(), *steps))
    run(tiny_args(spelled, tiny_unet_config(), *steps, *CAP_FLAGS))
    run(tiny_args(uncapped, tiny_unet_config(), *steps, "--pu_sensitive_cap", "0"))
    assert all(torch.equal(unet_weights(default)[k], v) for k, v in unet_weights(spelled).items())
    assert any(not torch.equal(unet_weights(default)[k], v) for k, v in unet_weights(uncapped).items())
    recorded = json.loads((uncapped / "pu_run.json").read_text())
    assert recorded["pu_sensitive_cap"] is None and recorded["pu_sensitive_cap_fraction"] is None
    with pytest.raises(UsageError, match="add --pu_sensitive_cap 0 to resume it as it was trained"):
        run(tiny_args(uncapped, tiny_unet_config(), "--beta", "0.5", "--resume_from_checkpoint", "latest"))
    resume = ["--beta", "0.5", "--pu_sensitive_cap", "0", "--resume_from_checkpoint", "latest"]
    run(tiny_args(uncapped, tiny_unet_config(), *resume))
    assert json.loads((uncapped / "train_stats.json").read_text())["global_step"] == 6


def test_half_run_then_resume_equals_straight_training(tmp_path, tiny_unet_config):
    """N/2 steps as a run of its own, then resume to N (constant LR so the schedule does not depend on N)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--lr_scheduler", "constant", "--random_flip"]
    run(tiny_args(straight, tiny_unet_config(), *flags))
    run(tiny_args(resumed, tiny_unet_config(), *flags, "--max_train_steps", "3"))
    run(tiny_args(resumed, tiny_unet_config(), *flags, "--resume_from_checkpoint", "latest"))
    assert_same_weights(straight, resumed)


def assert_same_weights(first, second, subfolder="unet"):
    a = load_file(os.path.join(first, subfolder, "diffusion_pytorch_model.safetensors"))
    b = load_file(os.path.join(second, subfolder, "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_own_imagefolder_rgb_and_methods(tmp_path, tiny_unet_config):
    data = write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6)
    for method in ["unsupervised", "supervised", "erasediff"]:
        out = tmp_path / method
        run(
            tiny_args(
                out,
                tiny_unet_config(3),
                "--train_data_dir",
                data,
                "--method",
                method,
                "--random_flip",
                "--max_train_steps",
                "2",
                "--checkpointing_steps",
                "100",
            )
        )
        assert unet_weights(out)["conv_in.weight"].shape[1] == 3
        assert json.loads((out / "pu_run.json").read_text())["method"] == method


def test_fine_tune_a_pretrained_pipeline(tmp_path, tiny_unet_config):
    from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

    base = tmp_path / "base"
    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config()))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(base))
    out = tmp_path / "tuned"
    argv = [a for a in tiny_args(out, tiny_unet_config()) if a not in ("--model_config_name_or_path",)]
    argv.remove(tiny_unet_config())
    run(argv + ["--pretrained_model_name_or_path", str(base), "--max_train_steps", "2"])
    assert isinstance(DiffusionPipeline.from_pretrained(str(out)), DDIMPipeline)  # paper: DDIM for fine-tuned
    assert "base_model: " in (out / "README.md").read_text()
    assert not torch.equal(unet_weights(out)["conv_in.weight"], unet.conv_in.weight.detach())


def test_push_to_hub_uploads_pipeline_without_checkpoints_or_token(tmp_path, tiny_unet_config, monkeypatch):
    import huggingface_hub

    calls = {}

    class Repo:
        repo_id = "me/pu-model"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda **kw: calls.setdefault("create", kw) and Repo())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.setdefault("upload", kw))
    out = tmp_path / "out"
    secret = "hf_SECRETTOKEN123"
    run(
        tiny_args(
            out,
            tiny_unet_config(),
            "--push_to_hub",
            "--hub_model_id",
            "me/pu-model",
            "--hub_token",
            secret,
            "--max_train_steps",
            "3",
        )
    )
    assert calls["create"]["repo_id"] == "me/pu-model" and calls["create"]["token"] == secret
    upload = calls["upload"]
    assert upload["repo_id"] == "me/pu-model" and upload["folder_path"] == str(out)
    assert "checkpoint-*" in upload["ignore_patterns"] and "logs" in upload["ignore_patterns"]
    for path in glob.glob(str(out / "**" / "*"), recursive=True):
        if os.path.isfile(path) and path.endswith((".json", ".md", ".jsonl", ".txt")):
            assert secret not in open(path).read(), path


BAD_INPUTS = [
    (["--beta", "1.0"], "--beta must lie in"),
    (["--beta", "-0.1"], "--beta must lie in"),
    (["--sensitive_batch_size", "0"], "--sensitive_batch_size >= 1"),
    (["--resolution", "9"], "--resolution 9 cannot pass"),
    (["--image_column", "img", "--train_data_dir", "DATA"], "--image_column 'img'"),
    (["--pu_label_column", "kind", "--train_data_dir", "DATA"], "--pu_label_column 'kind'"),
    (["--sensitive_label", "bad", "--train_data_dir", "DATA"], "No sensitive"),
    (["--train_data_dir", "ONLY_S"], "No unlabeled"),
    (["--train_data_dir", "ONLY_U"], "No sensitive"),
    (["--train_data_dir", "BROKEN"], "Unreadable image files"),
    (["--train_data_dir", "MISSING"], "is not a folder"),
    (["--builtin_unlabeled", "clean", "--train_data_dir", "DATA"], "--builtin_unlabeled clean needs the built-in"),
    (["--builtin_unlabeled", "labelled", "--train_data_dir", "DATA"], "--builtin_unlabeled labelled needs the"),
    (["--builtin_contamination", "0.2", "--train_data_dir", "DATA"], "--builtin_contamination rebuilds the built-in"),
    (["--builtin_contamination", "0.7"], r"--builtin_contamination must lie in \[0, 0.5\]"),
    (["--pu_min_timestep", "300", "--method", "unsupervised"], "--pu_min_timestep restricts the PU risk"),
    (["--pu_min_timestep", "1000"], r"--pu_min_timestep must lie in \[0, --ddpm_num_steps 1000\)"),
    (["--sensitive_augment", "0.2", "--method", "unsupervised"], "it needs --method pu or supervised"),
    (["--sensitive_augment", "1.5"], r"--sensitive_augment is a zoom range z in \(0, 1\]"),
    (["--sensitive_augment", "-0.1"], r"--sensitive_augment is a zoom range z in \(0, 1\]"),
    (["--erasediff_forget_noising", "uniform"], "--erasediff_forget_noising is how --method erasediff noises S"),
    (["--objective", "flow_matching", "--prediction_type", "v_prediction"], "a flow-matching UNet always predicts"),
    (["--objective", "flow_matching", "--inference_scheduler", "ddim"], "--inference_scheduler ddim samples diffusion"),
    (["--objective", "diffusion", "--inference_scheduler", "euler"], "--inference_scheduler euler samples flow"),
    (["--inference_scheduler", "euler"], "add --objective flow_matching"),
    (["--pu_nn_gamma", "0"], "it needs --method pu --pu_estimator nn"),
    (["--method", "unsupervised", "--pu_sensitive_cap_reference", "timestep"], "give --pu_sensitive_cap κ"),
    (["--pu_sensitive_cap", "0", "--pu_sensitive_cap_reference", "timestep"], "turns the S-loss cap off"),
    (["--pu_sensitive_cap_fraction", "1"], r"--pu_sensitive_cap_fraction must lie in \(0, 1\)"),
    (["--pu_sensitive_cap_fraction", "0"], r"--pu_sensitive_cap_fraction must lie in \(0, 1\)"),
    (["--pu_sensitive_cap_fraction", "0.4", "--method", "unsupervised"], "they need --method pu"),
    (["--pu_sensitive_cap", "4", "--method", "supervised"], "they need --method pu"),
    (["--pu_estimator", "nn", "--pu_nn_gamma", "1.5"], r"--pu_nn_gamma must lie in \[0, 1\]"),
    (["--objective", "flow_matching", "--ddpm_beta_schedule", "squaredcos_cap_v2"], "flow matching has none"),
    (["--flow_shift", "3"], "--flow_shift sets a new flow-matching scheduler"),
    (["--objective", "flow_matching", "--flow_shift", "0"], "--flow_shift must be > 0"),
    (["--pu_filter_unlabeled", "1", "--method", "unsupervised"], "--pu_filter_unlabeled drops U images"),
    (["--pu_filter_unlabeled", "11"], r"--pu_filter_unlabeled is a multiple F of β·\|U\| in \(0, 10\]"),
    (["--pu_filter_unlabeled", "-1"], r"--pu_filter_unlabeled is a multiple F of β·\|U\| in \(0, 10\]"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_input_is_refused_before_training(tmp_path, tiny_unet_config, extra, message):
    folders = {
        "DATA": write_imagefolder(tmp_path / "data", 8, 3),
        "ONLY_S": write_imagefolder(tmp_path / "only_s", 0, 3),
        "ONLY_U": write_imagefolder(tmp_path / "only_u", 8, 0),
        "MISSING": str(tmp_path / "nowhere"),
    }
    broken = write_imagefolder(tmp_path / "broken", 8, 3)
    with open(os.path.join(broken, "sensitive", "001.png"), "wb") as handle:
        handle.write(b"garbage")
    folders["BROKEN"] = broken
    extra = [folders.get(a, a) for a in extra]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(tiny_args(out, tiny_unet_config(), *extra))
    assert not out.exists()  # nothing half-written


def test_output_dir_with_another_run_is_refused(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--max_train_steps", "3"))
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="already holds a training run"):
        run(tiny_args(out, tiny_unet_config(), "--max_train_steps", "3", "--beta", "0.2"))
    with pytest.raises(ValueError, match="holds a different run.*--beta"):
        run(tiny_args(out, tiny_unet_config(), "--beta", "0.2", "--resume_from_checkpoint", "latest"))
    assert sorted(os.listdir(out)) == before
    run(tiny_args(out, tiny_unet_config(), "--max_train_steps", "3", "--overwrite_output_dir"))


def test_builtin_recipe_defaults_and_how_to_override_them(tmp_path):
    """The built-in job's measured recipe (docs/ablations.md) is what a bare command runs; each part can be overridden."""
    import train_pu_diffusion

    args = train_pu_diffusion.parse_args([])
    assert (args.resolution, args.learning_rate, args.max_train_steps, args.lr_warmup_steps) == (16, 1e-3, 3000, 200)
    assert args.use_ema and args.method == "pu" and args.pu_estimator == "abs" and args.beta == "auto"
    assert not train_pu_diffusion.parse_args(["--no-use_ema"]).use_ema
    assert train_pu_diffusion.parse_args(["--max_train_steps", "10"]).use_ema
    data_dir = str(tmp_path / "data")
    own = train_pu_diffusion.parse_args(["--train_data_dir", data_dir])
    assert not own.use_ema and own.resolution == 64  # the preset's recipe applies to the built-in data only


@pytest.mark.parametrize("lam", ["0.1", "-1"])
def test_erasediff_trains_logs_its_terms_and_saves_a_stock_pipeline(tmp_path, tiny_unet_config, lam):
    from diffusers import DDPMPipeline, DiffusionPipeline

    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--method", "erasediff", "--erasediff_lambda", lam))
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"lambda", "L_f_ref", "L_U-", "L_S-"} <= set(records[-1])
    if lam == "0.1":
        assert all(r["lambda"] == pytest.approx(0.1) for r in records)
    else:  # adaptive: max(η − cos, 0) lies in [0, η + 1]
        assert all(0.0 <= r["lambda"] <= 1.1 for r in records)
    assert json.loads((out / "pu_run.json").read_text())["method"] == "erasediff"
    assert "method: `erasediff`" in (out / "README.md").read_text()
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, DDPMPipeline)


@pytest.mark.parametrize("noising", ["gaussian", "uniform"])
def test_erasediff_forget_noising_chooses_what_noises_the_s_rows(noising):
    """The S rows always predict u ~ U[0, 1); --erasediff_forget_noising uniform also builds their x_t from that u
    (the authors' DDPM code), gaussian from the usual ε. U rows are untouched either way."""
    import argparse
    from types import SimpleNamespace

    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from pu_diffusion.losses import sample_timesteps

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, sample, timesteps):
            seen.append(sample.detach().clone())
            return SimpleNamespace(sample=sample * self.weight)

    scheduler = DDPMScheduler(num_train_timesteps=10)
    args = argparse.Namespace(
        method="erasediff", erasediff_forget_noising=noising, pu_min_timestep=0, loss_reduction="sum",
        erasediff_lambda=0.1, erasediff_eta=0.1, erasediff_inner_steps=1, learning_rate=1e-3,
    )  # fmt: skip
    compute_loss = script.make_compute_loss(Accelerator(cpu=True), args, scheduler, risk=None)
    images = torch.rand(4, 1, 4, 4) * 2 - 1
    is_sensitive = torch.tensor([False, True, False, True])
    torch.manual_seed(0)
    terms = compute_loss(Recorder(), {"pixel_values": images, "is_sensitive": is_sensitive})
    torch.manual_seed(0)  # the same draws, in the script's order
    noise = torch.randn(images.shape)
    timesteps = sample_timesteps(10, is_sensitive)
    u = torch.rand(images.shape)
    gaussian = scheduler.add_noise(images, noise, timesteps)
    by_u = scheduler.add_noise(images, u, timesteps)
    batch_input = seen[-1]  # the one forward pass over the whole batch
    assert torch.equal(batch_input[~is_sensitive], gaussian[~is_sensitive])
    assert torch.equal(batch_input[is_sensitive], (by_u if noising == "uniform" else gaussian)[is_sensitive])
    assert torch.equal(seen[0], batch_input[is_sensitive])  # the inner passes see the same S rows
    # the prediction is 0, so ℓ on S is Σ u² (its target) and on U Σ ε²
    assert terms.L_S_neg.item() == pytest.approx(u[is_sensitive].pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)


def test_flow_matching_run_saves_a_pipeline_stock_diffusers_samples_and_fine_tunes(tmp_path, tiny_unet_config):
    """--objective flow_matching: rectified flow on the same PU risk; the output is a DDPMPipeline around a
    FlowMatchEulerDiscreteScheduler (stock diffusers loads and samples it), and fine-tuning it keeps its objective."""
    from diffusers import DDPMPipeline, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    out = tmp_path / "flow"
    run(tiny_args(out, tiny_unet_config(), "--objective", "flow_matching", "--flow_shift", "2"))
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipeline, DDPMPipeline) and isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipeline.scheduler.config.shift == 2
    images = pipeline(batch_size=2, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
    assert images.images.shape == (2, 8, 8, 1) and 0 <= images.images.min() and images.images.max() <= 1
    assert "objective: flow matching" in (out / "README.md").read_text()
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["risk"])) for r in records)
    tuned = tmp_path / "tuned"  # the base's objective is read from its scheduler: no flag needed
    argv = [a for a in tiny_args(tuned, tiny_unet_config()) if a != tiny_unet_config()]
    argv.remove("--model_config_name_or_path")
    run(argv + ["--pretrained_model_name_or_path", str(out), "--max_train_steps", "2"])
    tuned_pipeline = DiffusionPipeline.from_pretrained(str(tuned))
    assert isinstance(tuned_pipeline.scheduler, FlowMatchEulerDiscreteScheduler)
    assert tuned_pipeline.scheduler.config.shift == 2
    with pytest.raises(ValueError, match="is a flow-matching model"):
        run(
            argv[:1]
            + [str(tmp_path / "never")]
            + argv[2:]
            + ["--pretrained_model_name_or_path", str(out), "--objective", "diffusion"]
        )
    assert not (tmp_path / "never").exists()


def test_cap_fraction_scales_with_beta_and_leaves_beta_zero_uncapped():
    from argparse import Namespace

    from pu_diffusion.training import sensitive_cap

    by_fraction = Namespace(pu_sensitive_cap=None, pu_sensitive_cap_fraction=0.4)
    assert sensitive_cap(by_fraction, 0.1) == pytest.approx(4.0)
    assert sensitive_cap(by_fraction, 0.2) == pytest.approx(2.0)
    assert sensitive_cap(by_fraction, 0.0) is None  # nothing is pushed at β 0
    assert sensitive_cap(Namespace(pu_sensitive_cap=3.0, pu_sensitive_cap_fraction=None), 0.2) == 3.0
    both = Namespace(pu_sensitive_cap=4.0, pu_sensitive_cap_fraction=0.4)  # κ = min(4, 0.4/β)
    assert sensitive_cap(both, 0.2) == pytest.approx(2.0)
    assert sensitive_cap(both, 0.05) == 4.0
    assert sensitive_cap(both, 0.0) == 4.0


def test_filter_unlabeled_drops_the_most_s_like_u_images_and_trains_with_the_beta_left(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    # the scorer as before session 16 (cheaper; its defaults reaching the filter: test_beta_and_audit.py)
    cheap = ["--beta_score_repeats", "1", "--beta_score_patience", "4"]
    # β 0.05 given, below --pu_filter_min_beta's default 0.1: the cut and the β left read 0.1
    run(tiny_args(out, tiny_unet_config(), "--beta", "0.05", "--pu_filter_unlabeled", "1", *cheap))
    recorded = json.loads((out / "pu_run.json").read_text())
    resolved = recorded["beta_resolved"]
    cut = resolved["unlabeled_filter"]
    assert recorded["pu_filter_min_beta"] == 0.1 and cut["beta_below_floor"] == 0.05
    assert cut["n_unlabeled"] == 2200 and cut["beta_before"] == 0.1 and len(cut["dropped_positions"]) == 220
    assert resolved["beta"] == pytest.approx(0.1 * 2200 * (1 - cut["sensitive_recall"]) / 1980)
    # the built-in U lists its 2,000 normal digits first, then the 200 sensitive ones hidden among them
    hidden = sum(position >= 2000 for position in cut["dropped_positions"])
    assert hidden / 200 == pytest.approx(cut["sensitive_recall"], abs=0.25) and hidden > 100
    card = (out / "README.md").read_text()
    assert "--pu_filter_unlabeled 1.0 dropped the 220 U images" in card and "U images kept by" in card
    assert (
        f"**0.1** (raised from 0.05) over all of U, **{resolved['beta']:.4g}** in the U it trained on after the U filter"
        in card
    )
    assert "given with --beta, raised to the floor 0.1 for the cut (--pu_filter_min_beta)" in card
