"""What a trained PU model becomes: a stock diffusers pipeline folder, its model card, a hub repo.

Nothing here is needed to *use* a trained model: ``DiffusionPipeline.from_pretrained(output_dir)``
loads it with stock diffusers classes. These helpers build and write that folder, describe it, publish
it, and score images with the model's own per-sample diffusion loss ℓ (computed by the library).
"""

from .card import add_metrics_to_model_card, write_model_card
from .hub import publish_run, push_output_dir
from .saving import unconditional_pipeline
from .scoring import normal_probability, score_images

__all__ = [
    "add_metrics_to_model_card",
    "write_model_card",
    "publish_run",
    "push_output_dir",
    "unconditional_pipeline",
    "normal_probability",
    "score_images",
]
