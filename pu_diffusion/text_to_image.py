"""Pieces of the conditional (text-to-image) PU loss shared by train_pu_text_to_image.py and its tests.

    ℓ(x, c) = || ε − ε_θ(z_t, t, c) ||²  summed over latent elements, z = VAE latents × scaling factor.

Guidance is trained the sound way: caption dropout scores a row under ∅ instead of c, so the PU risk covers
ℓ(x, c) and ℓ(x, ∅), both ELBOs. (A loss on the guided mix ε_∅ + w(ε_c − ε_∅) is not an ELBO; that option was
measured and removed, see docs/benchmark_text_to_image.md.)
"""

from __future__ import annotations

import torch

from .pu_dataset import ImageTransform

# Latents are cached by default (with --center_crop) up to this many rows; beyond, the cache costs too much memory.
CACHE_LATENTS_MAX_ROWS = 10_000


def use_latent_cache(cache_latents: bool | None, center_crop: bool, num_rows: int) -> bool:
    """Whether to encode latents once: as asked, else by default for centre crops of ≤ CACHE_LATENTS_MAX_ROWS rows.

    The cache holds centre crops (and their flips), so random crops never use it.
    """
    if cache_latents is not None:
        return cache_latents
    return center_crop and num_rows <= CACHE_LATENTS_MAX_ROWS


def caption_dropout_mask(batch_size: int, proportion: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch_size,) bool: True where a row's caption is replaced by the empty prompt (probability ``proportion``)."""
    return torch.rand(batch_size, generator=generator) < proportion


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text-encoder hidden states (N × tokens × dim) of ``captions``, frozen (no autograd)."""
    device = next(text_encoder.parameters()).device
    states = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(
            captions[start : start + batch_size],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        states.append(text_encoder(tokens.input_ids.to(device), return_dict=False)[0])
    return torch.cat(states)


@torch.no_grad()
def encode_latent_parameters(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Parameters (mean ‖ log-variance, on the channel axis) of the VAE posterior, frozen (no autograd)."""
    return vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters


def vae_scale_factor(vae) -> int:
    """Image pixels per latent pixel along a side: 2 per downsampling block of the VAE (8 for SD's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def scale_latents(latents: torch.Tensor, scaling_factor: float, shift_factor: float | None = None) -> torch.Tensor:
    """(z − shift) × scaling factor: a VAE latent as the denoiser sees it; the shift is SD3's and FLUX's VAE's
    (``vae.config.shift_factor``), none for SD 1.x/2.x and SDXL."""
    if shift_factor is not None:
        latents = latents - shift_factor
    return latents * scaling_factor


def sample_latents(latent_parameters: torch.Tensor, scaling_factor: float, shift_factor: float | None = None):
    """z = (μ + σ ε − shift) × scaling factor: one draw of the VAE posterior (the same draw cached or not)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return scale_latents(DiagonalGaussianDistribution(latent_parameters.float()).sample(), scaling_factor, shift_factor)


def unlabeled_captions_for_sensitive_rows(
    text_states: torch.Tensor, is_sensitive: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``text_states`` with each S row's state replaced by that of a U row of the batch drawn uniformly (one
    draw per S row): S is then scored under U's caption distribution, the condition under which the PU risk's
    p_U(x | c) = β p_S(x | c) + (1 − β) p_N(x | c) holds. A batch without S rows draws nothing."""
    is_sensitive = is_sensitive.to(device=text_states.device, dtype=torch.bool)
    unlabeled = torch.nonzero(~is_sensitive).flatten()
    count = int(is_sensitive.sum())
    if count == 0:
        return text_states
    if len(unlabeled) == 0:
        raise ValueError("--sensitive_conditioning unlabeled needs U rows in every batch.")
    picks = torch.randint(0, len(unlabeled), (count,), generator=generator, device="cpu" if generator else None)
    states = text_states.clone()
    states[is_sensitive] = text_states[unlabeled[picks.to(unlabeled.device)]]
    return states


def drop_captions(is_empty_draw: torch.Tensor, states: torch.Tensor, empty_state: torch.Tensor) -> torch.Tensor:
    """Replace the text states of rows where ``is_empty_draw`` is True by those of the empty prompt."""
    mask = is_empty_draw.view(-1, *([1] * (states.dim() - 1))).to(states.device)
    return torch.where(mask, empty_state.to(states.dtype).expand_as(states), states)


def predict_noise(unet, noisy_latents, timesteps, text_states):
    """ε_θ(z_t, t, c): the one UNet pass of the loss step (a seam the tests watch)."""
    return unet(noisy_latents, timesteps, text_states, return_dict=False)[0]


@torch.no_grad()
def encode_latents_once(
    dataset,
    image_column: str,
    captions: list[str],
    transform: ImageTransform,
    vae,
    encode_text,
    rows,
    batch_size: int = 16,
) -> tuple[dict, dict]:
    """({(row, flipped): VAE posterior parameters}, {caption: text states}) of ``rows``, on the CPU; ``encode_text``
    turns a list of captions into one conditioning tensor per caption (``TextSide.encode``).

    Images are encoded as ``transform`` makes them with aug_seed 0 (a centre crop), and flipped too when
    ``transform.random_flip``; the VAE posterior is still sampled afresh at every step.
    """
    rows = [int(row) for row in rows]
    latent_cache = {}
    for flip in [False, True] if transform.random_flip else [False]:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            pixels = torch.stack([transform(dataset[row][image_column], 0, flip=flip) for row in chunk])
            for row, parameters in zip(chunk, encode_latent_parameters(vae, pixels).cpu()):
                latent_cache[(row, flip)] = parameters
    unique_captions = sorted({captions[row] for row in rows})
    text_cache = dict(zip(unique_captions, encode_text(unique_captions).cpu()))
    return latent_cache, text_cache


class TextImageDataset(torch.utils.data.Dataset):
    """Items keyed by (row, aug_seed): pixels (or cached VAE posterior parameters), caption and text states."""

    def __init__(self, dataset, image_column, captions, sensitive_rows, transform, latent_cache=None, text_cache=None):
        self.dataset, self.image_column, self.captions = dataset, image_column, captions
        self.sensitive_rows = {int(row) for row in sensitive_rows}
        self.transform, self.latent_cache, self.text_cache = transform, latent_cache, text_cache

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        row, aug_seed = int(key[0]), key[1]
        item = {"is_sensitive": row in self.sensitive_rows, "caption": self.captions[row]}
        flip = self.transform.random_flip and ImageTransform.flips(aug_seed)
        if self.latent_cache is not None:
            item["latent_parameters"] = self.latent_cache[(row, flip)]
        else:
            item["pixel_values"] = self.transform(self.dataset[row][self.image_column], aug_seed, flip=flip)
        if self.text_cache is not None:
            item["text_states"] = self.text_cache[self.captions[row]]
        return item


def collate_text_image_batch(items: list[dict]) -> dict:
    batch = {
        "is_sensitive": torch.tensor([item["is_sensitive"] for item in items]),
        "captions": [item["caption"] for item in items],
    }
    for key in ("latent_parameters", "pixel_values", "text_states"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch
