"""Checkpoints that survive a kill at any moment: written under a temporary name, renamed when complete.

    <output_dir>/checkpoint-N.tmp/      being written by every process (accelerate's save_state)
    <output_dir>/checkpoint-N/          complete: holds COMPLETE_MARKER, written last, then renamed into place
    <output_dir>/checkpoint-N.old/      being deleted (rotation, or a checkpoint replaced by a newer save)

A folder is renamed away before it is deleted, so a kill during deletion never leaves a half-deleted
``checkpoint-N``. Old checkpoints are rotated only after the new one is complete. ``latest`` picks the
highest complete checkpoint; leftovers of interrupted saves are ignored and cleaned up by the next save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import zipfile

from .cli import DiskFullError, UsageError

COMPLETE_MARKER = "pu_checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TEMPORARY = re.compile(r"^checkpoint-(\d+)\.(tmp|old)$")
CHECKPOINT_PATTERN = r"checkpoint-\d+(\.tmp|\.old)?"  # the names a run claims for its checkpoints (a regex)

logger = logging.getLogger(__name__)


def is_checkpoint_name(name: str, include_temporary: bool = False) -> bool:
    """Whether ``name`` is ``checkpoint-N`` (or, with ``include_temporary``, ``checkpoint-N.tmp|.old``)."""
    return bool(_NAME.match(name) or (include_temporary and _TEMPORARY.match(name)))


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def checkpoint_num_processes(path: str) -> int:
    """How many processes wrote a complete checkpoint (their RNG states and batch positions are per process)."""
    with open(os.path.join(path, COMPLETE_MARKER)) as handle:
        return int(json.load(handle)["num_processes"])


def checkpoint_step(path: str) -> int:
    """N of a ``checkpoint-N`` folder."""
    match = _NAME.match(os.path.basename(os.path.normpath(path)))
    if not match:
        raise UsageError(f"{path!r} is not a checkpoint-N folder.")
    return int(match.group(1))


def checkpoint_dirs(output_dir: str, complete_only: bool = True) -> list[str]:
    """``checkpoint-N`` folder names in ``output_dir``, oldest (smallest N) first; complete ones only by default."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if _NAME.match(name)]
    if complete_only:
        names = [name for name in names if is_complete_checkpoint(os.path.join(output_dir, name))]
    return sorted(names, key=lambda name: int(_NAME.match(name).group(1)))


def checkpoint_problem(path: str) -> str | None:
    """Why the complete checkpoint at ``path`` cannot be loaded (a file truncated or unreadable), or None.

    Reads structure, not values: JSON files parse, every safetensors file is as long as its header says, and
    every torch.save file (optimizer, scheduler, RNG states) is a whole zip archive, whose directory is at its end.
    """
    for root, _, names in os.walk(path):
        for name in sorted(names):
            file = os.path.join(root, name)
            relative = os.path.relpath(file, path)
            try:
                if name.endswith(".json"):
                    with open(file) as handle:
                        json.load(handle)
                elif name.endswith(".safetensors"):
                    with open(file, "rb") as handle:
                        header_size = struct.unpack("<Q", handle.read(8))[0]
                        header = json.loads(handle.read(header_size))
                    end = max(
                        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
                    )
                    if os.path.getsize(file) < 8 + header_size + end:
                        return f"{relative} is truncated"
                elif name.endswith((".bin", ".pkl", ".pt", ".pth")):
                    with zipfile.ZipFile(file) as archive:
                        archive.namelist()
            except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as error:
                return f"{relative} cannot be read ({type(error).__name__})"
    try:
        checkpoint_num_processes(path)
    except (OSError, ValueError, KeyError, TypeError):
        return f"{COMPLETE_MARKER} cannot be read"
    return None


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """The checkpoint to resume from, or None to start a new run.

    "latest" picks the newest complete checkpoint in ``output_dir`` that can be loaded (a damaged one is
    skipped, with a warning naming its file), or None when there is none (the run then starts at step 0). A
    path must be a complete checkpoint that can be loaded.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        problems = []
        for name in reversed(checkpoint_dirs(output_dir)):
            path = os.path.join(output_dir, name)
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            problems.append(f"{name}: {problem}")
            logger.warning(
                "--resume_from_checkpoint latest: skipping %s, it cannot be loaded (%s); trying an older checkpoint",
                name,
                problem,
            )
        if problems:  # never start over (which replaces the run) because its checkpoints cannot be read
            raise UsageError(
                f"--resume_from_checkpoint latest: no checkpoint in {output_dir!r} can be loaded ({'; '.join(problems)}). "
                "Restore them, or start the run over with --overwrite_output_dir."
            )
        return None
    if not os.path.isdir(resume_from_checkpoint):
        raise UsageError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist: give a checkpoint-N folder or 'latest'."
        )
    if not _NAME.match(os.path.basename(os.path.normpath(resume_from_checkpoint))):
        raise UsageError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint-N folder.")
    if not is_complete_checkpoint(resume_from_checkpoint):
        raise UsageError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is incomplete (its save was interrupted): pass "
            "'latest' to take the newest complete checkpoint, or another checkpoint-N."
        )
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem:
        raise UsageError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} cannot be loaded: {problem}. Pass 'latest' to take "
            "the newest checkpoint that loads, or another checkpoint-N."
        )
    return resume_from_checkpoint


def _remove(path: str) -> None:
    """Delete a folder so that a kill midway never leaves a half-deleted ``checkpoint-N`` under its own name.

    A ``checkpoint-N`` is first renamed to ``checkpoint-N.old``; ``.tmp``/``.old`` folders are deleted directly
    (a half-deleted one is still a leftover that the next save removes).
    """
    if _NAME.match(os.path.basename(path)):
        trash = path + ".old"
        if os.path.exists(trash):
            shutil.rmtree(trash)
        os.replace(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


def _clean_leftovers(output_dir: str, global_step: int) -> None:
    """Delete folders of interrupted saves and deletions, checkpoint-N folders without the completion marker, and
    checkpoints of steps from ``global_step`` on (the abandoned continuation of a run resumed from an older one)."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        match = _NAME.match(name)
        if _TEMPORARY.match(name) or (match and not is_complete_checkpoint(path)):
            logger.info("removing incomplete checkpoint folder %s", name)
            _remove(path)
        elif match and int(match.group(1)) >= global_step:  # removed before the new save: no rename window
            logger.info("removing %s: this run resumed from an earlier step and replaces it", name)
            _remove(path)


def rotate_checkpoints(output_dir: str, total_limit: int | None) -> None:
    """Delete the oldest complete checkpoints so that at most ``total_limit`` remain."""
    if total_limit is None:
        return
    found = checkpoint_dirs(output_dir)
    for name in found[: max(0, len(found) - total_limit)]:
        logger.info("removing checkpoint %s (--checkpoints_total_limit %d)", name, total_limit)
        _remove(os.path.join(output_dir, name))


def save_checkpoint(accelerator, output_dir: str, global_step: int, total_limit: int | None) -> str:
    """Save the accelerate state as ``checkpoint-<global_step>``, atomically, then rotate old checkpoints.

    Every process writes into ``checkpoint-N.tmp`` (accelerate saves one RNG file per process); once all have
    finished, the main process writes the completion marker and renames the folder into place.
    """
    final = os.path.join(output_dir, f"checkpoint-{global_step}")
    temporary = final + ".tmp"
    if accelerator.is_main_process:
        _clean_leftovers(output_dir, global_step)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(temporary)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise disk_full_error(output_dir, temporary, global_step) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(temporary, COMPLETE_MARKER), "w") as handle:
            json.dump({"global_step": global_step, "num_processes": accelerator.num_processes}, handle)
        os.replace(temporary, final)  # _clean_leftovers removed an older checkpoint-N of an abandoned continuation
        rotate_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def disk_full_error(output_dir: str, temporary: str, global_step: int) -> DiskFullError:
    """The one-line error of a save that ran out of space; its partial ``checkpoint-N.tmp`` is removed first."""
    written = _folder_bytes(temporary) if os.path.isdir(temporary) else 0
    shutil.rmtree(temporary, ignore_errors=True)
    complete = checkpoint_dirs(output_dir)
    needed = _folder_bytes(os.path.join(output_dir, complete[-1])) if complete else None
    free = shutil.disk_usage(output_dir).free
    size = f"a checkpoint takes {needed / 2**20:.1f} MiB" if needed else f"it needs more than {written / 2**20:.1f} MiB"
    resume_from = f"it resumes from {complete[-1]}" if complete else "no checkpoint was complete yet: it starts over"
    return DiskFullError(
        f"no space left on the device while saving checkpoint-{global_step} into {output_dir!r}: {size}, "
        f"{free / 2**20:.1f} MiB are free. The partial save was removed. Free space, then run the same command "
        f"with --resume_from_checkpoint latest ({resume_from})."
    )


def register_model_hooks(accelerator, model_cls, ema_model=None, subfolder: str = "unet") -> None:
    """Save/load the trained model (and its EMA) as diffusers safetensors folders inside accelerate checkpoints."""
    from diffusers.training_utils import EMAModel

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(output_dir, f"{subfolder}_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(
                    os.path.join(output_dir, subfolder), safe_serialization=True
                )
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
