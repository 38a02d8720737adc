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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cli import UsageError
from .text_to_image import encode_captions

FAMILY_PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


def detect_family(path: str, revision: str | None = None) -> str:
    """The family of the pipeline at ``path`` from its model_index.json (``_class_name``)."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(path, revision=revision).get("_class_name")
    if class_name not in FAMILY_PIPELINES:
        raise UsageError(
            f"--pretrained_model_name_or_path {path!r} is a {class_name}; train_pu_text_to_image.py takes "
            f"{', '.join(FAMILY_PIPELINES)} (SD 1.x/2.x and SDXL). SD3 and FLUX are not supported yet."
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
        states = torch.cat(states, dim=-1)
        token = torch.zeros(len(chunk), 1, states.shape[-1], dtype=states.dtype, device=states.device)
        token[:, 0, : pooled.shape[-1]] = pooled.to(states.dtype)
        rows.append(torch.cat([states, token], dim=1))
    return torch.cat(rows)


def unpack_sdxl_states(states: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token states, pooled embedding) of a packed SDXL conditioning tensor (:func:`encode_sdxl`)."""
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
        tokens, pooled = unpack_sdxl_states(states, pooled_dim)
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

    @classmethod
    def load(cls, family: str, path: str, revision: str | None = None, variant: str | None = None) -> TextSide:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        if family == "sd":
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
            encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant)
            return cls(family, [tokenizer], [encoder], [""])
        tokenizers = [
            CLIPTokenizer.from_pretrained(path, subfolder=f"tokenizer{s}", revision=revision) for s in ("", "_2")
        ]
        encoders = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant),
            CLIPTextModelWithProjection.from_pretrained(
                path, subfolder="text_encoder_2", revision=revision, variant=variant
            ),
        ]
        return cls(family, tokenizers, encoders, ["", "_2"])

    def encode(self, captions: list[str]) -> torch.Tensor:
        """One tensor per caption: SD's hidden states (encode_captions, unchanged), SDXL's packed conditioning."""
        if self.family == "sd":
            return encode_captions(self.tokenizers[0], self.text_encoders[0], captions)
        return encode_sdxl(self.tokenizers, self.text_encoders, captions)

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


PIPELINE_CLASS_NAMES = {family: name for name, family in FAMILY_PIPELINES.items()}
