"""Scoring images with a trained pipeline's own per-sample diffusion loss ℓ (its PU classifier)."""

from __future__ import annotations

import torch

from pu_diffusion.losses import monte_carlo_diffusion_loss


def score_images(
    pipeline,
    images: torch.Tensor,
    num_draws: int = 8,
    reduction: str = "sum",
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """E_{t,ε} ℓ(x) of each image (N×C×H×W in [-1, 1]) under ``pipeline``'s UNet and scheduler; higher = more sensitive."""
    return monte_carlo_diffusion_loss(
        pipeline.unet,
        pipeline.scheduler,
        images,
        num_draws=num_draws,
        reduction=reduction,
        generator=generator,
        batch_size=batch_size,
    )


def normal_probability(losses: torch.Tensor) -> torch.Tensor:
    """p(normal | x) = exp(−ℓ(x)), the model's own classifier."""
    return torch.exp(-losses)
