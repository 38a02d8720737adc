"""Loading a trained unconditional pipeline for evaluation: the --pipeline checks (a local folder's
model_index.json, or a hub id) before anything is loaded, the load itself, and the sampler swap (DDPM / DDIM)."""

from __future__ import annotations

import functools
import json
import os

from pu_diffusion.evaluation import EvaluationError, first_line

UNCONDITIONAL_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
UNCONDITIONAL_ONLY = (
    "evaluate_pu_diffusion.py evaluates unconditional pipelines only: a DDPMPipeline or DDIMPipeline "
    "whose `unet` is a UNet2DModel, as train_pu_diffusion.py writes. A text-to-image pipeline (e.g. "
    "from train_pu_text_to_image.py) needs prompts: generate images from your prompts and judge them "
    "with your own classifier"
)
TRAIN_HINT = (
    "give the --output_dir of a train_pu_diffusion.py run, or train one first: "
    "`python train_pu_diffusion.py --output_dir DIR` (built-in MNIST by default)"
)

TRAIN_HINT_SENTENCE = TRAIN_HINT[0].upper() + TRAIN_HINT[1:]


def looks_like_hub_id(path: str) -> bool:
    """Whether ``path``, which is not on disk, could name a Hub repository ("name" or "owner/name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def refuse_unless_unconditional(class_name: str | None, unet_class: str | None, path: str) -> None:
    """Raise EvaluationError unless the pipeline is a DDPM/DDIM pipeline around a UNet2DModel."""
    if class_name not in UNCONDITIONAL_PIPELINES or unet_class != "UNet2DModel":
        raise EvaluationError(f"--pipeline {path!r} is a {class_name} (unet: {unet_class}); {UNCONDITIONAL_ONLY}.")


def check_model_index(folder: str) -> None:
    """Read ``folder/model_index.json`` and refuse folders that are not unconditional diffusers pipelines."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise EvaluationError(
            f"--pipeline {folder!r} has no model_index.json, so it is not a diffusers pipeline "
            f"folder (a training run's --output_dir holds model_index.json, unet/ and scheduler/): "
            f"{TRAIN_HINT}."
        )
    try:
        with open(index_path) as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise EvaluationError(
            f"--pipeline {folder!r}: model_index.json cannot be read; save the pipeline again "
            f"with save_pretrained. Reading said: {first_line(error)}"
        ) from error
    unet = index.get("unet")
    unet_class = unet[1] if isinstance(unet, list) and len(unet) == 2 else None
    refuse_unless_unconditional(index.get("_class_name"), unet_class, folder)


def check_pipeline_source(path: str, local_only: bool = False) -> None:
    """Refuse a ``--pipeline`` that is neither a local pipeline folder nor (unless ``local_only``) a hub id."""
    if os.path.isdir(path):
        check_model_index(path)
        return
    if os.path.exists(path):
        raise EvaluationError(f"--pipeline {path!r} is a file, not a pipeline folder: {TRAIN_HINT}.")
    if local_only:
        raise EvaluationError(
            f"--pipeline {path!r} does not exist: no such folder. The built-in evaluation needs the local pipeline "
            f"folder of a run on the built-in MNIST data (it holds pu_split.json): {TRAIN_HINT}. For a model on the "
            "Hub, download it first (`huggingface-cli download ID --local-dir DIR`) or evaluate it with "
            "--classifier_name_or_path, --sensitive_labels and --test_data_dir."
        )
    if not looks_like_hub_id(path):
        raise EvaluationError(
            f"--pipeline {path!r} does not exist: it is neither a folder nor a hub id "
            f"(owner/name). {TRAIN_HINT_SENTENCE}, or pass a hub id."
        )


def check_unconditional_pipeline(pipeline, path: str) -> None:
    """Refuse a loaded pipeline that is not a DDPMPipeline/DDIMPipeline with a UNet2DModel ``unet``."""
    from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel

    unet = getattr(pipeline, "unet", None)
    if not (isinstance(pipeline, (DDPMPipeline, DDIMPipeline)) and isinstance(unet, UNet2DModel)):
        refuse_unless_unconditional(type(pipeline).__name__, type(unet).__name__ if unet is not None else None, path)


SAMPLERS = ("auto", "ddim", "ddpm", "euler")  # auto: ddim for a diffusion model, euler for a flow-matching one


def sampler_for(scheduler_class: str, sampler: str | None, path: str) -> str | None:
    """The sampler to use for a pipeline whose scheduler is ``scheduler_class``: ``auto`` resolved (ddim, or euler
    for a flow-matching model); a sampler that cannot sample the model is an EvaluationError naming both."""
    flow = scheduler_class.startswith("FlowMatch")
    if sampler == "auto":
        return "euler" if flow else "ddim"
    if flow and sampler in ("ddim", "ddpm"):
        raise EvaluationError(
            f"sampler {sampler}: --pipeline {path!r} is a flow-matching model ({scheduler_class}), which DDIM/DDPM "
            "cannot sample: use euler (or auto)."
        )
    if sampler == "euler" and not flow:
        raise EvaluationError(
            f"sampler euler samples flow-matching models; --pipeline {path!r} is a diffusion model "
            f"({scheduler_class}): use ddim or ddpm (or auto)."
        )
    return sampler


def check_sampler(path: str, sampler: str | None) -> None:
    """Before any sampling: refuse a sampler that cannot sample the local pipeline folder ``path`` (read from its
    scheduler config; a hub id is checked once loaded)."""
    config = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(config):
        return
    try:
        with open(config) as handle:
            scheduler_class = str(json.load(handle).get("_class_name", ""))
    except (OSError, ValueError):
        return  # loading reports the damaged folder with its own message
    sampler_for(scheduler_class, sampler, path)


def load_pipeline(path: str, sampler: str | None = None):
    """Unconditional pipeline from a folder or hub id, optionally with its scheduler swapped for DDPM or DDIM.

    ``sampler``: None (the pipeline's own scheduler), ddim, ddpm, euler (a flow-matching model's
    FlowMatchEulerDiscreteScheduler) or auto (ddim for a diffusion model, euler for a flow-matching one).
    Raises EvaluationError when it cannot be loaded, is not a DDPM/DDIM pipeline around a UNet2DModel, or the
    sampler does not fit the model's kind.
    """
    from diffusers import (
        DDIMPipeline,
        DDIMScheduler,
        DDPMPipeline,
        DDPMScheduler,
        DiffusionPipeline,
        FlowMatchEulerDiscreteScheduler,
    )

    try:
        pipeline = DiffusionPipeline.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - any loading failure means the flag is wrong
        if os.path.isdir(path):
            problem = (
                f"could not be loaded as a diffusers pipeline: save it again with save_pretrained, or {TRAIN_HINT}"
            )
        else:
            problem = (
                f"does not exist: no such folder, and no hub model of that id could be loaded. "
                f"{TRAIN_HINT_SENTENCE}, or pass an existing hub id"
            )
        raise EvaluationError(f"--pipeline {path!r} {problem}. Loading said: {first_line(error)}") from error
    check_unconditional_pipeline(pipeline, path)
    sampler = sampler_for(type(pipeline.scheduler).__name__, sampler, path)
    if type(pipeline.scheduler).__name__.startswith("FlowMatch"):  # always a DDPMPipeline: its loop fits Euler
        pipeline = DDPMPipeline(
            unet=pipeline.unet, scheduler=FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        )
    elif sampler == "ddim" and not isinstance(pipeline.scheduler, DDIMScheduler):
        pipeline = DDIMPipeline(unet=pipeline.unet, scheduler=DDIMScheduler.from_config(pipeline.scheduler.config))
    elif sampler == "ddpm" and not isinstance(pipeline.scheduler, DDPMScheduler):
        pipeline = DDPMPipeline(unet=pipeline.unet, scheduler=DDPMScheduler.from_config(pipeline.scheduler.config))
    return pipeline


def pipeline_loader(path: str, sampler: str | None = None, local_only: bool = False):
    """Check ``--pipeline`` now (nothing is loaded); return ``load()`` for the evaluation to call once its other
    inputs are checked: :func:`load_pipeline` of ``path`` with ``sampler``."""
    check_pipeline_source(path, local_only=local_only)
    return functools.partial(load_pipeline, path, sampler)
