"""What a trained PU model becomes: a stock diffusers pipeline folder, its model card, a hub repo.

Nothing here is needed to *use* a trained model: ``DiffusionPipeline.from_pretrained(output_dir)``
loads it with stock diffusers classes. These helpers write that folder, describe it, publish it,
and score images with the model's own per-sample diffusion loss ℓ.
"""

from .card import write_model_card
from .hub import HUB_IGNORE_PATTERNS, push_output_dir
from .saving import save_image_grid, save_unconditional_pipeline, unconditional_pipeline
from .scoring import diffusion_losses, normal_probability

__all__ = [
    "write_model_card", "push_output_dir", "HUB_IGNORE_PATTERNS", "save_unconditional_pipeline",
    "unconditional_pipeline", "save_image_grid", "diffusion_losses", "normal_probability",
]
