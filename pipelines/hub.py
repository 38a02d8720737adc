"""Publishing an output folder to the Hugging Face Hub."""

from __future__ import annotations

import os

from pu_diffusion.outputs import read_manifest
from pu_diffusion.run_dir import claim_outputs

from .card import write_model_card

HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "logs", "logs/**"]


def push_output_dir(
    output_dir: str, hub_model_id: str, token: str | None = None, commit_message: str = "End of training"
) -> str:
    """Create (if needed) ``hub_model_id`` and upload what runs wrote into ``output_dir`` (its manifest), without
    checkpoints or logs."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id=hub_model_id, exist_ok=True, token=token).repo_id
    # Only what runs wrote: a user's own files beside the pipeline are never uploaded.
    owned = read_manifest(output_dir)["names"]
    upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message=commit_message,
        allow_patterns=[pattern for name in owned for pattern in (name, f"{name}/**")],
        ignore_patterns=HUB_IGNORE_PATTERNS,
        token=token,
    )
    return repo_id


def publish_run(
    output_dir: str,
    run: dict,
    data_info: dict,
    images: list[str],
    base_model: str | None = None,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
    **card_options,
) -> str | None:
    """The end of every training run: write the model card, then (with ``push_to_hub``) upload the folder.

    Returns the hub repo id when pushed. ``card_options`` go to :func:`write_model_card` (extra_tags, usage, notes).
    """

    repo_id = (hub_model_id or os.path.basename(os.path.abspath(output_dir))) if push_to_hub else None
    claim_outputs(output_dir, ["README.md"])
    write_model_card(output_dir, run, data_info, images=images, base_model=base_model, repo_id=repo_id, **card_options)
    if push_to_hub:
        return push_output_dir(output_dir, repo_id, token=hub_token)
    return None
