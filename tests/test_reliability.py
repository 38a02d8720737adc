"""Runs that are killed, resumed, run on several processes, overwritten, or given bad input (real subprocesses)."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, tiny_args
from safetensors.torch import load_file

import train_pu_diffusion as script
from pu_diffusion.checkpoints import COMPLETE_MARKER, checkpoint_dirs, resolve_resume_checkpoint
from pu_diffusion.testing_utils import write_imagefolder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(argv):
    return script.main(script.parse_args(argv))


def weights(folder, subfolder="unet"):
    return load_file(os.path.join(folder, subfolder, "diffusion_pytorch_model.safetensors"))


def assert_same_weights(first, second, subfolder="unet"):
    a, b = weights(first, subfolder), weights(second, subfolder)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def log_steps(out):
    return [json.loads(line)["step"] for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]


def small_data_args(out, unet_config, data, *extra):
    """A tiny run on an imagefolder (fast to start in a subprocess), constant LR so resumes compare exactly."""
    return tiny_args(
        out, unet_config, "--train_data_dir", data, "--lr_scheduler", "constant", "--num_final_images", "0", *extra
    )


# ---- 1. Kills at any moment, around checkpoint saves --------------------------------------------------------------


def test_kill_at_random_moments_around_saves_then_resume_equals_straight(tmp_path, tiny_unet_config):
    """SIGKILL a real training process again and again, mostly while a checkpoint is being written; every resume works,
    `latest` never picks a half-written checkpoint, and the finished run has the weights of an uninterrupted one."""
    data = write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6, size=8)
    flags = ["--max_train_steps", "14", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]
    straight = tmp_path / "straight"
    run(small_data_args(straight, tiny_unet_config(), data, *flags))

    out = tmp_path / "killed"
    command = [
        sys.executable,
        os.path.join(ROOT, "train_pu_diffusion.py"),
        *small_data_args(out, tiny_unet_config(), data, *flags, "--resume_from_checkpoint", "latest"),
    ]
    rng = random.Random(0)
    kills = 0
    for trial in range(10):
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        # Wait for a checkpoint save to begin (or any moment, every third trial), then kill after a random delay.
        while process.poll() is None and time.time() < deadline:
            saving = out.exists() and any(name.endswith(".tmp") for name in os.listdir(out))
            if saving or (trial % 3 == 2 and out.exists() and (out / "logs").exists()):
                time.sleep(rng.uniform(0.0, 0.03))
                break
            time.sleep(0.002)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        stderr = process.stderr.read().decode()
        process.stderr.close()
        assert process.returncode in (0, -signal.SIGKILL), stderr[-3000:]
        if process.returncode == 0:
            break
        latest = resolve_resume_checkpoint(str(out), "latest")
        assert latest is None or os.path.isfile(os.path.join(latest, COMPLETE_MARKER))
        assert len(checkpoint_dirs(str(out))) <= 1  # the limit holds, and the last good one was never deleted early
    assert kills >= 5
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(straight, out)
    assert log_steps(out) == list(range(1, 15))  # a resumed run re-logs no step twice
    assert checkpoint_dirs(str(out)) == ["checkpoint-14"] and not any(
        n.endswith((".tmp", ".old")) for n in os.listdir(out)
    )


def test_incomplete_checkpoint_is_skipped_by_latest_and_refused_by_path(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config()))
    broken = out / "checkpoint-9"  # what a save killed midway left behind before checkpoints were atomic
    (broken / "unet").mkdir(parents=True)
    (broken / "unet" / "config.json").write_text("{}")
    assert resolve_resume_checkpoint(str(out), "latest") == str(out / "checkpoint-6")
    with pytest.raises(ValueError, match="incomplete"):
        resolve_resume_checkpoint(str(out), str(broken))


# ---- 2/3. Several processes ---------------------------------------------------------------------------------------


def launch_two_processes(argv, port, script="train_pu_diffusion.py", timeout=600):
    """``accelerate launch`` of ``script`` (relative to the project root) on two CPU processes."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        os.path.join(ROOT, script),
        *argv,
    ]
    return subprocess.run(
        command, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=timeout
    )


def test_two_processes_train_exactly_the_steps_asked_and_resume_exactly(tmp_path, tiny_unet_config):
    """U = 20 with batch 4: 5 batches per epoch, 2 per process (accelerate drops the odd one). 7 steps asked → 7 trained,
    across epochs; a 2-process resume from checkpoint-3 (mid-epoch) ends with the straight run's weights."""
    data = write_imagefolder(tmp_path / "data", n_unlabeled=20, n_sensitive=6, size=8)
    flags = [
        "--train_batch_size",
        "4",
        "--sensitive_batch_size",
        "2",
        "--max_train_steps",
        "7",
        "--checkpointing_steps",
        "3",
        "--pu_estimator",
        "nn",
        "--beta",
        "0.5",
        "--ddp_timeout",
        "300",  # a rank left waiting fails with an error well within the subprocess's 600 s
    ]
    straight = tmp_path / "straight"
    result = launch_two_processes(small_data_args(straight, tiny_unet_config(), data, *flags), 29521)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MULTI_CPU" in result.stderr and "Num processes: 2" in result.stderr
    assert "optimization steps = 7" in result.stderr and "total = 12" in result.stderr  # 2 × (4 U + 2 S)
    assert log_steps(straight) == list(range(1, 8))
    assert (straight / "checkpoint-6" / "random_states_1.pkl").exists()
    assert json.loads((straight / "pu_run.json").read_text()).get("local_rank") is None

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "pu_run.json", resumed / "pu_run.json")
    shutil.copy(straight / "pu_outputs.json", resumed / "pu_outputs.json")  # what the run claimed
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = launch_two_processes(
        small_data_args(resumed, tiny_unet_config(), data, *flags, "--resume_from_checkpoint", "latest"), 29522
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(straight, resumed)
    assert log_steps(resumed)[-4:] == [4, 5, 6, 7]


def test_the_process_group_waits_ddp_timeout_seconds(tmp_path):
    """Two real processes: rank 1 never reaches the barrier; rank 0 gives up after --ddp_timeout (3 s), not after
    the other rank's 120 s or torch's default 30 minutes."""
    result = launch_two_processes(
        [str(tmp_path / "out"), "3"], 29531, script=os.path.join("tests", "ddp_timeout_probe.py"), timeout=300
    )
    waited = re.search(r"barrier timed out after ([0-9.]+) s", result.stdout)
    assert waited, result.stdout[-2000:] + result.stderr[-2000:]
    assert 2.5 <= float(waited.group(1)) < 30


def test_two_processes_with_less_than_a_batch_each_are_refused_before_writing(tmp_path, tiny_unet_config):
    data = write_imagefolder(tmp_path / "data", n_unlabeled=10, n_sensitive=4, size=8)
    out = tmp_path / "out"
    result = launch_two_processes(small_data_args(out, tiny_unet_config(), data), 29523)
    assert result.returncode != 0
    assert "No training step fits" in result.stderr and "--train_batch_size" in result.stderr
    assert not out.exists()


def test_nn_branch_follows_the_risk_reduced_over_processes():
    from pu_diffusion.losses import pu_risk

    loss = torch.tensor([5.0, 2.0])
    is_sensitive = torch.tensor([False, True])
    local = pu_risk(loss, is_sensitive, "pu", beta=0.5, estimator="nn")
    assert not local.nn_branch  # locally L_U⁻ − βL_S⁻ = 4 > 0
    reduced = pu_risk(loss, is_sensitive, "pu", beta=0.5, estimator="nn", reduce_for_branch=lambda value: value - 10)
    assert reduced.nn_branch and reduced.objective.item() == pytest.approx(-4.0)


# ---- 4/5. Resuming before the first checkpoint; overwriting ------------------------------------------------------


def test_resume_latest_before_any_checkpoint_starts_the_same_run_afresh(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--resume_from_checkpoint", "latest"))  # an empty output dir: fresh start
    assert log_steps(out) == list(range(1, 7))
    killed = tmp_path / "killed"  # a run killed before its first checkpoint: its flags and a partial log
    (killed / "logs").mkdir(parents=True)
    shutil.copy(out / "pu_run.json", killed / "pu_run.json")
    shutil.copy(out / "pu_outputs.json", killed / "pu_outputs.json")  # what the run claimed
    (killed / "logs" / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')
    run(tiny_args(killed, tiny_unet_config(), "--resume_from_checkpoint", "latest"))
    assert log_steps(killed) == list(range(1, 7))
    assert_same_weights(out, killed)


def test_overwrite_output_dir_leaves_nothing_of_the_old_run(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--validation_steps", "3", "--num_validation_images", "2"))
    assert (out / "pu_split.json").exists() and (out / "samples" / "step_3.png").exists()
    (out / "my_notes.txt").write_text("not the run's")
    data = write_imagefolder(tmp_path / "data", n_unlabeled=16, n_sensitive=6, size=8)
    run(
        tiny_args(
            out,
            tiny_unet_config(),
            "--train_data_dir",
            data,
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "100",
            "--overwrite_output_dir",
        )
    )
    assert not (out / "pu_split.json").exists() and not (out / "samples").exists()
    assert not list(out.glob("checkpoint-*"))
    assert log_steps(out) == [1, 2]
    assert (out / "my_notes.txt").exists()  # only what a run writes is removed


# ---- 10. Model size vs resolution ---------------------------------------------------------------------------------


def test_unet_sample_size_follows_the_training_resolution(tmp_path, tiny_unet_config):
    from diffusers import DiffusionPipeline

    out = tmp_path / "out"  # the tiny config says sample_size 8; train at 16
    run(tiny_args(out, tiny_unet_config(), "--resolution", "16", "--max_train_steps", "1"))
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert pipeline.unet.config.sample_size == 16
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 1)


# ---- 11/12. Bad input: refused before anything is written --------------------------------------------------------

BAD_INPUTS = [
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1"),
    (["--learning_rate=-1e-3"], "--learning_rate must be > 0"),
    (["--checkpointing_steps", "0"], "--checkpointing_steps must be at least 1"),
    (["--max_train_steps", "0"], "--max_train_steps must be at least 1"),
    (["--num_train_epochs", "0"], "--num_train_epochs must be at least 1"),
    (["--eval_batch_size", "0"], "--eval_batch_size must be at least 1"),
    (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be at least 1"),
    (["--num_inference_steps", "0"], "--num_inference_steps must be at least 1"),
    (["--ddp_timeout", "0"], "--ddp_timeout must be at least 1 second"),
    (["--resume_from_checkpoint", "nowhere/checkpoint-3"], "--resume_from_checkpoint 'nowhere/checkpoint-3' does not"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, tiny_unet_config, extra, message):
    out = tmp_path / "out"
    argv = tiny_args(out, tiny_unet_config())
    if "--num_train_epochs" in extra:  # epochs count only without --max_train_steps
        at = argv.index("--max_train_steps")
        argv = argv[:at] + argv[at + 2 :]
    with pytest.raises(ValueError, match=message):
        run(argv + extra)
    assert not out.exists()


def test_8bit_adam_without_bitsandbytes_is_refused_before_writing(tmp_path, tiny_unet_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--use_8bit_adam needs bitsandbytes"):
        run(tiny_args(out, tiny_unet_config(), "--use_8bit_adam"))
    assert not out.exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, tiny_unet_config):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run(tiny_args(path, tiny_unet_config()))
    assert path.read_text() == "x"


def test_resume_latest_never_clears_a_folder_that_holds_no_run_of_ours(tmp_path, tiny_unet_config):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    out = tmp_path / "downloaded"  # a pipeline folder, no pu_run.json, no checkpoint
    unet = UNet2DModel.from_config(UNet2DModel.load_config(tiny_unet_config()))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(out))
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="holds files that no pu-diffusion run wrote, under names this run writes"):
        run(tiny_args(out, tiny_unet_config(), "--resume_from_checkpoint", "latest"))
    assert sorted(os.listdir(out)) == before


def test_resume_with_another_number_of_processes_is_refused(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config()))
    marker = out / "checkpoint-6" / COMPLETE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "num_processes": 2}))
    with pytest.raises(ValueError, match="written by 2 process"):
        run(tiny_args(out, tiny_unet_config(), "--resume_from_checkpoint", "latest", "--max_train_steps", "9"))


def test_resume_from_an_older_checkpoint_replaces_the_abandoned_later_ones(tmp_path, tiny_unet_config):
    out = tmp_path / "out"
    run(tiny_args(out, tiny_unet_config(), "--checkpointing_steps", "2"))  # checkpoints 2, 4, 6
    run(
        tiny_args(
            out,
            tiny_unet_config(),
            "--checkpointing_steps",
            "2",
            "--checkpoints_total_limit",
            "2",
            "--resume_from_checkpoint",
            str(out / "checkpoint-2"),
        )
    )
    assert checkpoint_dirs(str(out)) == ["checkpoint-4", "checkpoint-6"]
    assert log_steps(out) == list(range(1, 7))
    stats = run(
        tiny_args(
            out,
            tiny_unet_config(),
            "--resume_from_checkpoint",
            "latest",
            "--max_train_steps",
            "5",
            "--checkpointing_steps",
            "2",
        )
    )
    assert stats["global_step"] == 6  # resumed past the target: nothing more is trained


def test_a_run_written_before_new_flags_existed_still_resumes(tmp_path):
    """pu_run.json of an older version lacks --builtin_unlabeled and --erasediff_*: at their neutral values the
    run is the same run; another value, or a flag of the run's own method, is still a different run."""
    import json

    import train_pu_diffusion
    from pu_diffusion.outputs import claim
    from pu_diffusion.run_dir import RUN_FILE, check_output_dir, public_config

    config = public_config(train_pu_diffusion.parse_args(["--output_dir", str(tmp_path)]))
    old = {k: v for k, v in config.items() if k != "builtin_unlabeled" and not k.startswith("erasediff_")}
    (tmp_path / RUN_FILE).write_text(json.dumps(old))
    claim(str(tmp_path), [RUN_FILE])  # as every run does before writing it
    check_output_dir(str(tmp_path), config, resuming=True, overwrite=False)
    other = public_config(train_pu_diffusion.parse_args(["--output_dir", str(tmp_path), "--erasediff_lambda", "1"]))
    check_output_dir(str(tmp_path), other, resuming=True, overwrite=False)  # not an erasediff run: flag unused
    clean = public_config(
        train_pu_diffusion.parse_args(["--output_dir", str(tmp_path), "--builtin_unlabeled", "clean"])
    )
    with pytest.raises(ValueError, match="--builtin_unlabeled"):
        check_output_dir(str(tmp_path), clean, resuming=True, overwrite=False)
    erase = public_config(
        train_pu_diffusion.parse_args(
            ["--output_dir", str(tmp_path), "--method", "erasediff", "--erasediff_lambda", "1"]
        )
    )
    with pytest.raises(ValueError, match="--erasediff_lambda"):
        check_output_dir(str(tmp_path), erase, resuming=True, overwrite=False)
