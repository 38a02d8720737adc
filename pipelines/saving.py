"""Building the stock diffusers pipelines a trained model becomes."""

from __future__ import annotations

from pu_diffusion.cli import UsageError
from pu_diffusion.run_dir import claim_outputs

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


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

    claim_outputs(output_dir, [LORA_WEIGHTS_NAME])
    if family in ("sd3", "flux"):
        (FluxPipeline if family == "flux" else StableDiffusion3Pipeline).save_lora_weights(
            output_dir, transformer_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
        )
        return
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline_class.save_lora_weights(
        output_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        safe_serialization=True,
    )


def save_pipeline(pipeline, output_dir: str) -> None:
    """``pipeline.save_pretrained`` (safetensors) into ``output_dir``, its names claimed first (model_index.json and
    one folder per component)."""
    components = [name for name, component in pipeline.components.items() if component is not None]
    claim_outputs(output_dir, ["model_index.json", *components])
    pipeline.save_pretrained(output_dir, safe_serialization=True)
