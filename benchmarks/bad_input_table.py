#!/usr/bin/env python
"""Hostile input to all six CLIs, as a new user would type it: what each prints, its exit code, what it left on disk.

    python benchmarks/bad_input_table.py                       # writes benchmarks/results/bad_input.json
    python benchmarks/bad_input_table.py --report_only --compare benchmarks/results/bad_input_before_4ab6772.json
    python benchmarks/bad_input_table.py --project_root OLD --output_json old.json   # the same rows, other code

Every row runs the real program in a subprocess, in a fresh scratch folder that holds the user's own files
where the row plants them. The fixtures (tiny models, data folders) are built once, offline; after each row
they must be byte-identical, and so must every planted file. "left" lists what the row created in the scratch
folder. With --compare, the table shows the message of another run of the rows (e.g. the code before a change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "bad_input.json")
DOC = os.path.join(ROOT, "docs", "bad_input.md")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

UNCOND = "train_pu_diffusion.py"
T2I = "train_pu_text_to_image.py"
EVAL = "evaluate_pu_diffusion.py"
AUDIT = "audit_pu_diffusion.py"
BETA = "estimate_pu_beta.py"
EXPORT = "export_pu_split.py"

TINY = (
    "--model_config_name_or_path {config} --resolution 8 --train_batch_size 8 --sensitive_batch_size 4 "
    "--max_train_steps 2 --checkpointing_steps 1 --num_final_images 0 --report_to none --train_data_dir {data}"
)
SD = (
    "--pretrained_model_name_or_path {sd} --train_data_dir {captioned} --resolution 16 --train_batch_size 2 "
    "--sensitive_batch_size 1 --max_train_steps 1 --report_to none"
)
EVALUATE = "--pipeline {pipe} --num_samples 4 --num_inference_steps 2"
CLASSIFIER = "--classifier_name_or_path {vit} --sensitive_labels face --test_data_dir {test}"
SPLIT = "--preset builtin-mnist-even --n_unlabeled_normal 6 --n_unlabeled_sensitive 2 --n_sensitive 2 --n_test 3"

USER_FILES = {  # what a row plants (relative to the scratch folder) before it runs
    "project": ["out/README.md", "out/samples.png", "out/samples/mine.png", "out/eval/notes.txt", "out/logs/app.log"],
    "photos": ["out/photos/holiday.jpg"],
    "readme": ["out/README.md"],
    "metrics": ["out/metrics.json"],
    "audit_csv": ["out/audit.csv"],
    "beta_json": ["beta.json"],
    "export_target": ["out/my_images/a.png"],
    "plain_file": ["out"],
    "pipe_readme": [],
    "notes_file": ["notes.txt"],
}

# (program, what the row tries, arguments, user files planted)
ROWS = [
    # ---- train_pu_diffusion.py: numbers
    (UNCOND, "learning rate inf", TINY + " --output_dir out --learning_rate inf", None),
    (UNCOND, "learning rate nan", TINY + " --output_dir out --learning_rate nan", None),
    (UNCOND, "learning rate -1", TINY + " --output_dir out --learning_rate=-1", None),
    (UNCOND, "learning rate 0", TINY + " --output_dir out --learning_rate 0", None),
    (UNCOND, "learning rate 1e30 (diverges)", TINY + " --output_dir out --learning_rate 1e30 --max_grad_norm 0 --lr_warmup_steps 0 --max_train_steps 4", None),
    (UNCOND, "learning rate 'fast'", TINY + " --output_dir out --learning_rate fast", None),
    (UNCOND, "adam β₁ 1.5", TINY + " --output_dir out --adam_beta1 1.5", None),
    (UNCOND, "adam β₁ nan", TINY + " --output_dir out --adam_beta1 nan", None),
    (UNCOND, "adam β₂ inf", TINY + " --output_dir out --adam_beta2 inf", None),
    (UNCOND, "adam ε nan", TINY + " --output_dir out --adam_epsilon nan", None),
    (UNCOND, "adam ε 0", TINY + " --output_dir out --adam_epsilon 0", None),
    (UNCOND, "weight decay inf", TINY + " --output_dir out --adam_weight_decay inf", None),
    (UNCOND, "weight decay -1", TINY + " --output_dir out --adam_weight_decay=-1", None),
    (UNCOND, "EMA decay 2", TINY + " --output_dir out --use_ema --ema_max_decay 2", None),
    (UNCOND, "EMA decay nan", TINY + " --output_dir out --use_ema --ema_max_decay nan", None),
    (UNCOND, "EMA inv γ inf", TINY + " --output_dir out --use_ema --ema_inv_gamma inf", None),
    (UNCOND, "EMA power nan", TINY + " --output_dir out --use_ema --ema_power nan", None),
    (UNCOND, "EMA power 0", TINY + " --output_dir out --use_ema --ema_power 0", None),
    (UNCOND, "max grad norm -1", TINY + " --output_dir out --max_grad_norm=-1", None),
    (UNCOND, "max grad norm nan", TINY + " --output_dir out --max_grad_norm nan", None),
    (UNCOND, "temperature 0", TINY + " --output_dir out --loss_temperature 0", None),
    (UNCOND, "temperature inf", TINY + " --output_dir out --loss_temperature inf", None),
    (UNCOND, "β 1.5", TINY + " --output_dir out --beta 1.5", None),
    (UNCOND, "β nan", TINY + " --output_dir out --beta nan", None),
    (UNCOND, "β 'half'", TINY + " --output_dir out --beta half", None),
    (UNCOND, "β margin inf", TINY + " --output_dir out --beta auto --beta_margin inf", None),
    (UNCOND, "β margin 0", TINY + " --output_dir out --beta auto --beta_margin 0", None),
    (UNCOND, "β auto with unsupervised", TINY + " --output_dir out --beta auto --method unsupervised", None),
    (UNCOND, "S cap nan", TINY + " --output_dir out --pu_sensitive_cap nan", None),
    (UNCOND, "U filter with unsupervised", TINY + " --output_dir out --method unsupervised --pu_filter_unlabeled 1", None),
    (UNCOND, "U filter 11", TINY + " --output_dir out --pu_filter_unlabeled 11", None),
    (UNCOND, "U filter -1", TINY + " --output_dir out --pu_filter_unlabeled=-1", None),
    (UNCOND, "U filter nan", TINY + " --output_dir out --pu_filter_unlabeled nan", None),
    (UNCOND, "score repeats 0", TINY + " --output_dir out --beta auto --beta_score_repeats 0", None),
    (UNCOND, "score patience, nothing scored", TINY + " --output_dir out --beta 0.1 --pu_filter_unlabeled 0 "
     "--beta_score_patience 10", None),
    (UNCOND, "untrusted cut, no filter", TINY + " --output_dir out --beta auto --pu_filter_unlabeled 0 "
     "--pu_filter_untrusted_beta estimate", None),
    (UNCOND, "U filter floor, no filter", TINY + " --output_dir out --pu_filter_unlabeled 0 --pu_filter_min_beta 0.1",
     None),
    (UNCOND, "U filter floor 1", TINY + " --output_dir out --pu_filter_min_beta 1", None),
    (UNCOND, "U filter floor nan", TINY + " --output_dir out --pu_filter_min_beta nan", None),
    (UNCOND, "EraseDiff λ nan", TINY + " --output_dir out --method erasediff --erasediff_lambda nan", None),
    (UNCOND, "EraseDiff η -1", TINY + " --output_dir out --method erasediff --erasediff_eta=-1", None),
    (UNCOND, "contamination 0.9", "--output_dir out --builtin_contamination 0.9", None),
    (UNCOND, "contamination nan", "--output_dir out --builtin_contamination nan", None),
    (UNCOND, "contamination with own data", TINY + " --output_dir out --builtin_contamination 0.1", None),
    (UNCOND, "t₀ -1", TINY + " --output_dir out --pu_min_timestep=-1", None),
    (UNCOND, "t₀ 5000", TINY + " --output_dir out --pu_min_timestep 5000", None),
    (UNCOND, "accumulation 0", TINY + " --output_dir out --gradient_accumulation_steps 0", None),
    (UNCOND, "batch 0", TINY + " --output_dir out --train_batch_size 0", None),
    (UNCOND, "S batch -1", TINY + " --output_dir out --sensitive_batch_size=-1", None),
    (UNCOND, "resolution 4", TINY + " --output_dir out --resolution 4", None),
    (UNCOND, "resolution 9 (this UNet needs ×2)", TINY + " --output_dir out --resolution 9", None),
    (UNCOND, "max steps 0", TINY + " --output_dir out --max_train_steps 0", None),
    (UNCOND, "checkpointing steps 0", TINY + " --output_dir out --checkpointing_steps 0", None),
    (UNCOND, "checkpoint limit 0", TINY + " --output_dir out --checkpoints_total_limit 0", None),
    (UNCOND, "workers -1", TINY + " --output_dir out --dataloader_num_workers=-1", None),
    # ---- train_pu_diffusion.py: files and folders
    (UNCOND, "output dir is a file", TINY + " --output_dir out", "plain_file"),
    (UNCOND, "output dir = the data", TINY + " --output_dir {data} --overwrite_output_dir", None),
    (UNCOND, "output dir inside the data", TINY + " --output_dir {data}/unlabeled/out", None),
    (UNCOND, "output dir holds the config", TINY + " --output_dir {configdir}", None),
    (UNCOND, "output dir = base model", "--pretrained_model_name_or_path {pipe} --output_dir {pipe} --resolution 8", None),
    (UNCOND, "user's README/samples, plain run", TINY + " --output_dir out", "project"),
    (UNCOND, "user's README/samples, overwrite", TINY + " --output_dir out --overwrite_output_dir", "project"),
    (UNCOND, "logging dir holds photos, overwrite", TINY + " --output_dir out --logging_dir photos --overwrite_output_dir", "photos"),
    (UNCOND, "output below a file", TINY + " --output_dir out/sub", "plain_file"),
    (UNCOND, "resume from a missing checkpoint", TINY + " --output_dir out --resume_from_checkpoint nowhere/checkpoint-3", None),
    (UNCOND, "resume: damaged pu_run.json", TINY + " --output_dir run --resume_from_checkpoint latest", "damaged_run_file"),
    (UNCOND, "resume: newest checkpoint truncated", TINY + " --output_dir run --resume_from_checkpoint run/checkpoint-2", "truncated_checkpoint"),
    (UNCOND, "resume: damaged optimizer.bin", TINY + " --output_dir run --resume_from_checkpoint run/checkpoint-2", "damaged_optimizer"),
    (UNCOND, "resume: damaged pu_checkpoint.json", TINY + " --output_dir run --resume_from_checkpoint run/checkpoint-2", "damaged_marker"),
    (UNCOND, "resume with other flags", TINY + " --output_dir run --resume_from_checkpoint latest --beta 0.3", "copy_run"),
    (UNCOND, "a second run into a run", TINY + " --output_dir run", "copy_run"),
    (UNCOND, "data folder missing", TINY.replace("{data}", "nowhere") + " --output_dir out", None),
    (UNCOND, "data folder empty", TINY.replace("{data}", "empty") + " --output_dir out", "empty_folder"),
    (UNCOND, "metadata.jsonl leaves the folder", TINY.replace("{data}", "escape") + " --output_dir out", "escaping_metadata"),
    (UNCOND, "truncated image in the data", TINY.replace("{data}", "broken") + " --output_dir out", "broken_data"),
    (UNCOND, "config file missing", TINY.replace("{config}", "nowhere.json") + " --output_dir out", None),
    (UNCOND, "both data flags", TINY + " --output_dir out --dataset_name mnist", None),
    (UNCOND, "logging dir above the output", TINY + " --output_dir runs/b --logging_dir .. --overwrite_output_dir", None),
    (UNCOND, "logging dir is a file", TINY + " --output_dir out --logging_dir ../notes.txt", "notes_file"),
    (UNCOND, "latest, newest optimizer.bin damaged", TINY + " --output_dir run --resume_from_checkpoint latest", "damaged_optimizer"),
    # ---- train_pu_text_to_image.py
    (T2I, "empty-prompt share nan", SD + " --output_dir out --proportion_empty_prompts nan", None),
    (T2I, "empty-prompt share 1.5", SD + " --output_dir out --proportion_empty_prompts 1.5", None),
    (T2I, "empty-prompt share -0.1", SD + " --output_dir out --proportion_empty_prompts=-0.1", None),
    (T2I, "removed flag --pu_guidance_scale", SD + " --output_dir out --pu_guidance_scale 3", None),
    (T2I, "LoRA rank 0", SD + " --output_dir out --rank 0", None),
    (T2I, "LoRA rank -3", SD + " --output_dir out --rank=-3", None),
    (T2I, "LoRA with EMA", SD + " --output_dir out --rank 4 --use_ema", None),
    (T2I, "resolution 10", SD + " --output_dir out --resolution 10", None),
    (T2I, "resolution 4", SD + " --output_dir out --resolution 4", None),
    (T2I, "guidance scale inf", SD + " --output_dir out --guidance_scale inf", None),
    (T2I, "ESD η nan", SD + " --output_dir out --method esd-x --esd_eta nan", None),
    (T2I, "ESD start guidance inf", SD + " --output_dir out --method esd-u --esd_start_guidance inf", None),
    (T2I, "ESD sampling steps 0", SD + " --output_dir out --method esd-x --esd_sampling_steps 0", None),
    (T2I, "learning rate inf", SD + " --output_dir out --learning_rate inf", None),
    (T2I, "no data flag", "--pretrained_model_name_or_path {sd} --output_dir out", None),
    (T2I, "base model missing", SD.replace("{sd}", "nowhere") + " --output_dir out", None),
    (T2I, "cache latents without centre crop", SD + " --output_dir out --cache_latents", None),
    (T2I, "output dir = base model, overwrite", SD + " --output_dir {sd} --overwrite_output_dir", None),
    (T2I, "output dir inside the data", SD + " --output_dir {captioned}/out", None),
    (T2I, "user's README, plain run", SD + " --output_dir out", "readme"),
    # ---- evaluate_pu_diffusion.py
    (EVAL, "0 samples", EVALUATE + " --num_samples 0", None),
    (EVAL, "batch size 0", EVALUATE + " --batch_size 0", None),
    (EVAL, "0 inference steps", EVALUATE + " --num_inference_steps 0", None),
    (EVAL, "pipeline missing", "--pipeline nowhere", None),
    (EVAL, "pipeline is a data folder", "--pipeline {data}", None),
    (EVAL, "feature space 'pixels'", EVALUATE + " --fid_features pixels", None),
    (EVAL, "classifier without labels", EVALUATE + " --classifier_name_or_path {vit}", None),
    (EVAL, "output dir = pipeline", EVALUATE + " --output_dir {pipe}", None),
    (EVAL, "output dir = test images", EVALUATE + " " + CLASSIFIER + " --output_dir {test}", None),
    (EVAL, "user's metrics.json in the way", EVALUATE + " " + CLASSIFIER + " --output_dir out", "metrics"),
    (EVAL, "model card of a hub id", "--pipeline org/model --update_model_card", None),
    (EVAL, "model card not written by a run", EVALUATE + " " + CLASSIFIER + " --output_dir out --update_model_card", "pipe_readme"),
    (EVAL, "unknown sensitive label", EVALUATE + " --classifier_name_or_path {vit} --sensitive_labels nose --test_data_dir {test} --output_dir out", None),
    # ---- audit_pu_diffusion.py
    (AUDIT, "top-k 0", "--pipeline {pipe} --image_folder {test} --top_k 0", None),
    (AUDIT, "0 draws", "--pipeline {pipe} --image_folder {test} --num_draws 0", None),
    (AUDIT, "timestep range 5 2", "--pipeline {pipe} --image_folder {test} --timestep_range 5 2", None),
    (AUDIT, "β nan", "--pipeline {pipe} --image_folder {test} --beta nan", None),
    (AUDIT, "β 1.5", "--pipeline {pipe} --image_folder {test} --beta 1.5", None),
    (AUDIT, "pipeline missing", "--pipeline nowhere --image_folder {test}", None),
    (AUDIT, "pipeline without unet/", "--pipeline {data} --image_folder {test}", None),
    (AUDIT, "output dir = pipeline", "--pipeline {pipe} --image_folder {test} --output_dir {pipe}", None),
    (AUDIT, "output dir inside the images", "--pipeline {pipe} --image_folder {test} --output_dir {test}/audit", None),
    (AUDIT, "user's audit.csv in the way", "--pipeline {pipe} --image_folder {test} --output_dir out", "audit_csv"),
    (AUDIT, "truncated image in the folder", "--pipeline {pipe} --image_folder broken/unlabeled --output_dir out", "broken_data"),
    (AUDIT, "image folder empty", "--pipeline {pipe} --image_folder empty --output_dir out", "empty_folder"),
    # ---- estimate_pu_beta.py
    (BETA, "1 fold", "--train_data_dir {planted} --resolution 8 --folds 1", None),
    (BETA, "9 folds", "--train_data_dir {planted} --resolution 8 --folds 9", None),
    (BETA, "0 repeats", "--train_data_dir {planted} --resolution 8 --repeats 0", None),
    (BETA, "patience 'ten'", "--train_data_dir {planted} --resolution 8 --patience ten", None),
    (BETA, "resolution 4", "--train_data_dir {planted} --resolution 4", None),
    (BETA, "output file is a folder", "--train_data_dir {planted} --resolution 8 --output_file {data}", None),
    (BETA, "user's file as output", "--train_data_dir {planted} --resolution 8 --output_file beta.json", "beta_json"),
    (BETA, "output file inside the data", "--train_data_dir {planted} --resolution 8 --output_file {planted}/b.json", None),
    (BETA, "data folder missing", "--train_data_dir nowhere --resolution 8", None),
    (BETA, "no S images", "--train_data_dir {test} --resolution 8", None),
    # ---- export_pu_split.py
    (EXPORT, "n_test -5", SPLIT + " --output_dir out --n_test -5", None),
    (EXPORT, "n_sensitive 0", SPLIT + " --output_dir out --n_sensitive 0", None),
    (EXPORT, "n_unlabeled_normal -1", SPLIT + " --output_dir out --n_unlabeled_normal -1", None),
    (EXPORT, "counts larger than the data", SPLIT + " --output_dir out --n_test 100000", None),
    (EXPORT, "non-empty target", SPLIT + " --output_dir out", "export_target"),
    (EXPORT, "target is a file", SPLIT + " --output_dir out", "plain_file"),
    (EXPORT, "unknown preset", "--preset nope --output_dir out", None),
    (EXPORT, "target inside the data", "--preset mnist-even --train_data_dir {data} --output_dir {data}/split", None),
]  # fmt: skip


def file_hashes(root: str) -> dict:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def build_fixtures(folder: str, python: str) -> None:
    """Tiny models and data, written once by the current project's test helpers (offline)."""
    code = f"""
import os
os.chdir({folder!r})
from pu_diffusion.testing_utils import build_tiny_sd, write_captioned_folder, write_imagefolder, write_unet_config
from test_evaluation import save_tiny_ddpm, save_tiny_vit
from test_beta_and_audit import write_planted_folder
write_unet_config("config", 1)
write_imagefolder("data", n_unlabeled=16, n_sensitive=6, size=8)
write_captioned_folder("captioned")
build_tiny_sd("sd")
save_tiny_ddpm("pipe", channels=3)
save_tiny_vit("vit")
write_imagefolder("test", n_unlabeled=4, n_sensitive=0, size=8)
write_planted_folder("planted", n_dark=16, n_bright_in_u=2, n_sensitive=6)
"""
    subprocess.run(
        [python, "-c", code], check=True, env={**os.environ, **ENV, "PYTHONPATH": os.path.join(ROOT, "tests")}
    )


def prepare(scratch: str, fixtures: str, setup: str | None) -> dict:
    """Plant the row's user files (or damaged state) in ``scratch``; returns {relative path: sha256} planted."""
    for relative in USER_FILES.get(setup, []):
        path = os.path.join(scratch, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(f"the user's own {relative}\n")
    if setup == "empty_folder":
        os.makedirs(os.path.join(scratch, "empty", "unlabeled"))
    if setup == "escaping_metadata":
        shutil.copytree(os.path.join(fixtures, "data"), os.path.join(scratch, "escape"))
        with open(os.path.join(scratch, "escape", "metadata.jsonl"), "w") as handle:
            handle.write(json.dumps({"file_name": "../secret.png", "label": "unlabeled"}) + "\n")
    if setup == "broken_data":
        shutil.copytree(os.path.join(fixtures, "data"), os.path.join(scratch, "broken"))
        victim = os.path.join(
            scratch, "broken", "unlabeled", sorted(os.listdir(os.path.join(scratch, "broken", "unlabeled")))[0]
        )
        with open(victim, "r+b") as handle:
            handle.truncate(40)
    if setup in ("damaged_run_file", "truncated_checkpoint", "damaged_optimizer", "damaged_marker", "copy_run"):
        shutil.copytree(os.path.join(fixtures, "run_template"), os.path.join(scratch, "run"))
        damaged = {
            "damaged_run_file": "pu_run.json",
            "truncated_checkpoint": "checkpoint-2/unet/diffusion_pytorch_model.safetensors",
            "damaged_optimizer": "checkpoint-2/optimizer.bin",
            "damaged_marker": "checkpoint-2/pu_checkpoint.json",
        }.get(setup)
        if damaged:
            path = os.path.join(scratch, "run", damaged)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
    # What must stay byte-identical: the user's files and data copies, not the copied run's own files.
    return {path: digest for path, digest in file_hashes(scratch).items() if not path.startswith("run" + os.sep)}


def run_row(program, label, argv, setup, fixtures, project_root, python, timeout) -> dict:
    scratch = tempfile.mkdtemp(prefix="row-")
    try:
        planted = prepare(scratch, fixtures, setup)
        present = set(file_hashes(scratch))  # planted files and the copied run's: not what the row created
        fixtures_before = file_hashes(fixtures)
        places = {
            name: os.path.join(fixtures, name)
            for name in ("config", "data", "captioned", "sd", "pipe", "vit", "test", "planted")
        }
        places.update(config=os.path.join(fixtures, "config", "config.json"), configdir=places["config"])
        arguments = argv.format(**places).split()
        command = (
            [python, *program.split()] if program.startswith("-m") else [python, os.path.join(project_root, program)]
        )
        started = time.time()
        try:
            result = subprocess.run(
                command + arguments,
                cwd=scratch,
                env={**os.environ, **ENV, "PYTHONPATH": project_root},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            code, stderr = result.returncode, result.stderr
        except subprocess.TimeoutExpired:
            code, stderr = "timeout", ""
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        error_lines = [line for line in lines if ": error: " in line]
        warnings = [line for line in lines if "WARNING" in line]  # a row that goes on says why (e.g. a fallback)
        message = (error_lines or warnings or lines or [""])[-1]
        after = file_hashes(scratch)
        changed = sorted(path for path, digest in planted.items() if after.get(path) != digest)
        created = sorted({path.split(os.sep)[0] for path in after if path not in present})
        return {
            "program": program.replace("-m ", "python -m ").replace(".py", ".py"),
            "input": label,
            "argv": argv,
            "setup": setup,
            "exit_code": code,
            "message": message.replace(scratch + os.sep, "")
            .replace(fixtures + os.sep, "<fixtures>/")
            .replace(scratch, "."),
            "traceback": "Traceback (most recent call last)" in stderr,
            "user_files_changed": changed,
            "fixtures_changed": sorted(
                path for path, digest in file_hashes(fixtures).items() if fixtures_before.get(path) != digest
            )
            + sorted(set(fixtures_before) - set(file_hashes(fixtures))),
            "created": created,
            "seconds": round(time.time() - started, 1),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train_template(fixtures: str, project_root: str, python: str) -> None:
    argv = TINY.format(config=os.path.join(fixtures, "config", "config.json"), data=os.path.join(fixtures, "data"))
    subprocess.run(
        [
            python,
            os.path.join(project_root, UNCOND),
            *argv.split(),
            "--output_dir",
            os.path.join(fixtures, "run_template"),
        ],
        check=True,
        env={**os.environ, **ENV, "PYTHONPATH": project_root},
        capture_output=True,
    )


def write_doc(rows: list, path: str, compare: list | None) -> None:
    before = {(row["program"], row["input"]): row for row in compare or []}
    lines = [
        "# Bad input to every CLI: what it says, its exit code, what it leaves",
        "",
        "Generated by `python benchmarks/bad_input_table.py` (raw rows: `benchmarks/results/bad_input.json`). Each row",
        "runs the real program in a fresh folder holding the user's own files where the row plants them (see",
        "`USER_FILES` in the script). *Left* lists what the row created there; *user files* says whether every planted",
        "file, and every fixture (base model, data folders), is byte-identical afterwards.",
        ""
        if not compare
        else "*Before* is the same row on the code before the output-folder safety change (commit 4ab6772).",
        "",
        "| # | program | input | exit | message (last `error:` line) | traceback | user files | left |"
        + (" before: exit, message |" if compare else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if compare else ""),
    ]
    for number, row in enumerate(rows, 1):
        intact = (
            "intact"
            if not row["user_files_changed"] and not row["fixtures_changed"]
            else ("CHANGED: " + ", ".join(row["user_files_changed"] + row["fixtures_changed"])[:120])
        )
        cells = [
            str(number),
            row["program"],
            row["input"],
            str(row["exit_code"]),
            row["message"][:260].replace("|", "\\|"),
            "yes" if row["traceback"] else "no",
            intact,
            ", ".join(row["created"]) or "nothing",
        ]
        if compare:
            old = before.get((row["program"], row["input"]))
            cells.append(
                "—"
                if old is None
                else f"{old['exit_code']}, {old['message'][:160]}".replace("|", "\\|")
                + (" (traceback)" if old["traceback"] else "")
                + (
                    "; CHANGED " + ", ".join(old["user_files_changed"] + old["fixtures_changed"])[:80]
                    if old["user_files_changed"] or old["fixtures_changed"]
                    else ""
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--project_root", default=ROOT, help="The code whose CLIs are run (default: this checkout).")
    parser.add_argument("--output_json", default=RESULT)
    parser.add_argument("--compare", default=None, help="JSON of another run of the rows, shown beside each row.")
    parser.add_argument("--report_only", action="store_true", help="Rebuild docs/bad_input.md from --output_json.")
    parser.add_argument("--timeout", type=int, default=300, help="Seconds a row may run.")
    parser.add_argument("--only", type=int, nargs="+", default=None, help="Rerun these rows (1-based) into the JSON.")
    args = parser.parse_args()
    compare = json.load(open(args.compare))["rows"] if args.compare else None
    if not args.report_only:
        python = sys.executable
        fixtures = tempfile.mkdtemp(prefix="bad-input-fixtures-")
        build_fixtures(fixtures, python)
        train_template(fixtures, args.project_root, python)
        with open(os.path.join(fixtures, "pipe", "README.md"), "w") as handle:
            handle.write("the user's notes about this pipeline\n")
        pristine = fixtures + "-pristine"
        shutil.copytree(fixtures, pristine)
        # --only: the other rows come from the JSON, matched by program and input (rows may have been inserted)
        kept = {(r["program"], r["input"]): r for r in json.load(open(args.output_json))["rows"]} if args.only else {}
        rows = []
        for number, (program, label, argv, setup) in enumerate(ROWS, 1):
            if args.only and number not in args.only:
                if (program, label) not in kept:
                    sys.exit(
                        f"error: row {number} ({program}, {label!r}) has no result in {args.output_json}: add it to --only."
                    )
                rows.append(kept[(program, label)])
                continue
            row = run_row(program, label, argv, setup, fixtures, args.project_root, python, args.timeout)
            if row["fixtures_changed"]:  # the row destroyed an input: restore it for the rows after it
                shutil.rmtree(fixtures)
                shutil.copytree(pristine, fixtures)
            rows.append(row)
            print(
                f"{number:3d} {row['program']:28s} {label:40s} exit {row['exit_code']}  {row['message'][:110]}",
                flush=True,
            )
        result = {"python": platform.python_version(), "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as handle:
            json.dump(result, handle, indent=1)
        shutil.rmtree(fixtures, ignore_errors=True)
        shutil.rmtree(pristine, ignore_errors=True)
    rows = json.load(open(args.output_json))["rows"]
    if os.path.abspath(args.output_json) == os.path.abspath(RESULT):
        write_doc(rows, DOC, compare)
    print(
        f"{len(rows)} rows; {sum(r['traceback'] for r in rows)} tracebacks; "
        f"{sum(bool(r['user_files_changed'] or r['fixtures_changed']) for r in rows)} rows changed user files"
    )


if __name__ == "__main__":
    main()
