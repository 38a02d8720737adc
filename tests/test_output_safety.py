"""A run deletes or overwrites only files that a run of this project wrote: every CLI, with and without
--overwrite_output_dir; faults (full disk, damaged state, kills between write and rename); bad input as one
``error:`` line."""

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_args
from test_beta_and_audit import write_planted_folder
from test_evaluation import save_tiny_ddpm, save_tiny_vit
from test_text_to_image import sd_args

import audit_pu_diffusion as audit
import estimate_pu_beta as estimate_beta
import evaluate_pu_diffusion
import export_pu_split as export_split
import train_pu_diffusion
import train_pu_text_to_image
from pu_diffusion.checkpoints import checkpoint_problem
from pu_diffusion.cli import DiskFullError, TrainingDivergedError, UsageError, run_cli
from pu_diffusion.image_data import PUDataError
from pu_diffusion.outputs import MANIFEST, write_atomic
from pu_diffusion.testing_utils import build_tiny_sd, write_captioned_folder, write_imagefolder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def train(argv):
    return train_pu_diffusion.main(train_pu_diffusion.parse_args([str(arg) for arg in argv]))


def small_args(out, unet_config, data, *extra):
    """A tiny run on an imagefolder: 4 steps, a checkpoint every 2, no final grid (seconds on a CPU)."""
    return tiny_args(
        out,
        unet_config,
        "--train_data_dir",
        data,
        "--lr_scheduler",
        "constant",
        "--num_final_images",
        "0",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        *extra,
    )


def snapshot(root) -> dict:
    """{relative path: sha256} of every file under ``root``."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def plant(root, relative_paths) -> dict:
    """Write a user's file at each relative path under ``root``; returns {path: its bytes}."""
    planted = {}
    for relative in relative_paths:
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        content = f"the user's own {relative}\n".encode()
        with open(path, "wb") as handle:
            handle.write(content)
        planted[relative] = content
    return planted


def assert_intact(root, planted: dict) -> None:
    for relative, content in planted.items():
        with open(os.path.join(root, relative), "rb") as handle:
            assert handle.read() == content, f"{relative} was changed"


@pytest.fixture
def data(tmp_path):
    return write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6, size=8)


# ---- 1. Never write into an input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["is the base", "is the data", "inside the data", "contains the data", "holds config"]
)
def test_an_output_dir_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path, tiny_unet_config, data, where):
    base = save_tiny_ddpm(tmp_path / "base")
    config = tiny_unet_config()
    out, extra = {
        "is the base": (base, ["--pretrained_model_name_or_path", base, "--overwrite_output_dir"]),
        "is the data": (data, ["--overwrite_output_dir"]),
        "inside the data": (os.path.join(data, "unlabeled", "out"), []),
        "contains the data": (tmp_path, []),
        "holds config": (os.path.dirname(config), []),
    }[where]
    argv = small_args(out, config, data, *extra)
    if "--pretrained_model_name_or_path" in extra:
        at = argv.index("--model_config_name_or_path")
        argv = argv[:at] + argv[at + 2 :]
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=r"--output_dir .* (is|contains|lies inside) --"):
        train(argv)
    assert snapshot(tmp_path) == before


def test_text_to_image_refuses_its_base_model_as_output_dir_and_keeps_it(tmp_path):
    base = build_tiny_sd(str(tmp_path / "base"))
    captioned = write_captioned_folder(tmp_path / "data")
    before = snapshot(base)
    with pytest.raises(UsageError, match="--output_dir .* is --pretrained_model_name_or_path"):
        train_pu_text_to_image.parse_args(sd_args(base, captioned, base, "--overwrite_output_dir"))
    with pytest.raises(UsageError, match="--logging_dir .* lies inside --train_data_dir"):
        train_pu_text_to_image.parse_args(
            sd_args(base, captioned, tmp_path / "out", "--logging_dir", os.path.join(captioned, "logs"))
        )
    assert snapshot(base) == before


# ---- 2-4. User files in the output folder -----------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_user_files_under_the_runs_names_is_refused_and_kept(
    tmp_path, tiny_unet_config, data, overwrite
):
    """The issue's cases: a project folder with README.md, samples/, eval/, logs/; nothing is changed."""
    out = tmp_path / "project"
    planted = plant(out, ["README.md", "samples.png", "samples/mine.png", "eval/notes.txt", "logs/app.log", "x.py"])
    flags = ["--overwrite_output_dir"] if overwrite else []
    with pytest.raises(UsageError, match="README.md, logs, samples, samples.png") as refused:
        train(small_args(out, tiny_unet_config(), data, *flags))
    assert "no pu-diffusion run wrote" in str(refused.value)
    assert snapshot(out) == {name: hashlib.sha256(content).hexdigest() for name, content in planted.items()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_logging_dir_holding_user_files_is_refused_and_kept(tmp_path, tiny_unet_config, data, overwrite):
    out = tmp_path / "out"
    planted = plant(out, ["photos/holiday.jpg"])
    outside = plant(tmp_path / "mylogs", ["train_log.jsonl"])
    flags = ["--overwrite_output_dir"] if overwrite else []
    with pytest.raises(UsageError, match="no pu-diffusion run wrote, under names this run writes: photos"):
        train(small_args(out, tiny_unet_config(), data, "--logging_dir", "photos", *flags))
    with pytest.raises(UsageError, match="--logging_dir .*mylogs.* train_log.jsonl"):
        train(small_args(out, tiny_unet_config(), data, "--logging_dir", str(tmp_path / "mylogs"), *flags))
    assert_intact(out, planted)
    assert_intact(tmp_path / "mylogs", outside)


def test_user_files_beside_a_run_survive_the_run_its_resume_and_its_overwrite(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    planted = plant(out, ["notes.txt", "eval/notes.txt", "checkpoints_are_here.txt", "unet.txt"])
    train(small_args(out, tiny_unet_config(), data))
    assert (out / "model_index.json").exists() and (out / "checkpoint-4").is_dir()
    assert_intact(out, planted)
    train(small_args(out, tiny_unet_config(), data, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"))
    assert_intact(out, planted)
    (out / "eval" / "metrics.json").write_text("{}")  # an evaluation's output beside the user's note
    (out / "eval" / MANIFEST).write_text(json.dumps({"names": ["metrics.json"], "patterns": []}))
    train(small_args(out, tiny_unet_config(), data, "--overwrite_output_dir", "--max_train_steps", "2"))
    assert_intact(out, planted)
    assert not (out / "eval" / "metrics.json").exists()  # what runs wrote is gone, the user's note stays
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-2").is_dir()


def test_the_manifest_lists_what_the_run_wrote_and_nothing_it_only_might_have(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["names"]) == [
        ".pipeline_retired",  # the final save's working folders (gone once it is in place)
        ".pipeline_staging",
        "README.md",
        "logs",
        "model_index.json",
        "pu_run.json",
        "scheduler",
        "train_stats.json",
        "unet",
    ]
    assert manifest["patterns"] == [r"checkpoint-\d+(\.tmp|\.old)?"]
    planted = plant(out, ["vae/mine.bin", "tokenizer"])  # names only text-to-image runs write: the user's here
    train(small_args(out, tiny_unet_config(), data, "--overwrite_output_dir", "--max_train_steps", "2"))
    assert_intact(out, planted)


def test_push_to_hub_uploads_only_what_runs_wrote(tmp_path, tiny_unet_config, data, monkeypatch):
    import fnmatch

    import huggingface_hub

    uploads = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda **kw: type("Repo", (), {"repo_id": "me/m"}))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: uploads.append(kw))
    out = tmp_path / "out"
    plant(out, ["private/diary.txt", "notes.md"])
    train(small_args(out, tiny_unet_config(), data, "--push_to_hub", "--hub_model_id", "me/m"))
    allowed = uploads[0]["allow_patterns"]

    def uploaded(path):
        return any(fnmatch.fnmatch(path, pattern) for pattern in allowed)

    assert uploaded("unet/diffusion_pytorch_model.safetensors") and uploaded("README.md")
    assert not uploaded("private/diary.txt") and not uploaded("notes.md")


def test_a_log_folder_outside_the_output_dir_is_claimed_and_cleared_alone(tmp_path, tiny_unet_config, data):
    logs = tmp_path / "shared_logs"
    planted = plant(logs, ["other_project.log"])
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data, "--logging_dir", str(logs)))
    assert (logs / "train_log.jsonl").exists()
    train(small_args(out, tiny_unet_config(), data, "--logging_dir", str(logs), "--overwrite_output_dir"))
    assert_intact(logs, planted)
    assert len((logs / "train_log.jsonl").read_text().splitlines()) == 4  # the new run's steps only


# ---- 5. Full disk ------------------------------------------------------------------------------------------------


def test_a_save_that_runs_out_of_space_says_so_in_one_line_and_the_resume_cleans_up_first(
    tmp_path, tiny_unet_config, data, monkeypatch
):
    from accelerate import Accelerator

    from pu_diffusion import run_dir

    out = tmp_path / "out"
    real_save = Accelerator.save_state
    calls = []

    def save_until_full(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: write a part of it, then the disk is full
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "optimizer.bin"), "wb") as handle:
                handle.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(output_dir, "optimizer.bin"))
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_until_full)
    with pytest.raises(DiskFullError, match=r"no space left .* checkpoint-4 .* a checkpoint takes [\d.]+ MiB"):
        train(small_args(out, tiny_unet_config(), data))
    assert not (out / "checkpoint-4.tmp").exists() and (out / "checkpoint-2").is_dir()
    monkeypatch.setattr(Accelerator, "save_state", real_save)

    # What an older version left after the same failure: a partial save and an empty run file being replaced.
    (out / "checkpoint-4.tmp").mkdir()
    (out / "checkpoint-4.tmp" / "optimizer.bin").write_bytes(b"\0" * 4096)
    (out / "pu_run.json.tmp").write_bytes(b"")
    seen_at_first_write = []
    real_write = run_dir.write_json_atomic

    def spy(path, *args, **kwargs):
        seen_at_first_write.append(sorted(name for name in os.listdir(out) if name.endswith(".tmp")))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(run_dir, "write_json_atomic", spy)
    train(small_args(out, tiny_unet_config(), data, "--resume_from_checkpoint", "latest"))
    assert seen_at_first_write[0] == []  # leftovers were removed before anything new was written
    assert (out / "checkpoint-4").is_dir() and (out / "model_index.json").exists()


def test_a_full_disk_anywhere_else_is_one_error_line(capsys):
    def parse(argv):
        return argv

    def main(_):
        raise OSError(errno.ENOSPC, "No space left on device", "out/unet/diffusion_pytorch_model.safetensors")

    with pytest.raises(SystemExit) as stopped:
        run_cli(main, parse, [], prog="train_pu_diffusion.py")
    error = capsys.readouterr().err
    assert stopped.value.code == 1 and error.count("\n") == 1
    assert error.startswith("train_pu_diffusion.py: error: no space left on the device (out/unet/")


def test_a_kill_while_the_pipeline_is_saved_leaves_no_loadable_half_and_the_run_saves_it_again(
    tmp_path, tiny_unet_config, data, monkeypatch
):
    """The final save goes to a staging folder and is swapped in with model_index.json last: a kill midway leaves a
    folder that is no pipeline (never one that loads mixed weights), and the resumed run puts the whole one back."""
    from diffusers import DDPMPipeline

    import pipelines.saving as saving

    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    trained = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    real_replace = os.replace

    def killed_at_the_unet(source, target, *args, **kwargs):
        if str(source).endswith(os.path.join(saving.STAGING, "unet")):
            raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(saving.os, "replace", killed_at_the_unet)
    with pytest.raises(KeyboardInterrupt):
        train(small_args(out, tiny_unet_config(), data, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"))
    assert not (out / "model_index.json").exists()  # not loadable as a pipeline while it is half replaced
    assert (out / saving.STAGING / "model_index.json").exists()
    monkeypatch.setattr(saving.os, "replace", real_replace)
    train(small_args(out, tiny_unet_config(), data, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"))
    assert not (out / saving.STAGING).exists() and not (out / saving.RETIRED).exists()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != trained  # 6 steps, not 4
    DDPMPipeline.from_pretrained(str(out))


def test_a_users_file_under_the_saves_working_names_is_refused_before_training(tmp_path, tiny_unet_config, data):
    import pipelines.saving as saving

    out = tmp_path / "out"
    planted = plant(out, [saving.STAGING])
    with pytest.raises(UsageError, match=r"\.pipeline_staging"):
        train(small_args(out, tiny_unet_config(), data))
    assert_intact(out, planted)
    assert not (out / "pu_run.json").exists()


def test_the_lora_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import load_file

    import pipelines.saving as saving

    folder = build_tiny_sd(tmp_path / "base")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q"]))
    out = tmp_path / "out"
    saving.save_lora_weights(str(out), unet)
    saved = (out / saving.LORA_WEIGHTS_NAME).read_bytes()
    assert load_file(str(out / saving.LORA_WEIGHTS_NAME)) and not (out / saving.STAGING).exists()
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        saving.save_lora_weights(str(out), unet)
    assert (out / saving.LORA_WEIGHTS_NAME).read_bytes() == saved  # the old file, whole
    monkeypatch.undo()
    saving.save_lora_weights(str(out), unet)  # the leftover staging folder is ours: cleared, then used again
    assert (out / saving.LORA_WEIGHTS_NAME).read_bytes() != saved and not (out / saving.STAGING).exists()


# ---- 6. Damaged state --------------------------------------------------------------------------------------------


def truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))


@pytest.mark.parametrize(
    "damaged", ["unet/diffusion_pytorch_model.safetensors", "optimizer.bin", "pu_checkpoint.json", "scheduler.bin"]
)
def test_latest_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, tiny_unet_config, data, damaged, caplog):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    truncate(out / "checkpoint-4" / damaged)
    assert checkpoint_problem(str(out / "checkpoint-4")).startswith(damaged)
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    with pytest.raises(UsageError, match=f"cannot be loaded: {damaged}"):
        train(small_args(out, tiny_unet_config(), data, "--resume_from_checkpoint", str(out / "checkpoint-4")))
    with caplog.at_level("WARNING"):
        train(small_args(out, tiny_unet_config(), data, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"))
    assert "skipping checkpoint-4" in caplog.text
    steps = [json.loads(line)["step"] for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed after step 2: steps 3-4 trained again, not logged twice
    assert checkpoint_problem(str(out / "checkpoint-6")) is None


@pytest.mark.parametrize("name", ["pu_run.json", MANIFEST])
def test_a_damaged_run_file_or_manifest_is_named_with_the_fix(tmp_path, tiny_unet_config, data, name):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    (out / name).write_text('{"trunc')
    with pytest.raises(UsageError, match=f"{name} cannot be read"):
        train(small_args(out, tiny_unet_config(), data, "--resume_from_checkpoint", "latest"))


# ---- 7. Atomic writes --------------------------------------------------------------------------------------------


def test_metrics_and_model_cards_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A kill between writing and renaming leaves the old file intact (the write goes to name.tmp first)."""
    from pipelines import add_metrics_to_model_card
    from pu_diffusion import outputs
    from pu_diffusion.evaluation import write_metrics

    (tmp_path / "README.md").write_text("# card\n\n## Usage\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text('{"old": 1}')

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        add_metrics_to_model_card(str(tmp_path), {"non_sensitive_rate": 0.5})
    with pytest.raises(KeyboardInterrupt):
        write_metrics({"non_sensitive_rate": 0.5}, str(tmp_path / "eval"))
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(tmp_path / "README.md"), "new")
    assert (tmp_path / "README.md").read_text() == "# card\n\n## Usage\n"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == {"old": 1}


# ---- 8. Non-finite numbers and diverged training -----------------------------------------------------------------

NON_FINITE_FLAGS = [
    "--learning_rate", "--adam_beta1", "--adam_beta2", "--adam_epsilon", "--adam_weight_decay", "--ema_max_decay",
    "--ema_inv_gamma", "--ema_power", "--max_grad_norm", "--loss_temperature", "--beta_margin", "--pu_sensitive_cap",
    "--erasediff_lambda", "--erasediff_eta", "--builtin_contamination", "--beta", "--pu_sensitive_cap_fraction",
]  # fmt: skip


@pytest.mark.parametrize("flag", NON_FINITE_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_by_every_float_flag(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit):
        train_pu_diffusion.parse_args(["--output_dir", str(tmp_path / "out"), f"{flag}={value}"])
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--proportion_empty_prompts", "nan"], "argument --proportion_empty_prompts: expected a finite number"),
        (["--proportion_empty_prompts", "1.5"], "--proportion_empty_prompts must lie in"),
        (["--guidance_scale", "inf"], "argument --guidance_scale: expected a finite number"),
        (["--esd_start_guidance", "nan"], "argument --esd_start_guidance: expected a finite number"),
        (["--rank", "0"], "--rank must be >= 1"),
    ],
)
def test_text_to_image_float_and_rank_flags_are_refused(tmp_path, extra, message, capsys):
    argv = ["--pretrained_model_name_or_path", "x", "--train_data_dir", str(tmp_path), "--output_dir", "o", *extra]
    with pytest.raises((SystemExit, UsageError)) as refused:
        train_pu_text_to_image.parse_args(argv)
    assert message in (capsys.readouterr().err + str(refused.value))


def test_weights_that_are_not_finite_are_never_saved_as_a_pipeline(tmp_path, tiny_unet_config, data, monkeypatch):
    from pu_diffusion import training

    real_check = training.check_finite_weights

    def poisoned(accelerator, model, ema_model, global_step):  # what lr 1e30 does, deterministically
        with torch.no_grad():
            next(accelerator.unwrap_model(model).parameters()).fill_(float("nan"))
        return real_check(accelerator, model, ema_model, global_step)

    monkeypatch.setattr(training, "check_finite_weights", poisoned)
    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError, match="1 of .* weight tensors hold NaN or inf after step 4"):
        train(small_args(out, tiny_unet_config(), data))
    assert not (out / "model_index.json").exists() and not (out / "unet").exists()


def test_a_learning_rate_that_explodes_saves_no_pipeline(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        train(small_args(out, tiny_unet_config(), data, "--learning_rate", "1e30", "--max_grad_norm", "0"))
    assert not (out / "model_index.json").exists()


# ---- 9. One error line, never a traceback ------------------------------------------------------------------------


def test_a_read_only_output_folder_is_refused_before_anything_is_loaded(tmp_path, tiny_unet_config, data, monkeypatch):
    from pu_diffusion import outputs, training

    real_access = os.access
    read_only = str(tmp_path / "ro")
    os.makedirs(read_only)
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: path != read_only and real_access(path, mode))
    monkeypatch.setattr(training, "load_pu_data", lambda *a, **k: pytest.fail("data loaded before the refusal"))
    with pytest.raises(UsageError, match="--output_dir .* cannot be written: .* read-only"):
        train(small_args(os.path.join(read_only, "out"), tiny_unet_config(), data))
    with pytest.raises(UsageError, match="--output_file .* cannot be written"):
        estimate_beta.parse_args(["--train_data_dir", data, "--output_file", os.path.join(read_only, "b.json")])
    with pytest.raises(UsageError, match="--output_dir .* cannot be written"):
        audit.parse_args(["--pipeline", data, "--output_dir", os.path.join(read_only, "audit")])


def test_metadata_paths_that_leave_the_folder_are_refused_by_name(tmp_path):
    from pu_diffusion.image_data import read_metadata_jsonl

    for bad in ("../secret.png", "/etc/passwd", "a/../../x.png"):
        path = tmp_path / "metadata.jsonl"
        path.write_text(json.dumps({"file_name": "ok.png"}) + "\n" + json.dumps({"file_name": bad}) + "\n")
        with pytest.raises(PUDataError, match=f"metadata.jsonl line 2: file_name '{bad}' leaves the folder"):
            read_metadata_jsonl(str(path))


def test_a_truncated_image_in_an_audit_folder_is_named(tmp_path):
    folder = write_imagefolder(tmp_path / "images", n_unlabeled=3, n_sensitive=0, size=8)
    broken = sorted((tmp_path / "images" / "unlabeled").iterdir())[1]
    truncate(broken, keep=0.3)
    pipeline = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    args = audit.parse_args(
        ["--pipeline", str(pipeline), "--image_folder", folder, "--output_dir", str(tmp_path / "a")]
    )
    with pytest.raises(UsageError, match=f"{broken.name} cannot be read as an image"):
        audit.main(args)
    assert not (tmp_path / "a").exists()


CLI_REFUSALS = [
    ("train_pu_diffusion.py", ["--output_dir", "{out}"], "--output_dir '{out}' holds files that no pu-diffusion run"),
    (
        "train_pu_text_to_image.py",
        ["--pretrained_model_name_or_path", "{out}", "--train_data_dir", "{out}", "--output_dir", "{out}"],
        "--output_dir '{out}' is --pretrained_model_name_or_path",
    ),
    (
        "evaluate_pu_diffusion.py",
        ["--pipeline", "{out}", "--output_dir", "{out}"],
        "--output_dir '{out}' is --pipeline",
    ),
    ("audit_pu_diffusion.py", ["--pipeline", "{out}", "--output_dir", "{out}"], "--output_dir '{out}' is --pipeline"),
    ("estimate_pu_beta.py", ["--output_file", "{out}/README.md"], "exists and was not written by"),
    ("export_pu_split.py", ["--preset", "builtin-mnist-even", "--output_dir", "{out}"], "is not empty"),
]


def test_every_cli_ends_a_user_error_with_one_error_line(tmp_path):
    """The six programs as users start them (in parallel: each pays its own imports), each refusing a folder
    that holds the user's files; every one ends with one `<prog>: error:` line, no traceback, files intact."""
    started = []
    for number, (program, argv, message) in enumerate(CLI_REFUSALS):
        out = tmp_path / f"folder{number}"
        planted = plant(out, ["README.md", "samples.png"])
        command = [sys.executable, os.path.join(ROOT, program)]
        process = subprocess.Popen(
            command + [arg.format(out=out) for arg in argv],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append((program, message.format(out=out), out, planted, process))
    for program, message, out, planted, process in started:
        _, stderr = process.communicate(timeout=300)
        last = stderr.strip().splitlines()[-1]
        assert process.returncode in (1, 2) and "Traceback" not in stderr, (program, stderr[-2000:])
        assert last.startswith(f"{os.path.basename(program)}: error: ") and message in last, (program, last)
        assert_intact(out, planted)


# ---- 10. The split export ----------------------------------------------------------------------------------------

EXPORT = ["--preset", "builtin-mnist-even", "--n_unlabeled_normal", "6", "--n_unlabeled_sensitive", "2"]
EXPORT += ["--n_sensitive", "2", "--n_test", "3"]


@pytest.mark.parametrize("flag", ["--n_test", "--n_unlabeled_normal", "--n_sensitive", "--n_unlabeled_sensitive"])
def test_export_refuses_negative_counts(tmp_path, flag, capsys):
    with pytest.raises(SystemExit):
        export_split.parse_args([*EXPORT, "--output_dir", str(tmp_path / "out"), flag, "-5"])
    assert f"{flag} must be at least" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_with_other_files_and_finishes_an_interrupted_export(tmp_path, monkeypatch):
    out = tmp_path / "out"
    planted = plant(out, ["my_images/a.png"])
    with pytest.raises(UsageError, match="is not empty .*my_images"):
        export_split.export_split(export_split.parse_args([*EXPORT, "--output_dir", str(out)]))
    assert_intact(out, planted)
    fresh = tmp_path / "fresh"
    real_save = export_split.write_json_atomic

    def killed_before_split_json(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_split, "write_json_atomic", killed_before_split_json)
    with pytest.raises(KeyboardInterrupt):
        export_split.export_split(export_split.parse_args([*EXPORT, "--output_dir", str(fresh)]))
    (fresh / "train" / "unlabeled" / "stale.png").write_bytes(b"left by the interrupted export")
    monkeypatch.setattr(export_split, "write_json_atomic", real_save)
    info = export_split.export_split(export_split.parse_args([*EXPORT, "--output_dir", str(fresh)]))
    assert sum(len(files) for _, _, files in os.walk(fresh / "train")) == 10 and "stale.png" not in os.listdir(
        fresh / "train" / "unlabeled"
    )
    assert info["counts"]["n_test"] == 3
    with pytest.raises(UsageError, match="already holds an exported split"):
        export_split.parse_args([*EXPORT, "--output_dir", str(fresh)])


# ---- Every CLI, user files planted in every place it writes ------------------------------------------------------


def cli_cases(tmp_path, tiny_unet_config):
    """{cli: (run(extra flags), output folder, the names it writes there, takes --overwrite_output_dir)}."""
    data = write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6, size=8)
    planted_data = write_planted_folder(tmp_path / "planted", n_dark=16, n_bright_in_u=2, n_sensitive=6)
    sd = build_tiny_sd(str(tmp_path / "sd"))
    captioned = write_captioned_folder(tmp_path / "captioned")
    pipeline = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    classifier = save_tiny_vit(tmp_path / "classifier")
    test_dir = write_imagefolder(tmp_path / "test", n_unlabeled=4, n_sensitive=0, size=8)
    out = {name: tmp_path / name for name in ("uncond", "t2i", "eval", "audit", "beta", "export")}
    uncond = small_args(out["uncond"], tiny_unet_config(), data, "--max_train_steps", "2", "--num_final_images", "2")
    t2i = sd_args(sd, captioned, out["t2i"], "--max_train_steps", "2", "--validation_prompts", "a photo")
    t2i += ["--num_validation_images", "1"]
    evaluation = [
        "--pipeline",
        pipeline,
        "--output_dir",
        out["eval"],
        "--num_samples",
        "4",
        "--num_inference_steps",
        "2",
    ]
    evaluation += ["--classifier_name_or_path", classifier, "--sensitive_labels", "face", "--test_data_dir", test_dir]
    audit_argv = ["--pipeline", pipeline, "--image_folder", test_dir, "--output_dir", out["audit"], "--num_draws", "2"]
    beta = ["--train_data_dir", planted_data, "--resolution", "8", "--folds", "2", "--output_file"]
    return {
        "train_pu_diffusion": (
            lambda extra: train([*uncond, *extra]),
            out["uncond"],
            train_pu_diffusion.OUTPUTS + ("pu_run.json", "logs"),
            True,
        ),
        "train_pu_text_to_image": (
            lambda extra: train_pu_text_to_image.main(train_pu_text_to_image.parse_args([*t2i, *extra])),
            out["t2i"],
            train_pu_text_to_image.OUTPUTS + ("pu_run.json", "logs", "checkpoint-2"),
            True,
        ),
        "evaluate": (
            lambda extra: evaluate_pu_diffusion.main(evaluate_pu_diffusion.parse_args([str(a) for a in evaluation])),
            out["eval"],
            ("metrics.json", "samples_eval.png"),
            False,
        ),
        "audit": (
            lambda extra: audit.main(audit.parse_args([str(a) for a in audit_argv])),
            out["audit"],
            audit.AUDIT_OUTPUTS,
            False,
        ),
        "estimate_beta": (
            lambda extra: estimate_beta.main(estimate_beta.parse_args([*beta, str(out["beta"] / extra[0])])),
            out["beta"],
            ("beta.json",),
            False,
        ),
        "export_split": (
            lambda extra: export_split.export_split(
                export_split.parse_args([*EXPORT, "--output_dir", str(out["export"])])
            ),
            out["export"],
            export_split.EXPORT_OUTPUTS,
            False,
        ),
    }


def test_user_files_planted_wherever_a_cli_writes_are_never_touched(tmp_path, tiny_unet_config):
    """For each CLI: a user file under every name it writes is refused (with and without --overwrite_output_dir)
    and kept byte for byte; user files beside its outputs survive its run and a second run (overwrite)."""
    for name, (run, folder, names, overwrites) in cli_cases(tmp_path, tiny_unet_config).items():
        for written in names:
            planted = plant(folder, [written if name != "estimate_beta" else "beta.json"])
            for extra in (["beta.json"],) if name == "estimate_beta" else ([], ["--overwrite_output_dir"][:overwrites]):
                with pytest.raises(UsageError):
                    run(extra)
            assert snapshot(folder) == {k: hashlib.sha256(v).hexdigest() for k, v in planted.items()}, name
            os.remove(os.path.join(folder, next(iter(planted))))
        beside = plant(folder, ["my_notes.txt", "sub/photo.png"])
        if name == "export_split":  # refuses any other file: an export beside the user's images would mix with them
            with pytest.raises(UsageError, match="is not empty"):
                run([])
            assert_intact(folder, beside)
            continue
        run(["beta.json"] if name == "estimate_beta" else [])
        assert set(names) & set(os.listdir(folder)), f"{name} wrote none of {names}"
        assert_intact(folder, beside)
        if overwrites:
            run(["--overwrite_output_dir"])
            assert_intact(folder, beside)
        elif name == "estimate_beta":
            run(["beta.json"])  # an earlier estimate is replaced
            assert_intact(folder, beside)


# ---- Found in review: links, look-alike names, unreadable checkpoints, older runs, files as folders -------------


def test_overwrite_never_follows_a_link_nor_clears_a_parent_log_folder(tmp_path, tiny_unet_config, data):
    exported = tmp_path / "exported"
    export_split.export_split(export_split.parse_args([*EXPORT, "--output_dir", str(exported)]))
    before = snapshot(exported)
    out = tmp_path / "runs" / "b"
    out.mkdir(parents=True)
    os.symlink(exported, out / "data")  # the user's link to data another program of ours wrote
    train(small_args(out, tiny_unet_config(), data))
    train(small_args(out, tiny_unet_config(), data, "--overwrite_output_dir"))
    assert os.path.islink(out / "data") and snapshot(exported) == before
    with pytest.raises(UsageError, match="--output_dir .* lies inside --logging_dir|--logging_dir .* contains"):
        train(small_args(out, tiny_unet_config(), data, "--logging_dir", "..", "--overwrite_output_dir"))


def test_names_that_only_look_like_checkpoints_stay_the_users(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    planted = plant(out, ["checkpoint-4-best/notes.txt", "checkpoint-2.txt", "README.md.bak"])
    train(small_args(out, tiny_unet_config(), data, "--overwrite_output_dir"))
    assert_intact(out, planted)


def test_latest_refuses_rather_than_restarts_when_no_checkpoint_loads(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    for step in (2, 4):
        truncate(out / f"checkpoint-{step}" / "optimizer.bin")
    before = snapshot(out)
    with pytest.raises(UsageError, match="no checkpoint in .* can be loaded .*checkpoint-4: optimizer.bin"):
        train(small_args(out, tiny_unet_config(), data, "--resume_from_checkpoint", "latest"))
    assert snapshot(out) == before


def test_a_run_of_an_older_version_without_a_manifest_is_left_alone_with_the_reason(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    train(small_args(out, tiny_unet_config(), data))
    (out / MANIFEST).unlink()  # what every run before the manifest left
    before = snapshot(out)
    for extra in (["--overwrite_output_dir"], ["--resume_from_checkpoint", "latest"]):
        with pytest.raises(UsageError, match="holds a run of an older pu-diffusion"):
            train(small_args(out, tiny_unet_config(), data, *extra))
    assert snapshot(out) == before


def test_an_existing_file_where_an_output_folder_goes_is_refused_before_any_work(tmp_path, tiny_unet_config, data):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    pipeline = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    with pytest.raises(UsageError, match="--output_dir .*notes.txt' is a file"):
        evaluate_pu_diffusion.main(
            evaluate_pu_diffusion.parse_args(["--pipeline", str(pipeline), "--output_dir", str(notes)])
        )
    with pytest.raises(UsageError, match="--logging_dir .*notes.txt' is a file"):
        train(small_args(tmp_path / "out", tiny_unet_config(), data, "--logging_dir", str(notes)))
    assert notes.read_text() == "mine" and not (tmp_path / "out").exists()


def test_a_damaged_pipeline_is_one_error_in_the_audit(tmp_path):
    pipeline = save_tiny_ddpm(tmp_path / "pipe", channels=3)
    truncate(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    images = write_imagefolder(tmp_path / "images", n_unlabeled=2, n_sensitive=0, size=8)
    args = audit.parse_args(
        ["--pipeline", str(pipeline), "--image_folder", images, "--output_dir", str(tmp_path / "a")]
    )
    with pytest.raises(UsageError, match="--pipeline .* cannot be loaded"):
        audit.main(args)


def test_a_bad_manifest_entry_and_a_users_tmp_file_are_refused(tmp_path, tiny_unet_config, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"names": [1], "patterns": []}))
    with pytest.raises(UsageError, match=f"{MANIFEST} cannot be read"):
        train(small_args(out, tiny_unet_config(), data))
    (out / MANIFEST).unlink()
    planted = plant(out, ["README.md.tmp"])  # where the model card is written before its rename
    with pytest.raises(UsageError, match="README.md.tmp"):
        train(small_args(out, tiny_unet_config(), data))
    assert_intact(out, planted)


@pytest.mark.parametrize("resolution", ["10", "18"])
def test_text_to_image_refuses_a_resolution_the_vae_and_unet_cannot_take(tmp_path, resolution):
    base = build_tiny_sd(str(tmp_path / "base"))
    captioned = write_captioned_folder(tmp_path / "data")
    argv = sd_args(base, captioned, tmp_path / "out", "--resolution", resolution)
    with pytest.raises(UsageError, match=f"--resolution {resolution} cannot pass through the model: .* multiple of 4"):
        train_pu_text_to_image.main(train_pu_text_to_image.parse_args(argv))
    assert not (tmp_path / "out").exists()


def test_log_folders_above_the_output_or_on_a_file_are_refused_before_the_output_exists(
    tmp_path, tiny_unet_config, data
):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    out = tmp_path / "runs" / "b"  # does not exist yet
    with pytest.raises(UsageError, match=r"--logging_dir '\.\.' contains --output_dir"):
        train(small_args(out, tiny_unet_config(), data, "--logging_dir", ".."))
    with pytest.raises(UsageError, match="--logging_dir .*notes.txt' is a file"):
        train(small_args(tmp_path / "out", tiny_unet_config(), data, "--logging_dir", "../notes.txt"))
    assert notes.read_text() == "mine" and not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "parse_args",
    [
        train_pu_diffusion.parse_args,
        train_pu_text_to_image.parse_args,
        evaluate_pu_diffusion.parse_args,
        audit.parse_args,
        estimate_beta.parse_args,
        export_split.parse_args,
    ],
    ids=["train_pu_diffusion", "train_pu_text_to_image", "evaluate", "audit", "estimate_beta", "export_split"],
)
def test_help_shows_every_flags_default(parse_args, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    options = text[text.index("options:") :]
    blocks, current = [], ""
    for line in options.splitlines()[1:]:
        if line.startswith("  -") and current:
            blocks.append(current)
            current = ""
        current += " " + line.strip()
    blocks.append(current)
    flags = [block for block in blocks if block.strip().startswith("--")]
    assert len(flags) >= 8 and all("(default:" in block for block in flags), [b for b in flags if "(default:" not in b]
    assert "(default: None)" not in text  # an unset default says so, and the flag's help says what happens then
    if parse_args is train_pu_diffusion.parse_args:
        assert "With no dataset flags (the built-in presets): 0.001" in " ".join(text.split())


def test_an_output_folder_on_a_kernel_filesystem_is_refused_before_anything_runs(tmp_path, capsys):
    """os.access calls /proc writable for root; the mount table says it holds no files."""
    from pu_diffusion.outputs import check_writable, pseudo_filesystem

    mounts = tmp_path / "mounts"
    disk = tmp_path / "disk"
    mounts.write_text(
        f"/dev/sda1 / ext4 rw 0 0\nproc {tmp_path / 'fake proc'} proc rw 0 0\n".replace("fake proc", "fake\\040proc")
    )
    (tmp_path / "fake proc" / "1").mkdir(parents=True)
    assert pseudo_filesystem(str(tmp_path / "fake proc" / "1"), str(mounts)).startswith("proc (")
    disk.mkdir()
    assert pseudo_filesystem(str(disk), str(mounts)) is None
    assert pseudo_filesystem(str(disk), str(tmp_path / "no-such-file")) is None  # no mount table: no verdict
    if not os.path.isfile("/proc/self/mounts") or pseudo_filesystem("/proc") is None:
        return  # not Linux: the real /proc below does not exist
    with pytest.raises(UsageError, match="--output_dir '/proc/pu-out' lies on proc"):
        check_writable("/proc/pu-out", "--output_dir")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_pu_diffusion.main, train_pu_diffusion.parse_args, ["--output_dir", "/proc/pu-out"], prog="train")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("train: error: --output_dir '/proc/pu-out' lies on proc")
