"""Publishing an output folder to the Hugging Face Hub."""

from __future__ import annotations

HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "logs", "logs/**", "step_*", "epoch_*"]


def push_output_dir(output_dir: str, hub_model_id: str, token: str | None = None,
                    commit_message: str = "End of training") -> str:
    """Create (if needed) ``hub_model_id`` and upload the pipeline and model card, without checkpoints or logs."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id=hub_model_id, exist_ok=True, token=token).repo_id
    upload_folder(repo_id=repo_id, folder_path=output_dir, commit_message=commit_message,
                  ignore_patterns=HUB_IGNORE_PATTERNS, token=token)
    return repo_id
