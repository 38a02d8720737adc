"""Building the stock diffusers pipelines a trained model becomes."""

from __future__ import annotations



def unconditional_pipeline(unet, train_scheduler, inference_scheduler: str = "ddpm"):
    """A DDPMPipeline (or DDIMPipeline) around ``unet`` with a scheduler built from the training one's config."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    if inference_scheduler == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(train_scheduler.config))
    if inference_scheduler == "ddpm":
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(train_scheduler.config))
    raise ValueError(f"Unknown --inference_scheduler {inference_scheduler!r}: use 'ddpm' or 'ddim'.")
