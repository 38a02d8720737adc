"""Building the stock diffusers pipelines a trained model becomes."""

from __future__ import annotations

import os
import shutil

from pu_diffusion.cli import UsageError
from pu_diffusion.outputs import remove_path
from pu_diffusion.run_dir import claim_outputs

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
STAGING = ".pipeline_staging"  # a save is written here first, then moved into place
RETIRED = ".pipeline_retired"  # a replaced pipeline's entries wait here until the new one is in place


def unconditional_pipeline(unet, train_scheduler, inference_scheduler: str = "ddpm"):
    """A DDPMPipeline (or DDIMPipeline) around ``unet`` with a scheduler built from the training one's config; a
    flow-matching model gets a DDPMPipeline around its own FlowMatchEulerDiscreteScheduler (stock diffusers loads and
    samples it: the pipeline's loop is scheduler.step over scheduler.timesteps)."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if type(train_scheduler).__name__.startswith("FlowMatch"):
        return DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler.from_config(train_scheduler.config))
    if inference_scheduler == "euler":
        raise UsageError("--inference_scheduler euler samples flow-matching models: use ddpm or ddim.")
    if inference_scheduler == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(train_scheduler.config))
    if inference_scheduler == "ddpm":
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(train_scheduler.config))
    raise UsageError(f"Unknown --inference_scheduler {inference_scheduler!r}: use 'ddpm' or 'ddim'.")


def stable_diffusion_pipeline(
    base_model: str,
    unet,
    vae,
    text_encoder=None,
    tokenizer=None,
    prediction_type: str = "epsilon",
    revision: str | None = None,
    variant: str | None = None,
    keep_safety_checker: bool = True,
    family: str = "sd",
    text_components: dict | None = None,
):
    """The base model's pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline or
    FluxPipeline by ``family``) around the trained ``unet``, its scheduler set to ``prediction_type``.

    ``text_components``: the text encoders and tokenizers by component name (default: ``text_encoder`` and
    ``tokenizer``). The trained prediction type must reach the inference scheduler too (an epsilon base trained on
    v-targets otherwise samples wrongly). An SD base's safety checker is kept unless ``keep_safety_checker`` is
    False (validation grids); SDXL has none.
    """
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}.get(
        family, StableDiffusionPipeline
    )
    text_components = text_components or {"text_encoder": text_encoder, "tokenizer": tokenizer}
    extra = {} if keep_safety_checker or family != "sd" else {"safety_checker": None, "requires_safety_checker": False}
    if family == "sdxl" and not keep_safety_checker:
        extra["add_watermarker"] = False  # validation grids do not depend on whether invisible-watermark is installed
    extra["transformer" if family in ("sd3", "flux") else "unet"] = unet
    pipeline = pipeline_class.from_pretrained(
        base_model,
        vae=vae,
        revision=revision,
        variant=variant,
        **text_components,
        **extra,
    )
    if family not in ("sd3", "flux") and pipeline.scheduler.config.get("prediction_type") != prediction_type:
        pipeline.scheduler = type(pipeline.scheduler).from_config(
            pipeline.scheduler.config, prediction_type=prediction_type
        )
    return pipeline


def save_lora_weights(output_dir: str, unet, family: str = "sd") -> None:
    """Write the UNet's LoRA adapters as ``pytorch_lora_weights.safetensors`` with the family pipeline's own
    ``save_lora_weights`` (loads with ``load_lora_weights``)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    claim_outputs(output_dir, [LORA_WEIGHTS_NAME, STAGING])
    staging = fresh_folder(os.path.join(output_dir, STAGING))  # written there, then renamed: never half a file
    if family in ("sd3", "flux"):
        (FluxPipeline if family == "flux" else StableDiffusion3Pipeline).save_lora_weights(
            staging, transformer_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
        )
    else:
        (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline).save_lora_weights(
            staging,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            safe_serialization=True,
        )
    os.replace(os.path.join(staging, LORA_WEIGHTS_NAME), os.path.join(output_dir, LORA_WEIGHTS_NAME))
    shutil.rmtree(staging)


def fresh_folder(path: str) -> str:
    """``path`` as a new empty folder, an earlier (killed) save's leftover there removed first (it is claimed)."""
    if os.path.lexists(path):
        remove_path(path)
    os.makedirs(path)
    return path


def save_pipeline(pipeline, output_dir: str) -> None:
    """``pipeline.save_pretrained`` (safetensors) into ``output_dir``, as a whole or not at all: its names
    (model_index.json, one folder per component, and the two working folders) are claimed first; the pipeline is
    saved into a staging folder, the old model_index.json is moved away first, each component folder is swapped in,
    and the new model_index.json comes last. A kill at any moment leaves either a complete pipeline or no
    model_index.json (not loadable; a rerun with --resume_from_checkpoint latest saves it again), never a folder
    that loads half-written weights."""
    index = "model_index.json"
    components = [name for name, component in pipeline.components.items() if component is not None]
    claim_outputs(output_dir, [index, *components, STAGING, RETIRED])
    staging, retired = os.path.join(output_dir, STAGING), os.path.join(output_dir, RETIRED)
    fresh_folder(staging)  # an earlier save's leftovers, killed midway, are removed (claimed above, so ours)
    fresh_folder(retired)
    pipeline.save_pretrained(staging, safe_serialization=True)
    entries = sorted(os.listdir(staging))
    unclaimed = sorted(set(entries) - {index, *components})
    claim_outputs(output_dir, unclaimed)  # anything else save_pretrained wrote (none in diffusers today)
    if os.path.lexists(os.path.join(output_dir, index)):  # from here the folder is no loadable pipeline
        os.replace(os.path.join(output_dir, index), os.path.join(retired, index))
    for name in entries:
        if name == index:
            continue
        target = os.path.join(output_dir, name)
        if os.path.lexists(target):
            os.replace(target, os.path.join(retired, name))
        os.replace(os.path.join(staging, name), target)
    os.replace(os.path.join(staging, index), os.path.join(output_dir, index))  # complete: loadable again
    shutil.rmtree(retired)
    os.rmdir(staging)
