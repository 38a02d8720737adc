"""Scoring images with a trained model's own per-sample diffusion loss ℓ (its PU classifier)."""

from __future__ import annotations

import torch

from pu_diffusion.losses import diffusion_target, per_sample_diffusion_loss


@torch.no_grad()
def diffusion_losses(unet, scheduler, images: torch.Tensor, num_draws: int = 8, reduction: str = "sum",
                     generator: torch.Generator | None = None, batch_size: int = 64) -> torch.Tensor:
    """Monte-Carlo estimate of E_{t,ε} ℓ(x) for each image (images in [-1, 1], N×C×H×W); returns (N,)."""
    device = next(unet.parameters()).device
    totals = torch.zeros(len(images))
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device)
        for _ in range(num_draws):
            noise = torch.randn(chunk.shape, generator=generator).to(device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(chunk),), generator=generator)
            timesteps = timesteps.to(device)
            prediction = unet(scheduler.add_noise(chunk, noise, timesteps), timesteps).sample
            target = diffusion_target(scheduler, chunk, noise, timesteps)
            totals[start:start + len(chunk)] += per_sample_diffusion_loss(prediction, target, reduction).cpu()
    return totals / num_draws


def normal_probability(losses: torch.Tensor) -> torch.Tensor:
    """p(normal | x) = exp(−ℓ(x)), the model's own classifier."""
    return torch.exp(-losses)
