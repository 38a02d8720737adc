"""Pieces of the conditional (text-to-image) PU loss shared by train_pu_text_to_image.py and its tests.

    ℓ(x, c) = || ε − ε_θ(z_t, t, c) ||²  summed over latent elements, z = VAE latents × scaling factor.
Guided variant (``guidance_scale`` w): ℓ is taken on ε_w = ε_θ(z_t, t, ∅) + w (ε_θ(z_t, t, c) − ε_θ(z_t, t, ∅)),
the prediction that classifier-free-guided sampling uses; it costs a second UNet pass (batch doubled).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text-encoder hidden states (N × tokens × dim) of ``captions``, frozen (no autograd)."""
    device = next(text_encoder.parameters()).device
    states = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(captions[start:start + batch_size], max_length=tokenizer.model_max_length,
                           padding="max_length", truncation=True, return_tensors="pt")
        states.append(text_encoder(tokens.input_ids.to(device), return_dict=False)[0])
    return torch.cat(states)


@torch.no_grad()
def encode_latent_parameters(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Parameters (mean ‖ log-variance, on the channel axis) of the VAE posterior, frozen (no autograd)."""
    return vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters


def sample_latents(latent_parameters: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """z = (μ + σ ε) × scaling factor: one draw of the VAE posterior (the same draw cached or not)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(latent_parameters.float()).sample() * scaling_factor


def drop_captions(is_empty_draw: torch.Tensor, states: torch.Tensor, empty_state: torch.Tensor) -> torch.Tensor:
    """Replace the text states of rows where ``is_empty_draw`` is True by those of the empty prompt."""
    mask = is_empty_draw.view(-1, *([1] * (states.dim() - 1))).to(states.device)
    return torch.where(mask, empty_state.to(states.dtype).expand_as(states), states)


def predict_noise(unet, noisy_latents, timesteps, text_states, empty_state=None, guidance_scale: float | None = None):
    """ε_θ(z_t, t, c), or the guided ε_∅ + w(ε_c − ε_∅) when ``guidance_scale`` is given (two passes in one batch)."""
    if not guidance_scale:
        return unet(noisy_latents, timesteps, text_states, return_dict=False)[0]
    unconditional = empty_state.to(text_states.dtype).expand_as(text_states)
    both = unet(torch.cat([noisy_latents, noisy_latents]), torch.cat([timesteps, timesteps]),
                torch.cat([unconditional, text_states]), return_dict=False)[0]
    prediction_empty, prediction_text = both.chunk(2)
    return prediction_empty + guidance_scale * (prediction_text - prediction_empty)
