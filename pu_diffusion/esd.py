"""ESD, Erased Stable Diffusion (Gandikota et al., ICCV 2023): a competing method for text-to-image only.

ESD needs the concept's prompt c, no images. Each step it draws latents x_t by sampling the model being trained
with c (guidance 3, stopped at a random step: DDIM for diffusion models, the Euler flow sampler for rectified-flow
ones), and regresses the trained prediction for c onto a negatively guided prediction of a frozen copy θ* of the
starting denoiser:

    target = ε*(x_t, ∅) − η · [ε*(x_t, c) − ε*(x_t, ∅)]          loss = ‖ε_θ(x_t, c) − target‖²

For a flow model the prediction is the velocity v. At fixed x_t and σ, v = (ε − x_t)/(1 − σ) is affine in ε with
the same coefficients for every prompt, so negative guidance on v is negative guidance on ε: the same target.

Parameter sets. UNets: ``esd-x`` trains the cross-attention layers only (``attn2``: erases the concept where the
prompt names it), ``esd-u`` everything else but the time embedding and the output layers (as the authors'
``noxattn``; erases it more globally). MMDiT transformers (SD3, FLUX), where the text reaches the image only through
joint attention: ``esd-x`` trains the blocks' joint attention (``.attn.``), ``esd-u`` the rest of the blocks (MLPs,
modulation, SD3.5's image-only ``attn2``); embedders and output layers stay. With LoRA adapters (on the attention
projections) each set trains the adapters inside it: esd-u the self-attention adapters of a UNet. It cannot act on
an unconditional model: there is no prompt to guide away from. The frozen copy is the LoRA-off base when training
LoRA (no extra memory), else a second denoiser held in memory.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from .cli import UsageError
from .losses import RiskTerms, per_sample_diffusion_loss

ESD_METHODS = ("esd-x", "esd-u")


ESD_U_EXCLUDED = ("time_embedding.", "conv_norm_out.", "conv_out.")  # the authors' noxattn skips these too
TRANSFORMER_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")  # SD3 / FLUX MMDiT blocks


def is_cross_attention(name: str) -> bool:
    """Whether a UNet2DConditionModel parameter name belongs to a cross-attention layer (``attn2``)."""
    return ".attn2." in name


def in_esd_set(name: str, method: str, transformer: bool = False) -> bool:
    """Whether ``method`` (esd-x / esd-u) trains the parameter ``name`` of a UNet2DConditionModel, or of an MMDiT
    transformer (SD3, FLUX) when ``transformer``."""
    if transformer:
        if not name.startswith(TRANSFORMER_BLOCKS):
            return False
        joint_attention = ".attn." in name
        return joint_attention if method == "esd-x" else not joint_attention
    if method == "esd-x":
        return is_cross_attention(name)
    return not is_cross_attention(name) and not name.startswith(ESD_U_EXCLUDED)


def select_esd_parameters(unet, method: str) -> list[torch.nn.Parameter]:
    """Freeze every parameter outside the method's set; return the trainable ones (LoRA: their adapters only)."""
    if method not in ESD_METHODS:
        raise ValueError(f"Unknown ESD method {method!r}: use one of {ESD_METHODS}.")
    lora = any("lora_" in name for name, _ in unet.named_parameters())
    transformer = hasattr(unet, "transformer_blocks")  # SD3Transformer2DModel, FluxTransformer2DModel
    selected = []
    for name, parameter in unet.named_parameters():
        keep = in_esd_set(name, method, transformer) and ("lora_" in name if lora else True)
        parameter.requires_grad_(keep)
        if keep:
            selected.append(parameter)
    if not selected:
        raise UsageError(
            f"--method {method} found no parameter to train in this {type(unet).__name__}"
            + (
                ": its LoRA adapters (--rank) all sit in the joint attention, which esd-u leaves alone. "
                "Use --method esd-x, or drop --rank to train the blocks' other layers."
                if lora and transformer and method == "esd-u"
                else "."
            )
        )
    return selected


class FrozenCopy:
    """θ*: the starting UNet, frozen. With LoRA adapters it is the same module with its adapters switched off."""

    def __init__(self, unet, lora: bool, device=None, dtype=None):
        self.lora = lora
        self.unet = unet if lora else copy.deepcopy(unet).requires_grad_(False).eval().to(device=device, dtype=dtype)

    @property
    def extra_bytes(self) -> int:
        """Memory the copy adds (0 for the LoRA-off base)."""
        if self.lora:
            return 0
        return sum(t.numel() * t.element_size() for t in list(self.unet.parameters()) + list(self.unet.buffers()))

    @torch.no_grad()
    def __call__(self, latents, timesteps, text_states):
        dtype = self.unet.dtype
        with adapters_off(self.unet) if self.lora else contextlib.nullcontext():
            prediction = self.unet(latents.to(dtype), timesteps, text_states.to(dtype), return_dict=False)[0]
        return prediction.float()


@contextlib.contextmanager
def adapters_off(unet):
    """The base model inside the block; after it the adapters are back with every requires_grad as it was
    (PEFT's enable_adapters would make all adapter weights trainable again, undoing esd-x / esd-u)."""
    flags = [parameter.requires_grad for parameter in unet.parameters()]
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
        for parameter, flag in zip(unet.parameters(), flags):
            parameter.requires_grad_(flag)


@torch.no_grad()
def sample_concept_latents(
    unet,
    scheduler,
    concept_state,
    empty_state,
    shape,
    num_steps: int = 50,
    guidance_scale: float = 3.0,
    stop: int | None = None,
):
    """(x_t, t): sampling with the concept prompt, stopped after ``stop`` steps (ESD's x_t).

    ``scheduler``: its own DDIMScheduler, or FlowMatchEulerDiscreteScheduler for a rectified-flow model
    (``set_timesteps`` is called here). ``stop``: drawn uniformly from [0, num_steps) when None. t =
    ``scheduler.timesteps[stop]``, the timestep x_t is at: the one the next sampling step would denoise from (for a
    flow model σ·T, as the model is called). ``guidance_scale`` 1 runs the concept branch only (as FluxPipeline
    samples by default: its embedded guidance, no classifier-free guidance).
    """
    device = concept_state.device
    scheduler.set_timesteps(num_steps, device=device)
    if stop is None:
        stop = int(torch.randint(0, num_steps, ()).item())
    latents = torch.randn(shape, device=device) * getattr(scheduler, "init_noise_sigma", 1.0)  # flow: 1
    batch = shape[0]
    guided = guidance_scale != 1
    states = [empty_state.expand(batch, -1, -1)] if guided else []
    states = torch.cat([*states, concept_state.expand(batch, -1, -1)]).to(unet.dtype)
    for timestep in scheduler.timesteps[:stop]:
        model_input = torch.cat([latents, latents]) if guided else latents
        step = timestep.expand(len(model_input))
        prediction = unet(model_input.to(unet.dtype), step, states, return_dict=False)[0].float()
        if guided:
            empty, concept = prediction.chunk(2)
            prediction = empty + guidance_scale * (concept - empty)
        latents = scheduler.step(prediction, timestep, latents).prev_sample
    timesteps = scheduler.timesteps[stop].expand(batch).to(device)
    return latents, timesteps


def esd_target(frozen: FrozenCopy, latents, timesteps, concept_state, empty_state, eta: float) -> torch.Tensor:
    """ε*(x_t, ∅) − η [ε*(x_t, c) − ε*(x_t, ∅)] from the frozen copy (no gradient)."""
    batch = latents.shape[0]
    empty = frozen(latents, timesteps, empty_state.expand(batch, -1, -1))
    concept = frozen(latents, timesteps, concept_state.expand(batch, -1, -1))
    return empty - eta * (concept - empty)


def esd_risk(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> RiskTerms:
    """RiskTerms of the ESD loss (logged as "risk" and as L_S⁻, the loss on the concept's own prompt)."""
    loss = per_sample_diffusion_loss(prediction, target, reduction).mean()
    zero = torch.zeros((), device=loss.device)
    return RiskTerms(objective=loss, risk=loss, L_U_neg=zero, L_S_neg=loss, L_S_pos=zero, negative_risk=zero)


@dataclass
class ESDContext:
    """What an ESD step needs beside the model: θ*, the sampler that draws x_t, the concept's text state, and the
    shape (C, H, W) of the latents it trains on."""

    frozen: FrozenCopy
    scheduler: object  # DDIMScheduler, or FlowMatchEulerDiscreteScheduler for a flow model
    concept_state: torch.Tensor
    latent_shape: tuple[int, int, int]
    eta: float = 1.0
    sampling_steps: int = 50
    start_guidance: float = 3.0


def esd_step(unet, raw_unet, context: ESDContext, empty_state, batch_size: int, reduction: str = "sum"):
    """One ESD step: draw x_t with the concept prompt, build the frozen negative-guidance target, compare."""
    shape = (batch_size, *context.latent_shape)
    empty_state = empty_state.to(context.concept_state.dtype)
    latents, timesteps = sample_concept_latents(
        raw_unet,
        context.scheduler,
        concept_state=context.concept_state,
        empty_state=empty_state,
        shape=shape,
        num_steps=context.sampling_steps,
        guidance_scale=context.start_guidance,
    )
    target = esd_target(
        context.frozen,
        latents,
        timesteps,
        concept_state=context.concept_state,
        empty_state=empty_state,
        eta=context.eta,
    )
    prediction = unet(latents, timesteps, context.concept_state.expand(batch_size, -1, -1), return_dict=False)[0]
    return esd_risk(prediction, target, reduction)
