"""Trackers and step logs: a JSON-lines log that is always on, ``--report_to`` trackers, one name per PU term."""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from accelerate.tracking import GeneralTracker
from accelerate.utils import is_tensorboard_available, is_wandb_available

LOG_FILE = "train_log.jsonl"
PROGRESS_KEYS = ("risk", "L_U-", "L_S-", "L_S+", "neg_risk", "nn_branch")

logger = logging.getLogger(__name__)


class JSONLinesTracker(GeneralTracker):
    """Writes every ``accelerator.log`` call as one JSON line to ``<logging_dir>/train_log.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.run_name = run_name
        self.path = os.path.join(logging_dir, LOG_FILE)
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


def make_trackers(report_to: str, logging_dir: str):
    """Trackers for ``Accelerator(log_with=...)``: always a JSON-lines log, plus ``--report_to`` if installed."""
    trackers: list = [JSONLinesTracker("pu-diffusion", logging_dir)]
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    wanted = list(available) if report_to == "all" else ([] if report_to in (None, "none") else [report_to])
    for name in wanted:
        if available.get(name, True):
            trackers.append(name)
        elif report_to != "all":
            logger.warning(
                "--report_to %s: %s is not installed; logging to %s/train_log.jsonl only "
                "(pip install %s to enable it).",
                name,
                name,
                logging_dir,
                name,
            )
    return trackers


def step_logs(accelerator, terms, lr_scheduler, ema_model=None) -> dict:
    """The PU terms of this step averaged over processes, plus learning rate (and EMA decay). The per-band S
    counts and sums ("S n …", "S sum …") add up over processes and "S max …" takes the maximum."""
    logs = terms.log_dict()
    names = list(logs)
    values = accelerator.gather(torch.tensor([[logs[name] for name in names]], device=accelerator.device))
    reduce = {"S max ": torch.max, "S n": torch.sum, "S sum ": torch.sum}
    reduced = [
        next((how for prefix, how in reduce.items() if name.startswith(prefix)), torch.mean)(values[:, i])
        for i, name in enumerate(names)
    ]
    logs = dict(zip(names, torch.stack(reduced).tolist()))
    logs["lr"] = lr_scheduler.get_last_lr()[0]
    if ema_model is not None:
        logs["ema_decay"] = ema_model.cur_decay_value
    return logs


def sensitive_band_summary(records: list[dict]) -> list[dict] | None:
    """How live ℓ⁺ was on S over a run, per timestep band, from the "S … t<lo>-<hi>" keys of its log records
    (``losses.sensitive_term_by_band``): S samples seen, share with ℓ < ln 2, mean ℓ⁺, mean and max of
    |dℓ⁺/dℓ| (ℓ⁺'s pull relative to the subtracted term's unit push). None when the run logged none."""
    bands = list(dict.fromkeys(key[len("S n ") :] for record in records for key in record if key.startswith("S n t")))
    if not bands:
        return None
    summary = []
    for band in bands:
        total = sum(record.get(f"S n {band}", 0.0) for record in records)

        def mean(stat, band=band, total=total):
            return sum(record.get(f"S {stat} {band}", 0.0) for record in records) / total if total else None

        summary.append(
            {
                "timesteps": band[1:],
                "samples": round(total),
                "share_loss_below_ln2": mean("n<ln2"),
                "mean_L_S+": mean("sum l+"),
                "mean_dl+/dl": mean("sum dl+"),
                "max_dl+/dl": max(record.get(f"S max dl+ {band}", 0.0) for record in records),
            }
        )
    return summary


def progress_postfix(logs: dict) -> dict:
    """The progress-bar fields: the PU terms under their log keys (risk, L_U-, L_S-, L_S+, neg_risk, nn_branch)."""
    return {key: f"{logs[key]:.4g}" for key in PROGRESS_KEYS if key in logs}


def truncate_log(logging_dir: str, last_step: int) -> None:
    """Drop records after ``last_step`` from ``train_log.jsonl`` (a resumed run logs those steps again)."""
    path = os.path.join(logging_dir, LOG_FILE)
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if (record.get("step") or 0) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    with open(path + ".tmp", "w") as handle:
        handle.writelines(kept)
    os.replace(path + ".tmp", path)


def remove_log(logging_dir: str) -> None:
    """Remove the JSON-lines log and its hparams of an earlier run (a run starting at step 0 logs afresh)."""
    for name in (LOG_FILE, "hparams.json"):
        path = os.path.join(logging_dir, name)
        if os.path.exists(path):
            os.remove(path)
