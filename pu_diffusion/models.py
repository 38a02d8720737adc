"""Default UNet2DModel sizes and the checks a model/resolution pair must pass."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from .cli import UsageError

logger = logging.getLogger(__name__)


@contextmanager
def loading(flag: str, path: str):
    """Turn any failure to load ``path`` (a missing folder, a wrong hub id, a damaged file) into one UsageError
    naming ``flag``; UsageErrors raised inside pass through."""
    try:
        yield
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - diffusers, transformers, huggingface_hub raise many types
        first = str(error).splitlines()[0][:160] if str(error) else "no message"
        raise UsageError(
            f"{flag} {path!r} cannot be loaded ({type(error).__name__}: {first}). Give a local folder written by "
            "save_pretrained (or a hub id reachable from here)."
        ) from error


def load_training_scheduler(path: str, revision: str | None = None):
    """The scheduler that noises training data for the pipeline at ``path``: its own flow-matching scheduler for a
    flow-matching model (FlowMatchEulerDiscreteScheduler), else a DDPMScheduler from its scheduler config (a saved
    DDIM/DDPM/other discrete scheduler shares the DDPM noising)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    config = DDPMScheduler.load_config(path, subfolder="scheduler", revision=revision)
    if str(config.get("_class_name", "")).startswith("FlowMatch"):
        return FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", revision=revision)
    return DDPMScheduler.from_pretrained(path, subfolder="scheduler", revision=revision)


def default_unet_config(resolution: int, channels: int) -> dict:
    """A UNet2DModel config sized for ``resolution`` (from-scratch training).

    ≤16 px: 1.1M parameters, no attention (the built-in CPU benchmark, ≈0.25 s per batch of 64 on 2 cores);
    ≤32 px: the google/ddpm-cifar10-32 layout; larger: diffusers' unconditional example layout.
    """
    common = {"sample_size": resolution, "in_channels": channels, "out_channels": channels}
    if resolution <= 16:
        return {
            **common,
            "block_out_channels": (32, 64, 64),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "down_block_types": ("DownBlock2D",) * 3,
            "up_block_types": ("UpBlock2D",) * 3,
        }
    if resolution <= 32:
        return {
            **common,
            "block_out_channels": (128, 256, 256, 256),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        }
    return {
        **common,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    }


def check_resolution(unet, resolution: int, flag: str = "--resolution", vae_factor: int = 1) -> None:
    """Refuse a resolution the model cannot take: it must divide by vae_factor · 2^(UNet downsamplings).

    ``vae_factor``: pixels per latent pixel of latent diffusion (1 for a pixel-space UNet).
    """
    downsamplings = len(unet.config.block_out_channels) - 1
    factor = vae_factor * 2**downsamplings
    if resolution % factor:
        through = f"the VAE shrinks images {vae_factor}× and the UNet" if vae_factor > 1 else "this UNet"
        raise UsageError(
            f"{flag} {resolution} cannot pass through the model: {through} downsamples {downsamplings} times, so the "
            f"resolution must be a multiple of {factor} (e.g. {max(factor, resolution // factor * factor)})."
        )


def match_sample_size(unet, sample_size: int) -> None:
    """Set ``unet.config.sample_size`` to the size it is trained at, so the saved pipeline generates at that size.

    A config or pretrained model made for another size would otherwise keep it (pipelines read it).
    ``sample_size`` is in the UNet's own units: pixels, or latent pixels for latent diffusion.
    """
    if unet.config.sample_size != sample_size:
        logger.warning(
            "The UNet's config says sample_size %s; training at %s, so the saved pipeline generates at %s.",
            unet.config.sample_size,
            sample_size,
            sample_size,
        )
        unet.register_to_config(sample_size=sample_size)
