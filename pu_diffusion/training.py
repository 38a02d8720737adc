"""Training plumbing shared by both scripts: run bookkeeping, checkpoints, accelerate hooks, trackers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

RUN_FILE = "pu_run.json"
SECRET_ARGS = ("hub_token",)
# Flags that may differ between a run and its resumption without making it a different run.
RESUME_FREE_ARGS = ("resume_from_checkpoint", "overwrite_output_dir", "max_train_steps", "num_epochs",
                    "checkpointing_steps", "checkpoints_total_limit", "validation_steps", "report_to",
                    "logging_dir", "push_to_hub", "hub_model_id", "dataloader_num_workers", "skip_image_check",
                    "num_validation_images", "eval_batch_size", "num_inference_steps", "validation_prompts")

logger = logging.getLogger(__name__)


def validate_pu_flags(args) -> None:
    """Refuse bad flags shared by both scripts (β, batch sizes, hub token) before anything is loaded or written."""
    if not 0.0 <= args.beta < 1.0:
        raise ValueError(f"--beta must lie in [0, 1) (the fraction of U that is sensitive); got {args.beta}.")
    if args.sensitive_batch_size < 0:
        raise ValueError("--sensitive_batch_size must be >= 0.")
    if args.method in ("pu", "supervised") and args.sensitive_batch_size == 0:
        raise ValueError(f"--method {args.method} needs S samples in every batch: set --sensitive_batch_size >= 1 "
                         "(or use --method unsupervised).")
    if args.train_batch_size < 1:
        raise ValueError("--train_batch_size must be at least 1.")
    if args.push_to_hub and args.hub_token is not None and args.report_to in ("wandb", "all"):
        raise ValueError("--hub_token with --report_to wandb would expose the token: run `hf auth login` instead.")


def public_config(args) -> dict:
    """The run's flags as a JSON-able dict, with secrets (the hub token) left out."""
    config = {}
    for key, value in sorted(vars(args).items()):
        if key in SECRET_ARGS:
            continue
        config[key] = value if isinstance(value, (str, int, float, bool, type(None))) else (
            list(value) if isinstance(value, (list, tuple)) else str(value))
    return config


def checkpoint_dirs(output_dir: str) -> list[str]:
    """checkpoint-N folder names in ``output_dir``, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir)
             if name.startswith("checkpoint-") and name.split("-")[-1].isdigit()]
    return sorted(names, key=lambda name: int(name.split("-")[-1]))


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """Path of the checkpoint to resume from ("latest" picks the newest in ``output_dir``), or None."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_dirs(output_dir)
        return os.path.join(output_dir, found[-1]) if found else None
    if not os.path.isdir(resume_from_checkpoint):
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist: give a checkpoint-N "
                         "folder or 'latest'.")
    return resume_from_checkpoint


def check_output_dir(output_dir: str, config: dict, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix runs in one ``--output_dir``.

    Not resuming: an output dir that already holds a run (pu_run.json, checkpoints or a pipeline) is refused
    unless ``--overwrite_output_dir``. Resuming: the stored run's flags must match except RESUME_FREE_ARGS.
    """
    if not os.path.isdir(output_dir):
        return
    run_file = os.path.join(output_dir, RUN_FILE)
    holds_run = (os.path.exists(run_file) or bool(checkpoint_dirs(output_dir))
                 or os.path.exists(os.path.join(output_dir, "model_index.json")))
    if not holds_run:
        return
    if not resuming:
        if overwrite:
            return
        raise ValueError(f"--output_dir {output_dir!r} already holds a training run. Pass --resume_from_checkpoint "
                         "latest to continue it, --overwrite_output_dir to replace it, or choose another --output_dir.")
    if os.path.exists(run_file):
        with open(run_file) as handle:
            stored = json.load(handle)
        ignore = set(RESUME_FREE_ARGS) | {"output_dir"}
        differing = sorted(key for key in set(stored) | set(config)
                           if key not in ignore and stored.get(key) != config.get(key))
        if differing:
            details = ", ".join(f"--{key} {stored.get(key)!r} → {config.get(key)!r}" for key in differing[:6])
            raise ValueError(f"--output_dir {output_dir!r} holds a different run ({details}). Resume with the same "
                             "flags, or start the new run in another --output_dir.")


def prepare_output_dir(output_dir: str, config: dict, overwrite: bool) -> None:
    """Create ``output_dir`` and record the run's flags (removing old checkpoints when overwriting)."""
    if overwrite:
        for name in checkpoint_dirs(output_dir):
            shutil.rmtree(os.path.join(output_dir, name))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RUN_FILE), "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)


def rotate_checkpoints(output_dir: str, total_limit: int | None) -> None:
    """Before saving a new checkpoint, delete the oldest so at most ``total_limit`` remain afterwards."""
    if total_limit is None:
        return
    found = checkpoint_dirs(output_dir)
    if len(found) >= total_limit:
        for name in found[: len(found) - total_limit + 1]:
            logger.info("removing checkpoint %s (--checkpoints_total_limit %d)", name, total_limit)
            shutil.rmtree(os.path.join(output_dir, name))


def register_model_hooks(accelerator, model_cls, ema_model=None, subfolder: str = "unet") -> None:
    """Save/load the trained model (and its EMA) as diffusers safetensors folders inside accelerate checkpoints."""
    from diffusers.training_utils import EMAModel

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(output_dir, f"{subfolder}_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, subfolder),
                                                                safe_serialization=True)
                weights.pop()

    def load_model_hook(models, input_dir):
        if ema_model is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, f"{subfolder}_ema"), model_cls)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)
            del loaded
        for _ in range(len(models)):
            model = models.pop()
            loaded = model_cls.from_pretrained(input_dir, subfolder=subfolder)
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def make_trackers(report_to: str, logging_dir: str):
    """Trackers for ``Accelerator(log_with=...)``: always a JSON-lines log, plus ``--report_to`` if installed."""
    from accelerate.tracking import GeneralTracker
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    class JSONLinesTracker(GeneralTracker):
        """Writes every ``accelerator.log`` call as one JSON line to ``<logging_dir>/train_log.jsonl``."""

        name = "jsonl"
        requires_logging_directory = True
        main_process_only = True

        def __init__(self, run_name: str, logging_dir: str):
            super().__init__()
            self.run_name = run_name
            self.path = os.path.join(logging_dir, "train_log.jsonl")
            self.handle = None  # opened at the first write, so a refused run leaves no folder behind

        @property
        def tracker(self):
            if self.handle is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self.handle = open(self.path, "a")
            return self.handle

        def store_init_configuration(self, values: dict):
            self.tracker  # noqa: B018 - creates the folder
            with open(os.path.join(os.path.dirname(self.path), "hparams.json"), "w") as handle:
                json.dump(values, handle, indent=2, default=str)

        def log(self, values: dict, step: int | None = None, **kwargs):
            record = {"step": step, "time": time.time()}
            record.update({key: (value.item() if hasattr(value, "item") else value) for key, value in values.items()})
            self.tracker.write(json.dumps(record) + "\n")
            self.tracker.flush()

        def finish(self):
            if self.handle is not None:
                self.handle.close()

    trackers: list = [JSONLinesTracker("pu-diffusion", logging_dir)]
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    wanted = list(available) if report_to == "all" else ([] if report_to in (None, "none") else [report_to])
    for name in wanted:
        if available.get(name, True):
            trackers.append(name)
        elif report_to != "all":
            logger.warning("--report_to %s: %s is not installed; logging to %s/train_log.jsonl only "
                           "(pip install %s to enable it).", name, name, logging_dir, name)
    return trackers


def step_logs(accelerator, terms, lr_scheduler, ema_model=None) -> dict:
    """The PU terms of this step averaged over processes, plus learning rate (and EMA decay)."""
    import torch

    logs = terms.log_dict()
    names = list(logs)
    reduced = accelerator.reduce(torch.tensor([logs[name] for name in names], device=accelerator.device),
                                 reduction="mean")
    logs = dict(zip(names, reduced.tolist()))
    logs["lr"] = lr_scheduler.get_last_lr()[0]
    if ema_model is not None:
        logs["ema_decay"] = ema_model.cur_decay_value
    return logs


def progress_postfix(logs: dict) -> dict:
    """Short progress-bar fields: loss, U = L_U⁻, S = L_S⁻, Splus = L_S⁺, neg = L_U⁻ − βL_S⁻, nn = branch fired."""
    return {"loss": f"{logs['loss']:.4g}", "U": f"{logs['L_U-']:.3g}", "S": f"{logs['L_S-']:.3g}",
            "Splus": f"{logs['L_S+']:.2g}", "neg": f"{logs['neg_risk']:.3g}", "nn": int(logs["nn_fired"] > 0)}


def save_checkpoint(accelerator, output_dir: str, global_step: int, total_limit: int | None) -> str:
    """Rotate old checkpoints (main process) and save the accelerate state to ``checkpoint-<global_step>``."""
    if accelerator.is_main_process:
        rotate_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    path = os.path.join(output_dir, f"checkpoint-{global_step}")
    accelerator.save_state(path)
    return path
