"""The run's ``--output_dir``: which run it holds, refusing to mix runs, and starting over with --overwrite_output_dir.

A run records its flags in ``pu_run.json``. A second run into the same folder is refused unless it resumes
(with the same flags, except those in RESUME_FREE_ARGS) or overwrites (which first removes everything the old
run wrote, so no stale log, sample grid or split survives). What "the old run wrote" means is recorded, not
guessed: every run claims the names it writes in the folder's manifest first (see :mod:`pu_diffusion.outputs`),
so a user's own files are never removed or overwritten, and a folder where they hold a name the run writes is
refused with the list.
"""

from __future__ import annotations

import json
import os
import shutil

from .beta import DEFAULT_BETA
from .checkpoints import CHECKPOINT_PATTERN, checkpoint_dirs, is_checkpoint_name
from .cli import UsageError
from .outputs import MANIFEST, check_free, claim, is_owned, read_manifest, remove_owned, write_json_atomic

RUN_FILE = "pu_run.json"
SECRET_ARGS = ("hub_token",)
# Flags that may differ between a run and its resumption without making it a different run.
RESUME_FREE_ARGS = (
    "resume_from_checkpoint", "overwrite_output_dir", "max_train_steps", "num_train_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "validation_steps", "report_to", "logging_dir", "push_to_hub", "hub_model_id",
    "dataloader_num_workers", "skip_image_check", "num_validation_images", "num_final_images", "eval_batch_size",
    "num_inference_steps", "validation_prompts",
)  # fmt: skip

# Flags added after runs were written, at the value that trains what those runs trained: a pu_run.json without
# them still resumes. Method-specific flags are compared only when the run uses that method.
ADDED_ARGS_NEUTRAL = {
    "builtin_unlabeled": "contaminated",
    "builtin_contamination": None,
    "pu_sensitive_cap": None,
    "pu_min_timestep": 0,
    "erasediff_lambda": 0.1,
    "erasediff_eta": 0.1,
    "erasediff_inner_steps": 2,
    "erasediff_anchor_prompt": None,
    "esd_eta": 1.0,
    "esd_sampling_steps": 50,
    "esd_start_guidance": 3.0,
    "beta_estimator": "bbe",
    "beta_margin": 1.0,
    "beta_auto_point": "estimate",
    "erasediff_forget_noising": "gaussian",
    "objective": None,
    "pu_nn_gamma": 1.0,
    "flow_shift": 1.0,
    "sensitive_augment": 0.0,
    "pu_sensitive_cap_reference": "batch",
    "pu_sensitive_cap_fraction": None,
    "pu_filter_unlabeled": 0.0,
    "beta_score_repeats": 1,
    "beta_score_patience": 4,
    "pu_filter_untrusted_beta": "default",
    "pu_filter_min_beta": 0.0,
}
# How the U-vs-S CNNs of --beta auto and --pu_filter_unlabeled are trained; their neutral values above are what runs
# made before the flags used.
SCORE_FLAGS = ("beta_score_repeats", "beta_score_patience")
# Flags of a method added after that method's runs were cached: at their neutral value they are left out of its
# runs' keys too (unlike the method's older flags, which are part of those keys).
METHOD_ARGS_ADDED_LATER = ("erasediff_forget_noising",)
# Not flags: what a run derived from them and recorded (the β that --beta auto estimated). A resumed run reads
# them back instead of deriving them again, so they are never compared.
DERIVED_KEYS = ("beta_resolved",)
METHOD_ARG_PREFIXES = {"erasediff_": ("erasediff",), "esd_": ("esd-x", "esd-u")}


def neutral_flag(key: str, value, method) -> bool:
    """Whether flag ``key`` at ``value`` trains what runs made before the flag existed trained (ADDED_ARGS_NEUTRAL).

    A flag of the run's own method (``--erasediff_*`` for erasediff) always counts: it is part of that run.
    The one list of neutral values, used to resume older runs and to key the benchmark's cached runs.
    """
    own = any(key.startswith(prefix) and method in methods for prefix, methods in METHOD_ARG_PREFIXES.items())
    own = own and key not in METHOD_ARGS_ADDED_LATER
    return not own and key in ADDED_ARGS_NEUTRAL and ADDED_ARGS_NEUTRAL[key] == value


def _unused_by_method(key: str, method) -> bool:
    return any(key.startswith(prefix) and method not in methods for prefix, methods in METHOD_ARG_PREFIXES.items())


def _same_flag(key: str, stored: dict, config: dict) -> bool:
    if key not in stored and key in ADDED_ARGS_NEUTRAL:
        return config.get(key) == ADDED_ARGS_NEUTRAL[key]
    return stored.get(key) == config.get(key)


# Defaults train_pu_diffusion.py changed after runs were written: flag → (whether the stored flags hold the old
# default, the flag that asks for it, how that run trained). A run's hint to resume as it was trained.
CHANGED_DEFAULTS = {
    "pu_sensitive_cap": (
        lambda stored: stored.get("pu_sensitive_cap") is None and stored.get("pu_sensitive_cap_fraction") is None,
        "--pu_sensitive_cap 0",
        "without the S-loss cap (on by default since 2026-12-05)",
    ),
    "pu_filter_unlabeled": (
        lambda stored: not stored.get("pu_filter_unlabeled", ADDED_ARGS_NEUTRAL["pu_filter_unlabeled"]),
        "--pu_filter_unlabeled 0",
        "without the U filter (on by default since 2026-12-06)",
    ),
    "beta": (
        lambda stored: stored.get("beta") == DEFAULT_BETA,
        f"--beta {DEFAULT_BETA}",
        f"with β {DEFAULT_BETA} (train_pu_diffusion.py's default for --method pu is --beta auto since 2026-12-07)",
    ),
    "beta_auto_point": (
        lambda stored: (
            stored.get("beta") == "auto"
            and stored.get("beta_auto_point", ADDED_ARGS_NEUTRAL["beta_auto_point"]) == "estimate"
        ),
        "--beta_auto_point estimate",
        "with --beta auto's point estimate (train_pu_diffusion.py's default is the midpoint since 2026-12-07)",
    ),
}
# Flags another flag's value decides (flag → that flag, and whether it decides them for this stored run): no hint
# of their own when that flag's old default is restored. Without the cap its shape flags are refused; without the
# filter nothing is scored unless --beta auto, and the cut rule is moot.
DERIVED_FROM = {
    "pu_sensitive_cap_fraction": ("pu_sensitive_cap", lambda stored: True),
    "pu_sensitive_cap_reference": ("pu_sensitive_cap", lambda stored: True),
    "pu_filter_untrusted_beta": ("pu_filter_unlabeled", lambda stored: True),
    "pu_filter_min_beta": ("pu_filter_unlabeled", lambda stored: True),
    "beta_score_repeats": ("pu_filter_unlabeled", lambda stored: stored.get("beta") != "auto"),
    "beta_score_patience": ("pu_filter_unlabeled", lambda stored: stored.get("beta") != "auto"),
}


def resume_hint(stored: dict, config: dict, differing: list[str]) -> str:
    """How to resume a stored run whose flags differ only because it predates a flag or a default: the flags that
    ask for what it trained (a flag missing from ``stored`` at its ADDED_ARGS_NEUTRAL value, a CHANGED_DEFAULTS
    flag at its old default); "" when no differing flag is of that kind."""
    changed, added = {}, {}  # flag → what asks for the old value
    for key in differing:
        if key in CHANGED_DEFAULTS and config.get("method") == "pu" and CHANGED_DEFAULTS[key][0](stored):
            changed[key] = CHANGED_DEFAULTS[key][1]
        elif key not in stored and ADDED_ARGS_NEUTRAL.get(key) is not None:
            added[key] = f"--{key} {ADDED_ARGS_NEUTRAL[key]}"
    added = {
        key: flag
        for key, flag in added.items()
        if not (key in DERIVED_FROM and DERIVED_FROM[key][0] in changed and DERIVED_FROM[key][1](stored))
    }
    if not changed and not added:
        return ""
    how = [CHANGED_DEFAULTS[key][2] for key in changed] + (
        [f"before {', '.join(f'--{k}' for k in added)} existed"] if added else []
    )
    flags = " ".join([*changed.values(), *added.values()])
    return f" That run was trained {' and '.join(how)}: add {flags} to resume it as it was trained."


# Sub-folders other programs write into a run's folder, with manifests of their own (evaluate_pu_diffusion.py's
# default --output_dir): cleared with the run by --overwrite_output_dir, except the user's files in them.
NESTED_OUTPUTS = ("eval",)
# What the trackers write into --logging_dir: the JSON-lines log, its hparams, tensorboard's per-project folder.
LOG_OUTPUTS = ("train_log.jsonl", "hparams.json", "pu-diffusion", "pu-text-to-image")


def output_plan(output_dir: str, logging_dir: str, outputs=()) -> dict:
    """{folder: names} a run writes: ``outputs`` and pu_run.json in --output_dir, and its log folder.

    ``outputs``: the names the script writes besides pu_run.json, checkpoints (CHECKPOINT_PATTERN) and logs.
    A --logging_dir inside --output_dir is one name there (its first component, owned whole); the folder itself
    or one outside gets LOG_OUTPUTS, claimed in a manifest of its own.
    """
    names = (RUN_FILE, *outputs)
    log_folder = os.path.normpath(os.path.join(output_dir, logging_dir))
    relative = os.path.relpath(os.path.realpath(log_folder), os.path.realpath(output_dir))
    if relative == ".":
        return {output_dir: (*names, *LOG_OUTPUTS)}
    if relative.split(os.sep)[0] != os.pardir:
        return {output_dir: (*names, relative.split(os.sep)[0])}
    return {output_dir: names, log_folder: LOG_OUTPUTS}


def claim_outputs(output_dir: str, names) -> None:
    """Claim ``names`` in --output_dir right before writing them (refused if a user's file took one meanwhile).

    A run claims its state (pu_run.json, logs, checkpoints) when it starts, and each other output just before
    writing it, so the manifest lists what was written and never a name the run only might have written.
    """
    check_free(output_dir, names)
    claim(output_dir, names)


def public_config(args) -> dict:
    """The run's flags as a JSON-able dict, with secrets (the hub token) left out."""
    config = {}
    for key, value in sorted(vars(args).items()):
        if key in SECRET_ARGS:
            continue
        if isinstance(value, (list, tuple)):
            value = list(value)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value)
        config[key] = value
    return config


def holds_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a training run (its run file, a checkpoint or a saved pipeline)."""
    return os.path.isdir(output_dir) and (
        os.path.exists(os.path.join(output_dir, RUN_FILE))
        or bool(checkpoint_dirs(output_dir, complete_only=False))
        or os.path.exists(os.path.join(output_dir, "model_index.json"))
    )


def check_output_dir(
    output_dir: str, config: dict, resuming: bool, overwrite: bool, logging_dir: str = "logs", outputs=()
) -> None:
    """Refuse an output dir that cannot take this run, before anything is written.

    A path that exists but is not a folder is refused, and so is a folder where files no run of this project
    wrote hold names this run writes (``outputs``, pu_run.json, checkpoints, logs; with or without
    ``overwrite``: it removes only what runs wrote). Not resuming: a folder that holds a run is refused unless
    ``overwrite``. Resuming: the stored run's flags must match, except RESUME_FREE_ARGS.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir!r} is a file, not a folder: choose a folder path.")
    if os.path.isfile(os.path.join(output_dir, RUN_FILE)) and not os.path.isfile(os.path.join(output_dir, MANIFEST)):
        raise UsageError(
            f"--output_dir {output_dir!r} holds a run of an older pu-diffusion, which did not record the files it "
            f"wrote ({MANIFEST}), so this run cannot tell them from yours and leaves the folder alone: choose another "
            "--output_dir, or move what you want to keep out of it and delete it."
        )
    for folder, names in output_plan(output_dir, logging_dir, outputs).items():
        flag = "--output_dir" if folder == output_dir else "--logging_dir"
        check_free(folder, names, patterns=(CHECKPOINT_PATTERN,) if flag == "--output_dir" else (), flag=flag)
    if not holds_run(output_dir):
        return
    if not resuming:
        if overwrite:
            return
        raise UsageError(
            f"--output_dir {output_dir!r} already holds a training run. Pass --resume_from_checkpoint latest to "
            "continue it, --overwrite_output_dir to replace it, or choose another --output_dir."
        )
    run_file = os.path.join(output_dir, RUN_FILE)
    if os.path.exists(run_file):
        stored = read_run_file(output_dir)
        ignore = set(RESUME_FREE_ARGS) | set(DERIVED_KEYS) | {"output_dir"}
        differing = sorted(
            key
            for key in set(stored) | set(config)
            if key not in ignore
            and not _unused_by_method(key, config.get("method"))
            and not _same_flag(key, stored, config)
        )
        if differing:
            details = ", ".join(f"--{key} {stored.get(key)!r} → {config.get(key)!r}" for key in differing[:6])
            hint = resume_hint(stored, config, differing)
            raise UsageError(
                f"--output_dir {output_dir!r} holds a different run ({details}). Resume with the same flags, or "
                f"start the new run in another --output_dir.{hint}"
            )


def read_run_file(output_dir: str) -> dict:
    """The flags a run recorded in ``output_dir/pu_run.json``; a file that cannot be read is named, with the fix."""
    path = os.path.join(output_dir, RUN_FILE)
    try:
        with open(path) as handle:
            stored = json.load(handle)
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        return stored
    except ValueError as error:
        raise UsageError(
            f"{path} cannot be read ({str(error).splitlines()[0][:80]}): it records the run's flags, so the run "
            "cannot be resumed. Start it over with --overwrite_output_dir (this removes only what runs wrote), "
            "or choose another --output_dir."
        ) from None


def clean_interrupted_writes(output_dir: str) -> list[str]:
    """Remove what interrupted writes left (``*.tmp``, ``checkpoint-N.tmp|.old``): before a run writes anything.

    Only names the folder's manifest owns are touched. A save that failed for lack of space leaves its
    ``checkpoint-N.tmp``; removing it first gives the space back to the resumed run.
    """
    if not os.path.isdir(output_dir):
        return []
    manifest = read_manifest(output_dir)
    removed = []
    for name in sorted(os.listdir(output_dir)):
        interrupted = name.endswith(".tmp") or (
            is_checkpoint_name(name, include_temporary=True) and name.endswith(".old")
        )
        if interrupted and name != MANIFEST + ".tmp" and is_owned(name, manifest):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
    return removed


def start_run_dir(output_dir: str, config: dict, overwrite: bool, logging_dir: str = "logs") -> None:
    """Create ``output_dir`` (emptied of what runs wrote there when ``overwrite``) and record the run's flags.

    Order: remove (overwrite) or clean interrupted writes, claim the run's state (pu_run.json, checkpoints,
    logs), then write pu_run.json. The caller has checked that no user file holds a name the run writes
    (check_output_dir); the other outputs are claimed when written (claim_outputs).
    """
    plan = output_plan(output_dir, logging_dir)
    for folder in plan:
        if overwrite and folder == output_dir:
            remove_owned(folder, nested=NESTED_OUTPUTS)
        elif overwrite:  # a log folder outside --output_dir may hold other runs' files: only the log's names go
            remove_owned(folder, only=LOG_OUTPUTS)
        else:
            clean_interrupted_writes(folder)
    for folder, names in plan.items():
        claim(folder, names, patterns=(CHECKPOINT_PATTERN,) if folder == output_dir else ())
    write_json_atomic(os.path.join(output_dir, RUN_FILE), config, sort_keys=True)
