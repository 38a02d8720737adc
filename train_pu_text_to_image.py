#!/usr/bin/env python
"""Fine-tune Stable Diffusion 1.x/2.x or SDXL with the conditional, guidance-aware PU loss (concept suppression).

U: images with a normal caption, some of which secretly show the sensitive concept; S: labelled images
of the concept. The PU risk on ℓ(x, c) makes "a photo of a middle-aged man" stop producing Brad Pitt.
The VAE and text encoder are frozen and never enter autograd; with --cache_latents (default for small
datasets with --center_crop) their outputs are computed once.

    accelerate launch train_pu_text_to_image.py --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \
      --train_data_dir data/middle_aged_man --caption_column text --method pu --beta 0.2 --resolution 512 \
      --center_crop --train_batch_size 16 --learning_rate 1e-5 --max_train_steps 5000 --mixed_precision fp16 \
      --validation_prompts "a photo of a middle-aged man" --output_dir sd-pu
"""

import argparse
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler

from pipelines import publish_run
from pipelines.card import usage_snippet
from pipelines.saving import (
    LORA_WEIGHTS_NAME,
    RETIRED,
    STAGING,
    save_lora_weights,
    save_pipeline,
    stable_diffusion_pipeline,
)
from pu_diffusion import training
from pu_diffusion.arguments import (
    HelpWithDefaults,
    add_model_arguments,
    add_shared_arguments,
    note_preset_defaults,
    score_repeats_default,
    sensitive_cap_defaults,
    validate_training_args,
)
from pu_diffusion.beta import ESTIMATION_RESOLUTION
from pu_diffusion.checkpoints import register_model_hooks
from pu_diffusion.cli import UsageError, finite_float, run_cli
from pu_diffusion.erasediff import erasediff_step
from pu_diffusion.esd import ESD_METHODS, ESDContext, FrozenCopy, esd_step, select_esd_parameters
from pu_diffusion.families import (
    FLOW_FAMILIES,
    PIPELINE_CLASS_NAMES,
    TextSide,
    denoiser_class,
    denoiser_name,
    detect_family,
    flux_training_scheduler,
    prepare_unet,
)
from pu_diffusion.grids import save_image_grid
from pu_diffusion.image_data import load_captions
from pu_diffusion.losses import (
    METHODS,
    RiskTerms,
    noisy_input_and_target,
    per_sample_diffusion_loss,
    sample_timesteps,
)
from pu_diffusion.models import check_resolution, load_training_scheduler, loading, match_sample_size
from pu_diffusion.pu_dataset import ImageTransform, images_as_tensor
from pu_diffusion.run_dir import claim_outputs, public_config
from pu_diffusion.text_to_image import (
    CACHE_LATENTS_MAX_ROWS,
    TextImageDataset,
    caption_dropout_mask,
    collate_text_image_batch,
    drop_captions,
    encode_latent_parameters,
    encode_latents_once,
    predict_noise,
    sample_latents,
    unlabeled_captions_for_sensitive_rows,
    use_latent_cache,
    vae_scale_factor,
)

logger = get_logger(__name__, log_level="INFO")

# What a run writes into --output_dir besides pu_run.json, checkpoints and logs (each claimed when written): the
# base pipeline's components and model_index.json (full UNet), or the LoRA weights (--rank); grids; the card.
OUTPUTS = (
    "README.md", "validation", "model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
    "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3", "transformer",
    "safety_checker", "feature_extractor", "image_encoder", LORA_WEIGHTS_NAME, training.TRAIN_STATS, STAGING, RETIRED,
)  # fmt: skip

# This script's defaults, in one place.
DEFAULTS = {
    "output_dir": "sd-pu", "resolution": 512, "train_batch_size": 16, "sensitive_batch_size": 4,
    "learning_rate": 1e-5, "lr_scheduler": "constant", "lr_warmup_steps": 500, "adam_beta1": 0.9,
    "adam_weight_decay": 1e-2, "validation_steps": 500, "num_validation_images": 4, "num_inference_steps": 50,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="PU fine-tuning of Stable Diffusion 1.x (concept suppression).", formatter_class=HelpWithDefaults
    )
    model = add_model_arguments(
        parser,
        pretrained_help="Stable Diffusion 1.x pipeline folder or hub id, e.g. CompVis/stable-diffusion-v1-4.",
        required=True,
    )
    model.add_argument(
        "--prediction_type",
        type=str,
        default=None,
        choices=["epsilon", "v_prediction"],
        help="Train on this target instead of the base scheduler's; the saved pipeline's scheduler is set to match.",
    )
    model.add_argument("--rank", type=int, default=None, help="Train LoRA adapters of this rank instead of the UNet.")
    model.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers attention (default: PyTorch SDPA).",
    )
    text = parser.add_argument_group("captions")
    text.add_argument("--caption_column", type=str, default="text", help="The column holding each image's caption.")
    text.add_argument(
        "--sensitive_caption",
        type=str,
        default=None,
        help="Caption given to every S image (e.g. the normal caption, so p_U = βp_S + (1−β)p_N holds "
        "under one condition).",
    )
    text.add_argument(
        "--sensitive_conditioning",
        choices=["unlabeled", "own"],
        default="unlabeled",
        help="The caption the S rows' ℓ is taken under, for --method pu. 'unlabeled': each S row "
        "borrows the caption of a random U row of its batch, so S is scored as the part of U it is "
        "(p_U(x|c) = βp_S(x|c) + (1−β)p_N(x|c) under U's captions); S's own captions are kept in the data. "
        "'own': S's own captions (the authors' code; collapsed the micro benchmark, docs/benchmark_text_to_image.md).",
    )
    text.add_argument(
        "--proportion_empty_prompts",
        type=finite_float,
        default=0.0,
        help="Probability of replacing a caption by '' (trains the unconditional branch with PU too).",
    )
    text.add_argument(
        "--cache_latents",
        dest="cache_latents",
        action="store_true",
        default=None,
        help=f"Encode images (centre crops, and their flips) and captions once; needs --center_crop "
        f"(default: on with --center_crop for ≤{CACHE_LATENTS_MAX_ROWS} rows).",
    )
    text.add_argument(
        "--no_cache_latents",
        dest="cache_latents",
        action="store_false",
        help="Run the frozen VAE and text encoder on every batch.",
    )
    parser.add_argument(
        "--validation_prompts",
        type=str,
        nargs="*",
        default=None,
        help="Prompts of the validation grids (and of the final grid in the model card).",
    )
    parser.add_argument(
        "--guidance_scale", type=finite_float, default=7.5, help="Guidance scale of validation sampling."
    )
    parser.add_argument(
        "--max_sequence_length",
        type=int,
        default=None,
        help="SD3 and FLUX: the T5 encoder's tokens per caption (default: the pipeline's, 256 for SD3, 512 for FLUX). "
        "Sample with the same max_sequence_length.",
    )
    parser.add_argument(
        "--erasediff_anchor_prompt",
        type=str,
        default=None,
        help="--method erasediff: S rows learn sg ε(x_t, anchor) under their own caption (default: U's caption "
        "when every U image has the same one).",
    )
    esd = parser.add_argument_group("ESD (--method esd-x / esd-u; needs the S caption only, not the images)")
    esd.add_argument("--esd_eta", type=finite_float, default=1.0, help="η of the negative guidance in ESD's target.")
    esd.add_argument(
        "--esd_sampling_steps",
        type=int,
        default=50,
        help="Steps of the run that draws x_t, stopped at random (DDIM; the Euler flow sampler for SD3 and FLUX).",
    )
    esd.add_argument(
        "--esd_start_guidance",
        type=finite_float,
        default=3.0,
        help="Classifier-free guidance of that run (FLUX: on top of its embedded guidance, as FluxPipeline's "
        "true_cfg_scale; 1 samples with the concept alone).",
    )
    add_shared_arguments(parser, methods=(*METHODS, "erasediff", *ESD_METHODS))
    parser.set_defaults(**DEFAULTS)
    note_preset_defaults(
        parser, {"num_train_epochs": "100 when neither it nor --max_train_steps is given"}, "When not given"
    )
    return parser


def parse_args(input_args=None):
    parser = build_parser()
    first, _ = parser.parse_known_args(input_args)
    if first.max_train_steps is None and first.num_train_epochs is None:
        parser.set_defaults(num_train_epochs=100)
    sensitive_cap_defaults(parser, input_args, default=None)  # no default cap here (not measured): refuses "0 + ρ"
    parser.set_defaults(**score_repeats_default(first))
    args = parser.parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args) -> None:
    """Refuse bad flags before anything is loaded or written."""
    if args.dataset_name is None and args.train_data_dir is None:
        raise UsageError("Give --dataset_name or --train_data_dir (U and S images with captions).")
    validate_training_args(args)
    if not 0.0 <= args.proportion_empty_prompts <= 1.0:
        raise UsageError(f"--proportion_empty_prompts must lie in [0, 1]; got {args.proportion_empty_prompts}.")
    if args.max_sequence_length is not None and not 1 <= args.max_sequence_length <= 512:
        raise UsageError(f"--max_sequence_length must lie in [1, 512]; got {args.max_sequence_length}.")
    if args.rank is not None and (args.rank < 1 or args.use_ema):
        raise UsageError("--rank must be >= 1 and cannot be combined with --use_ema.")
    if args.method in ESD_METHODS and args.prediction_type is not None:
        raise UsageError(
            f"--method {args.method} samples x_t and builds its target with the base model's prediction type: "
            "drop --prediction_type."
        )
    if args.method in ESD_METHODS and (args.esd_sampling_steps < 1 or args.esd_eta < 0):
        raise UsageError(
            f"--esd_sampling_steps must be >= 1 and --esd_eta >= 0; got {args.esd_sampling_steps} and {args.esd_eta}."
        )
    if args.cache_latents and not args.center_crop:
        raise UsageError(
            "--cache_latents encodes centre crops: add --center_crop, or drop --cache_latents to train on random crops."
        )


def load_data(args):
    """Dataset, U/S rows and the caption of every row (S captions replaced by --sensitive_caption)."""
    dataset, unlabeled_rows, sensitive_rows = training.load_pu_data(
        args, require_sensitive=args.method != "unsupervised"
    )
    captions = load_captions(dataset, args.caption_column)
    if args.sensitive_caption is not None:
        for row in sensitive_rows:
            captions[int(row)] = args.sensitive_caption
    return dataset, unlabeled_rows, sensitive_rows, captions


def sensitive_caption_warning(args, captions, unlabeled_rows, sensitive_rows) -> str | None:
    """A warning when --sensitive_conditioning own would score S under captions that no U image has.

    The PU risk subtracts β·ℓ(S) from ℓ(U) as if S were a part of U's distribution; that holds under U's captions
    only. On the micro Stable Diffusion benchmark, PU with S scored under its own caption collapsed (classifier-FD
    62-245 against unsupervised's 31-35); the default, --sensitive_conditioning unlabeled, does not.
    """
    if args.method != "pu" or args.sensitive_conditioning != "own":
        return None
    unseen = sorted({captions[int(row)] for row in sensitive_rows} - {captions[int(row)] for row in unlabeled_rows})
    if not unseen:
        return None
    return (
        f"{len(unseen)} S caption(s) never appear in U (e.g. {unseen[0]!r}), and --sensitive_conditioning own "
        "scores S under them. The PU risk treats S as a part of U, which holds only under U's captions; with S's "
        "own captions the micro Stable Diffusion benchmark's PU models collapsed "
        "(docs/benchmark_text_to_image.md). The default, --sensitive_conditioning unlabeled, scores S under U's "
        "captions and keeps yours in the data."
    )


def method_prompt(args, captions, unlabeled_rows, sensitive_rows) -> str | None:
    """The one prompt a competing method needs, or None for PU and its baselines.

    erasediff: its anchor, --erasediff_anchor_prompt or else U's caption; esd-x / esd-u: the concept c,
    --sensitive_caption or else S's caption. The fallback needs every image of that set to share one caption.
    """
    if args.method == "erasediff":
        given, rows, part, flag = args.erasediff_anchor_prompt, unlabeled_rows, "U", "--erasediff_anchor_prompt"
    elif args.method in ESD_METHODS:
        given, rows, part, flag = args.sensitive_caption, sensitive_rows, "S", "--sensitive_caption"
    else:
        return None
    if given is not None:
        return given
    distinct = sorted({captions[int(row)] for row in rows})
    if len(distinct) != 1:
        raise UsageError(
            f"--method {args.method} needs one prompt, but the {part} images have {len(distinct)} different "
            f"captions. Pass {flag}."
        )
    return distinct[0]


def check_family(accelerator, args, family: str, path: str) -> None:
    """Refuse what a family cannot do, before any weights are loaded (model configs only)."""
    from diffusers import DiffusionPipeline

    if family == "sdxl" and accelerator.mixed_precision == "fp16":
        raise UsageError(
            "--mixed_precision fp16: SDXL's VAE overflows in fp16 (NaN latents, silently skipped steps); use "
            "--mixed_precision bf16 or no."
        )
    if args.max_sequence_length is not None and family not in ("sd3", "flux"):
        raise UsageError(
            f"--max_sequence_length sets the T5 encoder's tokens of SD3 and FLUX; {path!r} is {family} (no T5): drop it."
        )
    if family == "flux" and accelerator.mixed_precision == "fp16":
        raise UsageError(
            "--mixed_precision fp16: FLUX's T5 encoder and transformer overflow in fp16; use --mixed_precision bf16."
        )
    if family == "sdxl":
        vae_config = AutoencoderKL.load_config(path, subfolder="vae", revision=args.revision)
        scheduler = DiffusionPipeline.load_config(path, revision=args.revision).get("scheduler", [None, None])[1]
        if vae_config.get("latents_mean") is not None or "EDM" in str(scheduler):
            raise UsageError(
                f"--pretrained_model_name_or_path {path!r} is an SDXL variant with an EDM scheduler or a latent "
                "mean/std (e.g. Playground v2.5), which this script does not model; use an SDXL base."
            )
        if args.resolution < 1024:
            logger.warning(
                "SDXL at --resolution %s: SDXL bases are trained at 1024 px and draw poorly below it; pass "
                "--resolution 1024 unless the base was made for %s.",
                args.resolution,
                args.resolution,
            )


def load_models(accelerator, args, family: str):
    """(text_side, vae, unet, noise_scheduler, weight_dtype); the encoders frozen, in weight_dtype (SDXL's VAE stays
    in fp32 under bf16 too: it is kept out of reduced precision, as diffusers' SDXL example does)."""
    path, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    text_side = TextSide.load(family, path, revision, variant, max_sequence_length=args.max_sequence_length)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision, variant=variant)
    unet = denoiser_class(family).from_pretrained(
        path, subfolder=denoiser_name(family), revision=revision, variant=variant
    )
    noise_scheduler = load_training_scheduler(path, revision=revision)  # DDPM noising, or the base's flow matching
    if family in FLOW_FAMILIES and args.prediction_type is not None:
        raise UsageError(
            f"--pretrained_model_name_or_path {path!r} is a rectified-flow model ({family}): "
            "it predicts velocities, so --prediction_type does not apply; drop it."
        )
    if args.prediction_type is not None and args.prediction_type != noise_scheduler.config.prediction_type:
        if args.rank:
            raise UsageError(
                f"--prediction_type {args.prediction_type} with --rank: LoRA weights load into the base pipeline, "
                f"whose scheduler predicts {noise_scheduler.config.prediction_type}, so they would sample wrongly. "
                "Drop --rank to save a full pipeline, or drop --prediction_type."
            )
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    vae_factor = vae_scale_factor(vae)
    if family == "flux":  # latents packed into 2×2 patches
        if args.resolution % (vae_factor * 2):
            raise UsageError(
                f"--resolution {args.resolution} must be a multiple of {vae_factor * 2} (the VAE's {vae_factor}× "
                "times FLUX's 2×2 latent patches)."
            )
        flux_training_scheduler(noise_scheduler, args.resolution // vae_factor)  # σ shifted as sampled at this size
    elif family == "sd3":  # a patch transformer: the latent side must divide by its patch size
        patch, most = unet.config.patch_size, unet.config.pos_embed_max_size
        if args.resolution % (vae_factor * patch):
            raise UsageError(
                f"--resolution {args.resolution} must be a multiple of {vae_factor * patch} (the VAE's {vae_factor}× "
                f"times the transformer's {patch}-pixel patches)."
            )
        if most is not None and args.resolution // (vae_factor * patch) > most:
            raise UsageError(
                f"--resolution {args.resolution} is more than this SD3 transformer's position embeddings cover "
                f"({most} patches of {vae_factor * patch} px per side: at most {most * vae_factor * patch})."
            )
    else:
        check_resolution(unet, args.resolution, vae_factor=vae_factor)
    if family != "flux":  # FluxPipeline has no sample size in its config: users pass height and width
        match_sample_size(unet, args.resolution // vae_factor)
    vae.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=torch.float32 if family == "sdxl" else weight_dtype).eval()
    text_side.to(accelerator.device, dtype=weight_dtype)
    if args.rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        if family == "flux":  # the frozen 12B base in weight_dtype, as diffusers' FLUX LoRA example (48 GB in fp32)
            unet.to(dtype=weight_dtype)
        unet.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.rank,
                init_lora_weights="gaussian",
                target_modules=["to_k", "to_q", "to_v", "to_out.0"],
            )
        )
        for parameter in unet.parameters():  # the adapters train in fp32 (accelerate's autocast runs the rest)
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    prepare_unet(family, unet, text_side, args.resolution)  # SDXL: unpacks the pooled token and adds time ids
    return text_side, vae, unet, noise_scheduler, weight_dtype


def main(args):
    accelerator = training.setup_accelerator(args)
    resume_path = training.check_run(accelerator, args, outputs=OUTPUTS)

    # ---- Data (checked before anything is written) ----
    with accelerator.main_process_first():
        dataset, unlabeled_rows, sensitive_rows, captions = load_data(args)
    prompt = method_prompt(args, captions, unlabeled_rows, sensitive_rows)
    if warning := sensitive_caption_warning(args, captions, unlabeled_rows, sensitive_rows):
        logger.warning(warning)
    anchor_prompt = prompt if args.method == "erasediff" else None
    concept_prompt = prompt if args.method in ESD_METHODS else None
    with loading("--pretrained_model_name_or_path", args.pretrained_model_name_or_path):
        family = detect_family(args.pretrained_model_name_or_path, args.revision)  # model_index.json only
        check_family(accelerator, args, family, args.pretrained_model_name_or_path)

    # ---- β: as given, or estimated from U and S images (--beta auto; nothing is written yet) ----
    beta_info = training.resolve_beta(
        accelerator,
        args,
        resume_path,
        load_images=lambda: tuple(
            images_as_tensor(dataset, args.image_column, rows, min(args.resolution, ESTIMATION_RESOLUTION), 3)
            for rows in (unlabeled_rows, sensitive_rows)
        ),
    )

    # ---- Models: the UNet trains; VAE and text encoder are frozen and never enter autograd ----
    with loading("--pretrained_model_name_or_path", args.pretrained_model_name_or_path):
        text_side, vae, unet, noise_scheduler, weight_dtype = load_models(accelerator, args, family)
    esd = None
    if concept_prompt is not None:  # ESD: train one parameter set against a frozen copy of the starting UNet
        select_esd_parameters(unet, args.method)
        sampler = FlowMatchEulerDiscreteScheduler if family in FLOW_FAMILIES else DDIMScheduler  # draws x_t
        latent_side = args.resolution // vae_scale_factor(vae)
        esd = ESDContext(
            frozen=FrozenCopy(unet, lora=bool(args.rank), device=accelerator.device, dtype=weight_dtype),
            scheduler=sampler.from_config(noise_scheduler.config),
            concept_state=text_side.encode([concept_prompt]).to(weight_dtype),
            latent_shape=(vae.config.latent_channels, latent_side, latent_side),
            eta=args.esd_eta,
            sampling_steps=args.esd_sampling_steps,
            start_guidance=args.esd_start_guidance,
        )
    ema_model = training.make_ema(args, unet, denoiser_class(family))
    if not args.rank:  # LoRA checkpoints: accelerate saves the adapted UNet's state dict as safetensors itself
        register_model_hooks(accelerator, denoiser_class(family), ema_model)

    # ---- Batches: fixed U and S counts; latents and text states encoded once when cached ----
    transform = ImageTransform(args.resolution, 3, center_crop=args.center_crop, random_flip=args.random_flip)
    empty_state = text_side.empty()  # the empty prompt as the family's pipeline encodes it (SDXL: zeros)
    anchor_state = text_side.encode([anchor_prompt]) if anchor_prompt is not None else None
    latent_cache = text_cache = None
    if use_latent_cache(args.cache_latents, args.center_crop, len(dataset)):
        latent_cache, text_cache = encode_latents_once(
            dataset,
            args.image_column,
            captions,
            transform,
            vae,
            text_side.encode,
            rows=np.union1d(unlabeled_rows, sensitive_rows),
        )
        logger.info(f"Cached {len(latent_cache)} latents and {len(text_cache)} caption encodings")
    train_dataloader, batch_sampler = training.make_train_dataloader(
        args,
        TextImageDataset(dataset, args.image_column, captions, sensitive_rows, transform, latent_cache, text_cache),
        unlabeled_rows,
        sensitive_rows,
        collate_fn=collate_text_image_batch,
    )
    trainable = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    unet, optimizer, train_dataloader, lr_scheduler, plan = training.prepare_for_training(
        accelerator, args, unet, trainable, train_dataloader, ema_model
    )

    global_step = training.resume(accelerator, resume_path, args)  # loads only; writes nothing

    # ---- The first write: the run's flags ----
    training.start_run(
        accelerator, args, resume_path, plan, project_name="pu-text-to-image", derived={"beta_resolved": beta_info}
    )
    data_info = {
        "source": args.dataset_name or args.train_data_dir,
        "unlabeled (U) images": len(unlabeled_rows),
        "sensitive (S) images": len(sensitive_rows),
        "validation prompts": args.validation_prompts,
        "S caption override": args.sensitive_caption,
        "S scored under": "captions of U rows" if args.sensitive_conditioning == "unlabeled" else "their own captions",
        "caption dropout": args.proportion_empty_prompts,
        "cached latents": latent_cache is not None,
    }
    if anchor_prompt is not None:
        data_info["EraseDiff anchor prompt"] = anchor_prompt
    if esd is not None:
        data_info["ESD concept prompt (the images are not used)"] = concept_prompt
        data_info["ESD frozen copy (MB)"] = round(esd.frozen.extra_bytes / 2**20, 1)
    training.log_run_header(accelerator, args, plan, data_info, beta_info["beta"])

    # ---- Train ----
    compute_loss = make_compute_loss(
        accelerator,
        args,
        risk=training.make_risk(accelerator, args, beta_info["beta"], noise_scheduler.config.num_train_timesteps),
        encoders=FrozenEncoders(vae, text_side, empty_state, weight_dtype, vae.config.get("shift_factor")),
        noise_scheduler=noise_scheduler,
        trainable=trainable,
        anchor_state=anchor_state,
        esd=esd,
    )
    progress = training.TrainingProgress(accelerator, args, plan, global_step, ema_model, unet)
    unet.train()
    for batch in training.iterate_batches(accelerator, train_dataloader, batch_sampler, plan, progress.global_step):
        with accelerator.accumulate(unet):
            terms = compute_loss(unet, batch)
            accelerator.backward(terms.objective)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            progress.after_step(terms, lr_scheduler)
            if progress.validation_due() and args.validation_prompts:
                log_validation(
                    accelerator,
                    args,
                    unet,
                    vae,
                    family,
                    text_side,
                    noise_scheduler.config.get("prediction_type"),
                    progress.global_step,
                )
            if progress.done:
                break
    stats = progress.stats()

    # ---- Save the pipeline (or LoRA weights), a validation grid and the model card (and push) ----
    accelerator.wait_for_everyone()
    training.check_finite_weights(accelerator, unet, ema_model, stats["global_step"])
    if accelerator.is_main_process:
        unet = training.model_to_save(accelerator, unet, ema_model)
        if args.rank:
            save_lora_weights(args.output_dir, unet, family)
            has_safety_checker = None
        else:
            pipeline = stable_diffusion_pipeline(
                args.pretrained_model_name_or_path,
                unet=unet,
                vae=vae.to(torch.float32),
                prediction_type=noise_scheduler.config.get("prediction_type"),
                revision=args.revision,
                variant=args.variant,
                family=family,
                text_components=text_side.to(dtype=torch.float32).components(),
            )
            save_pipeline(pipeline, args.output_dir)
            has_safety_checker = getattr(pipeline, "safety_checker", None) is not None
        images = []
        if args.validation_prompts and args.num_validation_images:
            images = [
                log_validation(
                    accelerator,
                    args,
                    unet,
                    vae,
                    family,
                    text_side,
                    noise_scheduler.config.get("prediction_type"),
                    stats["global_step"],
                    final=True,
                )
            ]
        location = args.hub_model_id if args.push_to_hub and args.hub_model_id else args.output_dir
        prompt = (args.validation_prompts or ["a photo"])[0]
        usage = usage_snippet(
            location,
            prompt=prompt,
            lora_base_model=args.pretrained_model_name_or_path if args.rank else None,
            pipeline_class=PIPELINE_CLASS_NAMES[family],
        )
        notes = [f"model family: {family} ({PIPELINE_CLASS_NAMES[family]})"]
        if args.max_sequence_length is not None:
            notes.append(f"trained with max_sequence_length={args.max_sequence_length}: pass it when sampling")
        if family == "sd":
            notes += [
                safety_checker_note(has_safety_checker),
                "validation grids are generated without the safety checker",
            ]
        publish_run(
            args.output_dir,
            {**public_config(args), **plan.__dict__, **stats, **beta_info},
            data_info,
            images,
            base_model=args.pretrained_model_name_or_path,
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            hub_token=args.hub_token,
            usage=usage,
            notes=notes,
            extra_tags=["stable-diffusion", "text-to-image"]
            + (["stable-diffusion-xl"] if family == "sdxl" else [])
            + (["lora"] if args.rank else []),
        )
        training.write_train_stats(args.output_dir, stats)
    training.end_training(accelerator)
    return stats


def safety_checker_note(has_safety_checker: bool | None) -> str:
    if has_safety_checker is None:
        return "safety checker: LoRA weights only; the base pipeline's safety checker applies when loaded into it"
    if has_safety_checker:
        return "safety checker: kept from the base model"
    return "safety checker: none (the base model has none)"


@dataclass(frozen=True)
class FrozenEncoders:
    """The frozen VAE and text encoder (no autograd; skipped for a batch the cache already encoded)."""

    vae: object
    text_side: TextSide  # the family's tokenizers and text encoders: one conditioning tensor per caption
    empty_state: torch.Tensor  # the encoded empty caption (caption dropout, ESD)
    weight_dtype: torch.dtype
    shift_factor: float | None = None  # SD3's VAE: z = (μ + σε − shift) × scale

    def latents(self, batch, device) -> torch.Tensor:
        if "latent_parameters" in batch:
            latent_parameters = batch["latent_parameters"].to(device)
        else:
            latent_parameters = encode_latent_parameters(self.vae, batch["pixel_values"])
        return sample_latents(latent_parameters, self.vae.config.scaling_factor, self.shift_factor)

    def text_states(self, batch, device) -> torch.Tensor:
        if "text_states" in batch:
            return batch["text_states"].to(device)
        return self.text_side.encode(batch["captions"])


def make_compute_loss(
    accelerator, args, *, risk, encoders: FrozenEncoders, noise_scheduler, trainable, anchor_state=None, esd=None
):
    """This script's loss step, ``compute_loss(unet, batch) -> RiskTerms``: ℓ of every U and S row under its caption
    (one (t, ε) draw and one caption-dropout draw each, one forward pass), then the run's PURisk.

    --method erasediff: the S rows' target is sg ε(x_t, anchor) (the model's own prediction under the anchor
    prompt, ``anchor_state``), they keep their own caption; ``trainable`` serves its inner passes.
    --method esd-x / esd-u: the batch's images are not used (``esd``: θ*, the concept prompt, the sampler).
    --sensitive_conditioning unlabeled (pu): the S rows take the captions of random U rows first.
    """

    borrow_unlabeled_captions = args.sensitive_conditioning == "unlabeled" and args.method == "pu"

    def compute_loss(unet, batch) -> RiskTerms:
        raw_unet = accelerator.unwrap_model(unet)
        if esd is not None:
            batch_size = int(batch["is_sensitive"].sum())
            return esd_step(
                unet,
                raw_unet,
                esd,
                empty_state=encoders.empty_state,
                batch_size=batch_size,
                reduction=args.loss_reduction,
            )
        device = next(unet.parameters()).device
        latents = encoders.latents(batch, device)
        text_states = encoders.text_states(batch, device)
        if borrow_unlabeled_captions:
            text_states = unlabeled_captions_for_sensitive_rows(text_states, batch["is_sensitive"].to(device))
        drop = caption_dropout_mask(latents.shape[0], args.proportion_empty_prompts)  # one draw per row
        text_states = drop_captions(drop, text_states, encoders.empty_state).to(encoders.weight_dtype)
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        timesteps = sample_timesteps(noise_scheduler.config.num_train_timesteps, batch["is_sensitive"], device=device)
        noisy_latents, model_timesteps, target = noisy_input_and_target(noise_scheduler, latents, noise, timesteps)
        forward = functools.partial(predict_noise, unet, noisy_latents, model_timesteps, text_states)
        if args.method == "erasediff":
            forget = batch["is_sensitive"].to(device, torch.bool)
            rows = (noisy_latents[forget], model_timesteps[forget], text_states[forget].to(raw_unet.dtype))
            with torch.no_grad():  # sg ε(x_t, anchor): the model's own prediction under the anchor prompt
                anchor = anchor_state.to(raw_unet.dtype).expand(int(forget.sum()), -1, -1)
                anchor_prediction = raw_unet(rows[0], rows[1], anchor, return_dict=False)[0]
            forget_target = torch.zeros_like(target)
            forget_target[forget] = anchor_prediction.to(target.dtype)
            return erasediff_step(
                forward=forward,
                forget_forward=lambda: raw_unet(*rows, return_dict=False)[0],
                target=target,
                forget_target=forget_target,
                is_sensitive=forget,
                parameters=trainable,
                reduction=args.loss_reduction,
                lam=args.erasediff_lambda,
                eta=args.erasediff_eta,
                inner_steps=args.erasediff_inner_steps,
                learning_rate=args.learning_rate,
            )
        per_sample_loss = per_sample_diffusion_loss(forward(), target, args.loss_reduction)
        return risk(per_sample_loss, batch["is_sensitive"], timesteps)

    return compute_loss


def log_validation(
    accelerator, args, unet, vae, family, text_side, prediction_type: str, global_step: int, final: bool = False
):
    """Generate --num_validation_images per prompt; save one grid (a row per prompt) under validation/.

    The pipeline samples with the trained prediction type, without the safety checker.
    """
    pipeline = stable_diffusion_pipeline(
        args.pretrained_model_name_or_path,
        unet=accelerator.unwrap_model(unet),
        vae=vae,
        prediction_type=prediction_type,
        family=family,
        text_components=text_side.components(),
        revision=args.revision,
        variant=args.variant,
        keep_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed or 0)
    images = []
    # Frozen encoders may be fp16/bf16 while the trained UNet stays fp32: sample under autocast then.
    dtype = text_side.dtype
    autocast = torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype != torch.float32)
    for prompt in args.validation_prompts:
        with autocast:
            images += pipeline(
                [prompt] * args.num_validation_images,
                num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale,
                height=args.resolution,  # FluxPipeline would draw 1,024 px otherwise; the others' default
                width=args.resolution,
                **text_side.sampling_kwargs(),  # SD3/FLUX: the T5 length the model was trained with
                generator=generator,
                output_type="np",
            ).images.tolist()
    name = "final.png" if final else f"step_{global_step}.png"
    claim_outputs(args.output_dir, ["validation"])
    path = save_image_grid(
        np.asarray(images), os.path.join(args.output_dir, "validation", name), columns=args.num_validation_images
    )
    del pipeline
    return path


if __name__ == "__main__":
    run_cli(main, parse_args)
