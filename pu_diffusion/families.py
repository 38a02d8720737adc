"""Text-to-image model families behind one small adapter (train_pu_text_to_image.py keeps one loop).

Every caption travels through the script as one tensor per row, (rows, tokens, width): the text cache, U captions
lent to S rows, caption dropout, ESD's concept and EraseDiff's anchor all move rows of it. A family whose UNet needs
more than the token states (SDXL: the pooled embedding of its second encoder and six time ids) appends the pooled
embedding as one extra token, zero-padded to the width, and its UNet unpacks it in a forward pre-hook, so every call
``unet(x_t, t, states)`` stays as it is. A pipeline's own calls, which pass ``added_cond_kwargs``, go through
untouched.

    sd     StableDiffusionPipeline      CLIPTextModel                                   (SD 1.x / 2.x)
    sdxl   StableDiffusionXLPipeline    CLIPTextModel + CLIPTextModelWithProjection     (penultimate states,
                                        concatenated; pooled from the second; time ids (H, W, 0, 0, H, W))
    sd3    StableDiffusion3Pipeline     two CLIPTextModelWithProjection + T5EncoderModel (CLIP states padded to
                                        T5's width, then T5's states; pooled = both CLIP pooled); a rectified-flow
                                        SD3Transformer2DModel (the script still calls it ``unet``)
    flux   FluxPipeline                 CLIPTextModel (pooled output only) + T5EncoderModel (512 tokens); a
                                        rectified-flow FluxTransformer2DModel whose hooks pack the latents into
                                        2×2 patches with position ids, add FLUX-dev's guidance embedding and unpack
                                        its output, so it too is called as ``unet(x_t, t, states)``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cli import UsageError
from .text_to_image import encode_captions

FAMILY_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
FLOW_FAMILIES = ("sd3", "flux")  # rectified flow: FlowMatchEulerDiscreteScheduler, velocity targets
TRANSFORMER_FAMILIES = ("sd3", "flux")  # the denoiser is the pipeline's ``transformer``
T5_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
FLUX_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default max_sequence_length
FLUX_GUIDANCE = (
    3.5  # FLUX-dev's embedded guidance while training (FluxPipeline's and diffusers' FLUX examples' default)
)


def denoiser_class(family: str):
    """The trained model's class: UNet2DConditionModel, SD3Transformer2DModel (sd3) or FluxTransformer2DModel."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    return {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}.get(family, UNet2DConditionModel)


def denoiser_name(family: str) -> str:
    """The trained model's component name in the pipeline (its sub-folder): unet, or transformer for sd3 and flux."""
    return "transformer" if family in TRANSFORMER_FAMILIES else "unet"


def detect_family(path: str, revision: str | None = None) -> str:
    """The family of the pipeline at ``path`` from its model_index.json (``_class_name``)."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(path, revision=revision).get("_class_name")
    if class_name not in FAMILY_PIPELINES:
        raise UsageError(
            f"--pretrained_model_name_or_path {path!r} is a {class_name}; train_pu_text_to_image.py takes "
            f"{', '.join(FAMILY_PIPELINES)} (SD 1.x/2.x, SDXL, SD3, FLUX)."
        )
    return FAMILY_PIPELINES[class_name]


@torch.no_grad()
def encode_sdxl(tokenizers, text_encoders, captions: list[str], batch_size: int = 64) -> torch.Tensor:
    """SDXL's conditioning of ``captions`` as one tensor per row: the two encoders' penultimate hidden states
    concatenated (N × tokens × (d₁ + d₂)), then the second encoder's pooled embedding as one more token, zero-padded
    to that width (N × (tokens + 1) × (d₁ + d₂)). Frozen (no autograd)."""
    rows = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        states, pooled = [], None
        for tokenizer, text_encoder in zip(tokenizers, text_encoders):
            ids = tokenizer(
                chunk, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
            ).input_ids.to(next(text_encoder.parameters()).device)
            output = text_encoder(ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected pooled embedding (CLIPTextModelWithProjection)
        rows.append(pack_pooled(torch.cat(states, dim=-1), pooled))
    return torch.cat(rows)


def pack_pooled(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``tokens`` (N × T × W) with ``pooled`` (N × P, P ≤ W) appended as one more token, zero-padded to W."""
    if pooled.shape[-1] > tokens.shape[-1]:
        raise ValueError(
            f"A pooled embedding of {pooled.shape[-1]} does not fit one token of width {tokens.shape[-1]}."
        )
    token = torch.zeros(len(tokens), 1, tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
    token[:, 0, : pooled.shape[-1]] = pooled.to(tokens.dtype)
    return torch.cat([tokens, token], dim=1)


@torch.no_grad()
def encode_sd3(
    tokenizers, text_encoders, captions: list[str], batch_size: int = 64, max_sequence_length: int | None = None
) -> torch.Tensor:
    """SD3's conditioning of ``captions`` as one tensor per row, as StableDiffusion3Pipeline.encode_prompt builds it:
    both CLIP encoders' penultimate states concatenated and zero-padded to T5's width, followed by T5's states
    (max_sequence_length 256); the two CLIP pooled embeddings concatenated, packed as one more token."""
    rows = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        clip, pooled = [], []
        for tokenizer, text_encoder in zip(tokenizers[:2], text_encoders[:2]):
            ids = tokenizer(
                chunk, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
            ).input_ids.to(next(text_encoder.parameters()).device)
            output = text_encoder(ids, output_hidden_states=True)
            clip.append(output.hidden_states[-2])
            pooled.append(output[0])
        t5_ids = tokenizers[2](
            chunk, max_length=max_sequence_length or T5_MAX_SEQUENCE_LENGTH, padding="max_length", truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(next(text_encoders[2].parameters()).device)  # fmt: skip
        t5 = text_encoders[2](t5_ids)[0]
        clip = torch.cat(clip, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        tokens = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        rows.append(pack_pooled(tokens, torch.cat(pooled, dim=-1)))
    return torch.cat(rows)


@torch.no_grad()
def encode_flux(
    tokenizers, text_encoders, captions: list[str], batch_size: int = 64, max_sequence_length: int | None = None
) -> torch.Tensor:
    """FLUX's conditioning of ``captions`` as one tensor per row, as FluxPipeline.encode_prompt builds it: T5's
    states (max_sequence_length 512), with CLIP's pooled output packed as one more token."""
    rows = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        clip_ids = tokenizers[0](
            chunk, max_length=tokenizers[0].model_max_length, padding="max_length", truncation=True,
            return_tensors="pt",
        ).input_ids.to(next(text_encoders[0].parameters()).device)  # fmt: skip
        pooled = text_encoders[0](clip_ids, output_hidden_states=False).pooler_output
        t5_ids = tokenizers[1](
            chunk,
            max_length=max_sequence_length or FLUX_MAX_SEQUENCE_LENGTH,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(next(text_encoders[1].parameters()).device)
        t5 = text_encoders[1](t5_ids, output_hidden_states=False)[0]
        rows.append(pack_pooled(t5, pooled))
    return torch.cat(rows)


def pack_flux_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) latents as FLUX's sequence of 2×2 patches, (N, H/2 · W/2, 4C) (FluxPipeline's packing)."""
    n, c, h, w = latents.shape
    patches = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_flux_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_flux_latents` for (H, W) = (``height``, ``width``) latents."""
    n, _, channels = packed.shape
    patches = packed.view(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, channels // 4, height, width)


def flux_image_ids(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """FLUX's position ids of the (H/2 × W/2) patch grid of (H, W) latents: (row, column) in the last two axes."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def install_flux_packing(transformer, pooled_dim: int, guidance: float = FLUX_GUIDANCE):
    """Hooks on the FLUX ``transformer`` so that this project's calls ``model(x_t, t, packed_states)`` (x_t as
    (N, C, H, W) latents, t = σ·1000 as for SD3) become FluxPipeline's own call: latents packed into 2×2 patches with
    their position ids, T5 states with zero text ids, CLIP's pooled embedding, timestep σ, FLUX-dev's guidance
    embedding at ``guidance``, and the output unpacked to (N, C, H, W). A pipeline's own calls (which pass
    ``img_ids``) go through untouched. Returns the two hooks' handles."""
    pending = []  # the latent shape of each call of ours in flight (a stack: calls never nest, but be safe)

    def pack(module, args, kwargs):
        if kwargs.get("img_ids") is not None or len(args) != 3:
            pending.append(None)
            return None
        sample, timestep, states = args
        tokens, pooled = unpack_pooled(states, pooled_dim)
        _, _, height, width = sample.shape
        pending.append((height, width))
        kwargs.update(
            hidden_states=pack_flux_latents(sample),
            timestep=timestep / 1000,  # the transformer scales σ by 1000 itself (FluxPipeline passes t / 1000)
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            img_ids=flux_image_ids(height, width, sample.device, sample.dtype),
            txt_ids=torch.zeros(tokens.shape[1], 3, device=sample.device, dtype=sample.dtype),
        )
        if module.config.guidance_embeds:
            kwargs["guidance"] = torch.full((len(sample),), guidance, device=sample.device, dtype=torch.float32)
        return (), kwargs

    def unpack(module, args, kwargs, output):
        shape = pending.pop()
        if shape is None:
            return None
        if isinstance(output, tuple):
            return (unpack_flux_latents(output[0], *shape), *output[1:])
        output.sample = unpack_flux_latents(output.sample, *shape)
        return output

    return (
        transformer.register_forward_pre_hook(pack, with_kwargs=True),
        transformer.register_forward_hook(unpack, with_kwargs=True),
    )


def flux_training_scheduler(scheduler, latent_size: int):
    """FLUX-dev's scheduler shifts σ by the image's token count at sampling time (use_dynamic_shifting: μ from
    FluxPipeline's calculate_shift, σ → e^μ σ / (1 + (e^μ − 1) σ)). That is a fixed shift s = e^μ for one training
    resolution: returns ``scheduler`` set to it, so training draws σ as the pipeline samples at ``latent_size``
    (latent pixels per side). A scheduler without dynamic shifting is returned as it is."""
    import math

    config = scheduler.config
    if not config.get("use_dynamic_shifting"):
        return scheduler
    tokens = (latent_size // 2) ** 2
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    mu = base_shift + (max_shift - base_shift) / (max_len - base_len) * (tokens - base_len)  # calculate_shift
    scheduler.register_to_config(shift=math.exp(mu), use_dynamic_shifting=False)
    return scheduler


def install_sd3_unpacking(transformer, pooled_dim: int):
    """A forward pre-hook on the SD3 ``transformer``: this project's calls ``model(x_t, t, packed_states)`` become
    ``transformer(hidden_states=x_t, timestep=t, encoder_hidden_states=tokens, pooled_projections=pooled)``; a
    pipeline's own calls (which pass ``pooled_projections``) are untouched. Returns the hook's handle."""

    def unpack(module, args, kwargs):
        if kwargs.get("pooled_projections") is not None or len(args) != 3:
            return None
        sample, timestep, states = args
        tokens, pooled = unpack_pooled(states, pooled_dim)
        kwargs.update(hidden_states=sample, timestep=timestep, encoder_hidden_states=tokens, pooled_projections=pooled)
        return (), kwargs

    return transformer.register_forward_pre_hook(unpack, with_kwargs=True)


def unpack_pooled(states: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token states, pooled embedding) of a packed conditioning tensor (:func:`pack_pooled`)."""
    return states[:, :-1], states[:, -1, :pooled_dim]


def install_sdxl_unpacking(unet, pooled_dim: int, resolution: int):
    """A forward pre-hook on the SDXL ``unet``: a call without ``added_cond_kwargs`` carries packed states
    (:func:`encode_sdxl`); the hook splits off the pooled embedding and adds the time ids of an uncropped
    ``resolution`` image (original size = target size = resolution, crop 0). Returns the hook's handle."""
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)

    def unpack(module, args, kwargs):
        if kwargs.get("added_cond_kwargs") is not None:
            return None  # a pipeline's own call
        args = list(args)
        states = args[2] if len(args) > 2 else kwargs.pop("encoder_hidden_states")
        tokens, pooled = unpack_pooled(states, pooled_dim)
        if len(args) > 2:
            args[2] = tokens
        else:
            kwargs["encoder_hidden_states"] = tokens
        sample = args[0] if args else kwargs["sample"]
        ids = time_ids.to(device=sample.device, dtype=tokens.dtype).expand(len(sample), -1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
        return tuple(args), kwargs

    return unet.register_forward_pre_hook(unpack, with_kwargs=True)


@dataclass
class TextSide:
    """A family's frozen tokenizers and text encoders, and how they turn captions into one tensor per row."""

    family: str
    tokenizers: list
    text_encoders: list
    names: list = field(default_factory=list)  # the pipeline's component names, in order
    zeros_for_empty_prompt: bool = False  # SDXL's force_zeros_for_empty_prompt: its pipelines use zeros for ∅
    max_sequence_length: int | None = None  # SD3/FLUX: T5 tokens per caption (None: the pipeline's default)

    @classmethod
    def load(
        cls,
        family: str,
        path: str,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int | None = None,
    ) -> TextSide:
        side = cls._load(family, path, revision, variant)
        side.max_sequence_length = max_sequence_length
        return side

    @classmethod
    def _load(cls, family: str, path: str, revision: str | None, variant: str | None) -> TextSide:
        from transformers import (
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPTokenizer,
            T5EncoderModel,
            T5TokenizerFast,
        )

        if family == "sd":
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
            encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant)
            return cls(family, [tokenizer], [encoder], [""])
        if family == "sd3":
            tokenizers = [
                CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision),
                CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", revision=revision),
                T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_3", revision=revision),
            ]
            encoders = [
                CLIPTextModelWithProjection.from_pretrained(path, subfolder=name, revision=revision, variant=variant)
                for name in ("text_encoder", "text_encoder_2")
            ] + [T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3", revision=revision, variant=variant)]
            return cls(family, tokenizers, encoders, ["", "_2", "_3"])
        if family == "flux":
            tokenizers = [
                CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision),
                T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2", revision=revision),
            ]
            encoders = [
                CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant),
                T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", revision=revision, variant=variant),
            ]
            return cls(family, tokenizers, encoders, ["", "_2"])
        from diffusers import DiffusionPipeline

        zeros = DiffusionPipeline.load_config(path, revision=revision).get("force_zeros_for_empty_prompt", True)
        tokenizers = [
            CLIPTokenizer.from_pretrained(path, subfolder=f"tokenizer{s}", revision=revision) for s in ("", "_2")
        ]
        encoders = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant),
            CLIPTextModelWithProjection.from_pretrained(
                path, subfolder="text_encoder_2", revision=revision, variant=variant
            ),
        ]
        return cls(family, tokenizers, encoders, ["", "_2"], zeros_for_empty_prompt=bool(zeros))

    def encode(self, captions: list[str]) -> torch.Tensor:
        """One tensor per caption: SD's hidden states (encode_captions, unchanged), SDXL's packed conditioning."""
        if self.family == "sd":
            return encode_captions(self.tokenizers[0], self.text_encoders[0], captions)
        if self.family == "sd3":
            return encode_sd3(
                self.tokenizers, self.text_encoders, captions, max_sequence_length=self.max_sequence_length
            )
        if self.family == "flux":
            return encode_flux(
                self.tokenizers, self.text_encoders, captions, max_sequence_length=self.max_sequence_length
            )
        return encode_sdxl(self.tokenizers, self.text_encoders, captions)

    def sampling_kwargs(self) -> dict:
        """What the family's pipeline call needs to condition as training did (SD3/FLUX: max_sequence_length)."""
        if self.family in ("sd3", "flux") and self.max_sequence_length is not None:
            return {"max_sequence_length": self.max_sequence_length}
        return {}

    def empty(self) -> torch.Tensor:
        """The empty prompt ∅ (caption dropout, ESD's unconditional branch) as the family's pipeline samples it:
        the encoded "" for SD and SD3; for SDXL with force_zeros_for_empty_prompt (its default), all zeros (token
        states and pooled embedding), which is what StableDiffusionXLPipeline feeds its unconditional branch."""
        states = self.encode([""])
        return torch.zeros_like(states) if self.zeros_for_empty_prompt else states

    def to(self, device=None, dtype=None) -> TextSide:
        for encoder in self.text_encoders:
            encoder.requires_grad_(False)
            encoder.to(device=device, dtype=dtype).eval()
        return self

    def components(self) -> dict:
        """The pipeline's text components by name (tokenizer, text_encoder[, tokenizer_2, text_encoder_2])."""
        parts = {}
        for suffix, tokenizer, encoder in zip(self.names[: len(self.tokenizers)], self.tokenizers, self.text_encoders):
            parts[f"tokenizer{suffix}"] = tokenizer
            parts[f"text_encoder{suffix}"] = encoder
        return parts

    @property
    def dtype(self):
        return self.text_encoders[0].dtype


def prepare_unet(family: str, unet, text_side: TextSide, resolution: int) -> None:
    """What the family's UNet needs before it is called with one conditioning tensor per row (SDXL: the hook)."""
    if family == "sdxl":
        pooled_dim = text_side.text_encoders[-1].config.projection_dim
        install_sdxl_unpacking(unet, pooled_dim, resolution)
    if family == "sd3":
        install_sd3_unpacking(unet, unet.config.pooled_projection_dim)
    if family == "flux":
        install_flux_packing(unet, unet.config.pooled_projection_dim)


PIPELINE_CLASS_NAMES = {family: name for name, family in FAMILY_PIPELINES.items()}
