"""Model cards for trained PU pipelines, built with diffusers' model-card helpers."""

from __future__ import annotations

import json
import os

from pu_diffusion.metrics import CLASSIFIER_FD
from pu_diffusion.outputs import write_atomic

METHOD_TEXT = {
    "pu": "Positive-Unlabeled diffusion (Takahashi et al., ICLR 2025): the per-sample diffusion loss ℓ is read "
    "as a classifier p(normal|x) = exp(−ℓ) and trained with an unbiased PU risk, so the ELBO is maximised on "
    "the normal part of the unlabeled data and minimised on the labelled sensitive data.",
    "supervised": "Supervised baseline: all unlabeled data is treated as normal (L_U⁻ + L_S⁺).",
    "unsupervised": "Unsupervised baseline: plain diffusion training on the unlabeled data (L_U⁻).",
    "erasediff": "EraseDiff (Wu et al.), a competing method: the usual diffusion loss on the unlabeled data plus "
    "λ times a loss that trains the labelled sensitive data towards a different target (uniform noise, or the "
    "model's own prediction under an anchor prompt).",
    "esd-x": "ESD (Gandikota et al., ICCV 2023), a competing method, cross-attention layers only: the prediction "
    "for the sensitive caption is trained towards a frozen copy's negatively guided prediction.",
    "esd-u": "ESD (Gandikota et al., ICCV 2023), a competing method, all but the cross-attention layers: the "
    "prediction for the sensitive caption is trained towards a frozen copy's negatively guided prediction.",
}
PU_METHODS = ("pu", "supervised", "unsupervised")  # tagged positive-unlabeled (the method and its baselines)


def _format_metrics(metrics: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines)


def usage_snippet(
    location: str,
    prompt: str | None = None,
    lora_base_model: str | None = None,
    pipeline_class: str = "StableDiffusionPipeline",
) -> str:
    """Python that loads the trained model from ``location`` (a folder or hub id) and generates one image.

    ``prompt``: text-to-image pipelines; ``lora_base_model``: the output holds LoRA weights for that base.
    """
    call = f"pipeline({prompt!r})" if prompt is not None else "pipeline()"
    if lora_base_model:
        return (
            f"from diffusers import {pipeline_class}\n\n"
            f"pipeline = {pipeline_class}.from_pretrained({lora_base_model!r})\n"
            f"pipeline.load_lora_weights({location!r})\n"
            f"image = {call}.images[0]\n"
        )
    return (
        "from diffusers import DiffusionPipeline\n\n"
        f"pipeline = DiffusionPipeline.from_pretrained({location!r})\n"
        f"image = {call}.images[0]\n"
    )


def write_model_card(
    output_dir: str,
    run: dict,
    data: dict,
    metrics: dict | None = None,
    images: list[str] | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    extra_tags: list[str] | None = None,
    usage: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """Write ``output_dir/README.md``: base model, method, β and how it was chosen, data sizes, metrics, samples.

    ``run`` holds the public training flags (never the hub token), ``data`` the U/S/test sizes and source.
    """
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    method = run.get("method", "pu")
    beta_line = ""
    if method == "pu":
        beta, source = f"**{_short(run.get('beta'))}**", run.get("beta_source", "given with --beta")
        if "unlabeled_filter" in run:  # --pu_filter_unlabeled: PU trained with the β left in the kept U
            before = f"**{_short(run['unlabeled_filter']['beta_before'])}**"
            if "beta_below_floor" in run["unlabeled_filter"]:  # --pu_filter_min_beta raised it for the cut
                before += f" (raised from {_short(run['unlabeled_filter']['beta_below_floor'])})"
            beta_line = (
                f"- β (fraction of U assumed sensitive): {before} over all of U, {beta} in the U it trained on "
                f"after the U filter: {source}\n"
            )
        else:
            beta_line = f"- β (fraction of U assumed sensitive): {beta}, {source}\n"
    estimator = f" ({run.get('pu_estimator', 'abs')}PU risk)" if method == "pu" else ""
    cap, fraction = run.get("pu_sensitive_cap"), run.get("pu_sensitive_cap_fraction")
    if method == "pu" and (cap is not None or fraction is not None):
        kappas = ([_short(cap)] if cap is not None else []) + (
            [f"{_short(fraction)}/β"] if fraction is not None else []
        )
        kappa = kappas[0] if len(kappas) == 1 else f"min({', '.join(kappas)})"
        at = "at its noise level" if run.get("pu_sensitive_cap_reference") == "timestep" else "in the batch"
        beta_line += (
            f"- S-loss cap (not in the paper): each sensitive sample's ℓ in the subtracted β·L_S⁻ is capped at "
            f"κ = {kappa} times the unlabeled data's mean ℓ {at}\n"
        )
    image_lines = "".join(f"![samples]({os.path.relpath(path, output_dir)})\n\n" for path in images or [])
    description = (
        f"# {repo_id or os.path.basename(os.path.abspath(output_dir))}\n\n"
        f"A diffusion model trained with **pu-diffusion** to generate only normal data.\n\n"
        f"## Method{estimator}\n\n{METHOD_TEXT.get(method, method)}\n\n"
        f"- base model: {base_model or 'trained from scratch'}\n"
        f"- method: `{method}`"
        + (f" ({run.get('supervised_form', 'paper')} form)" if method == "supervised" else "")
        + f"\n{beta_line}"
        + (
            "- objective: flow matching (rectified flow, FlowMatchEulerDiscreteScheduler): ℓ = ‖v_θ(x_t) − (ε − x)‖² "
            "with x_t = (1 − σ) x + σ ε\n"
            if run.get("training_objective") == "flow_matching"
            else ""
        )
        + f"- loss reduction: {run.get('loss_reduction', 'sum')} of squared error per sample\n"
        f"- steps: {run.get('max_train_steps')}, batch: {run.get('train_batch_size')} unlabeled + "
        f"{run.get('sensitive_batch_size')} sensitive, learning rate {run.get('learning_rate')}\n\n"
        f"## Data\n\n"
        + "\n".join(f"- {key}: {value}" for key, value in data.items())
        + "\n\n"
        + (f"## Evaluation\n\n{_format_metrics(metrics)}\n\n" if metrics else "")
        + (f"## Samples\n\n{image_lines}" if image_lines else "")
        + "".join(f"- {note}\n" for note in notes or [])
        + ("\n" if notes else "")
        + "## Usage\n\n```python\n"
        + (usage or usage_snippet(repo_id or output_dir))
        + "```\n\n"
        "## Training flags\n\n```json\n" + json.dumps(run, indent=1, sort_keys=True, default=str) + "\n```\n"
    )
    # The same template diffusers' training examples fill (load_or_create_model_card would query the Hub first).
    card = ModelCard.from_template(
        card_data=ModelCardData(license="apache-2.0", library_name="diffusers", base_model=base_model),
        template_path=MODEL_CARD_TEMPLATE_PATH,
        model_description=description,
    )
    card = populate_model_card(
        card,
        tags=["diffusers", "pu-diffusion"]
        + (["positive-unlabeled"] if method in PU_METHODS else ["concept-erasure"])
        + [f"method-{method}"]
        + list(extra_tags or []),
    )
    return write_atomic(os.path.join(output_dir, "README.md"), str(card))


METRIC_KEYS = (
    "non_sensitive_rate",
    "non_sensitive_rate_interval",
    "ceiling",
    CLASSIFIER_FD,
    "frechet_distance_inception",
    "num_samples",
    "feature_space",
    "classifier",
    "sampler",
    "num_inference_steps",
    "seed",
    "samples_per_second",
)


def add_metrics_to_model_card(pipeline_path: str, metrics: dict) -> str:
    """Add (or replace) an '## Evaluation' section in the pipeline's README.md."""
    path = os.path.join(pipeline_path, "README.md")
    text = open(path).read() if os.path.exists(path) else ""
    marker = "\n## Evaluation (evaluate_pu_diffusion.py)\n"
    if marker in text:
        head, rest = text.split(marker, 1)
        tail = rest[rest.find("\n## ") :] if "\n## " in rest else ""
        text = head + tail
    section = (
        marker
        + "\n| metric | value |\n|---|---|\n"
        + "".join(
            f"| {key} | {metrics[key]:.4f} |\n"
            if isinstance(metrics.get(key), float)
            else f"| {key} | {metrics[key][0]:.4f} – {metrics[key][1]:.4f} (95 % Wilson) |\n"
            if key.endswith("_interval")
            else f"| {key} | {metrics.get(key)} |\n"
            for key in METRIC_KEYS
            if key in metrics
        )
    )
    usage = text.find("\n## Usage")
    text = text[:usage] + section + text[usage:] if usage >= 0 else text + section
    return write_atomic(path, text)


def _short(value):
    """4 significant digits for an estimated β; anything else as given."""
    return f"{value:.4g}" if isinstance(value, float) else value
