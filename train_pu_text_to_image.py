#!/usr/bin/env python
"""Fine-tune Stable Diffusion 1.x with the conditional, guidance-aware PU loss (concept suppression).

U: images with a normal caption, some of which secretly show the sensitive concept; S: labelled images
of the concept. The PU risk on ℓ(x, c) makes "a photo of a middle-aged man" stop producing Brad Pitt.
The VAE and text encoder are frozen and never enter autograd; with --cache_latents (default for small
datasets) their outputs are computed once.

    accelerate launch train_pu_text_to_image.py --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \
      --train_data_dir data/middle_aged_man --caption_column text --method pu --beta 0.2 --resolution 512 \
      --train_batch_size 16 --learning_rate 1e-5 --max_train_steps 5000 --mixed_precision fp16 \
      --validation_prompts "a photo of a middle-aged man" --output_dir sd-pu
"""

import argparse
import logging
import math
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from pipelines import push_output_dir, save_image_grid, write_model_card
from pu_diffusion.data import (
    ImageTransform, PUBatchSampler, PUDataError, check_images_readable, load_image_dataset, pu_indices,
)
from pu_diffusion.losses import LOSS_REDUCTIONS, METHODS, PU_ESTIMATORS, diffusion_target, per_sample_diffusion_loss, pu_risk
from pu_diffusion.models import check_resolution
from pu_diffusion.text_to_image import (
    drop_captions, encode_captions, encode_latent_parameters, predict_noise, sample_latents,
)
from pu_diffusion.training import (
    check_output_dir, make_trackers, prepare_output_dir, progress_postfix, public_config, register_model_hooks,
    resolve_resume_checkpoint, save_checkpoint, step_logs, validate_pu_flags,
)

logger = get_logger(__name__, log_level="INFO")
CACHE_LATENTS_MAX_ROWS = 10_000


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="PU fine-tuning of Stable Diffusion 1.x (concept suppression).")
    parser.add_argument("--pretrained_model_name_or_path", type=str, required=True)
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--variant", type=str, default=None)
    # Data
    parser.add_argument("--dataset_name", type=str, default=None)
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument("--train_data_dir", type=str, default=None)
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument("--image_column", type=str, default="image")
    parser.add_argument("--caption_column", type=str, default="text")
    parser.add_argument("--pu_label_column", type=str, default="label")
    parser.add_argument("--sensitive_label", type=str, default="sensitive")
    parser.add_argument("--sensitive_caption", type=str, default=None,
                        help="Caption given to every S image (e.g. the normal caption, so p_U = βp_S + (1−β)p_N "
                             "holds under one condition).")
    parser.add_argument("--proportion_empty_prompts", type=float, default=0.0,
                        help="Probability of replacing a caption by '' (trains the unconditional branch with PU too).")
    parser.add_argument("--skip_image_check", action="store_true")
    parser.add_argument("--cache_latents", dest="cache_latents", action="store_true", default=None,
                        help=f"Encode images (center crops, and their flips) and captions once "
                             f"(default: on for ≤{CACHE_LATENTS_MAX_ROWS} rows).")
    parser.add_argument("--no_cache_latents", dest="cache_latents", action="store_false")
    # PU method
    parser.add_argument("--method", type=str, default="pu", choices=METHODS)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--pu_estimator", type=str, default="abs", choices=PU_ESTIMATORS)
    parser.add_argument("--sensitive_batch_size", type=int, default=4)
    parser.add_argument("--loss_reduction", type=str, default="sum", choices=LOSS_REDUCTIONS)
    parser.add_argument("--pu_guidance_scale", type=float, default=None,
                        help="Take ℓ on the guided prediction ε(∅) + w(ε(c) − ε(∅)); doubles the UNet cost.")
    parser.add_argument("--prediction_type", type=str, default=None, choices=["epsilon", "v_prediction"])
    # Training
    parser.add_argument("--output_dir", type=str, default="sd-pu")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--center_crop", action="store_true")
    parser.add_argument("--random_flip", action="store_true")
    parser.add_argument("--train_batch_size", type=int, default=16, help="Number of U samples in every batch.")
    parser.add_argument("--num_train_epochs", "--num_epochs", dest="num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--scale_lr", action="store_true")
    parser.add_argument("--lr_scheduler", type=str, default="constant")
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--use_8bit_adam", action="store_true")
    parser.add_argument("--allow_tf32", action="store_true")
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    parser.add_argument("--rank", type=int, default=None, help="Train LoRA adapters of this rank instead of the UNet.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", type=str, default=None)
    parser.add_argument("--validation_prompts", type=str, nargs="*", default=None)
    parser.add_argument("--validation_steps", type=int, default=500)
    parser.add_argument("--num_validation_images", type=int, default=4)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="Guidance scale of validation sampling.")
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--report_to", type=str, default="tensorboard")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", type=str, default=None)
    parser.add_argument("--hub_token", type=str, default=None)
    args = parser.parse_args(input_args)

    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("Give --dataset_name or --train_data_dir (U and S images with captions).")
    validate_pu_flags(args)
    if not 0.0 <= args.proportion_empty_prompts <= 1.0:
        raise ValueError("--proportion_empty_prompts must lie in [0, 1].")
    if args.rank is not None and (args.rank < 1 or args.use_ema):
        raise ValueError("--rank must be >= 1 and cannot be combined with --use_ema.")
    return args


def load_data(args):
    """Dataset, U/S rows and the caption of every row (S captions overridden by --sensitive_caption)."""
    dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir)
    if args.caption_column not in dataset.column_names:
        raise PUDataError(f"--caption_column '{args.caption_column}' is not a column of the dataset; its columns are "
                          f"{dataset.column_names}. For a folder, add a metadata.jsonl with file_name and the caption.")
    unlabeled_rows, sensitive_rows = pu_indices(dataset, args.image_column, args.pu_label_column, args.sensitive_label,
                                                require_sensitive=args.method != "unsupervised")
    captions = [caption if isinstance(caption, str) else str(caption) for caption in dataset[args.caption_column]]
    if args.sensitive_caption is not None:
        for row in sensitive_rows:
            captions[int(row)] = args.sensitive_caption
    if not args.skip_image_check:
        check_images_readable(dataset, args.image_column)
    return dataset, unlabeled_rows, sensitive_rows, captions


class TextImageBatches(torch.utils.data.Dataset):
    """Items keyed by (row, aug_seed): pixels (or cached VAE posterior parameters) and text states."""

    def __init__(self, dataset, image_column, captions, sensitive_rows, transform, latent_cache=None, text_cache=None):
        self.dataset, self.image_column, self.captions = dataset, image_column, captions
        self.sensitive_rows = set(int(row) for row in sensitive_rows)
        self.transform, self.latent_cache, self.text_cache = transform, latent_cache, text_cache

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        row, aug_seed = int(key[0]), key[1]
        item = {"is_sensitive": row in self.sensitive_rows, "caption": self.captions[row]}
        flip = self.transform.random_flip and ImageTransform.flips(aug_seed)
        if self.latent_cache is not None:
            item["latent_parameters"] = self.latent_cache[(row, flip)]
        else:
            item["pixel_values"] = self.transform(self.dataset[row][self.image_column], aug_seed, flip=flip)
        if self.text_cache is not None:
            item["text_states"] = self.text_cache[self.captions[row]]
        return item


def collate(items):
    batch = {"is_sensitive": torch.tensor([item["is_sensitive"] for item in items]),
             "captions": [item["caption"] for item in items]}
    for key in ("latent_parameters", "pixel_values", "text_states"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


def main(args):
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    run_config = public_config(args)
    resume_path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, log_with=make_trackers(args.report_to, logging_dir),
                              project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if accelerator.num_processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() == 1:
        torch.set_num_threads(os.cpu_count() or 1)
    check_output_dir(args.output_dir, run_config, resuming=resume_path is not None, overwrite=args.overwrite_output_dir)
    accelerator.wait_for_everyone()
    if args.seed is not None:
        set_seed(args.seed, device_specific=True)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    # ---- Data ----
    with accelerator.main_process_first():
        dataset, unlabeled_rows, sensitive_rows, captions = load_data(args)

    # ---- Models: the UNet trains; VAE and text encoder are frozen and never enter autograd ----
    from transformers import CLIPTextModel, CLIPTokenizer

    path, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision, variant=variant)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=revision, variant=variant)
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    if args.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    check_resolution(unet, args.resolution // vae_scale, flag=f"--resolution {args.resolution} (latent size)")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=weight_dtype).eval()
    text_encoder.to(accelerator.device, dtype=weight_dtype).eval()

    if args.rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()  # otherwise PyTorch SDPA, diffusers' default
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
    if not args.rank:  # LoRA checkpoints: accelerate saves the adapted UNet's state dict as safetensors itself
        register_model_hooks(accelerator, UNet2DConditionModel, ema_model)

    # ---- Batches: fixed U and S counts; latents and text states cached once when asked ----
    sensitive_batch_size = 0 if args.method == "unsupervised" else args.sensitive_batch_size
    batch_sampler = PUBatchSampler(unlabeled_rows, sensitive_rows, args.train_batch_size, sensitive_batch_size,
                                   seed=args.seed or 0)
    transform = ImageTransform(args.resolution, 3, center_crop=True, random_flip=args.random_flip) \
        if args.cache_latents is not False else ImageTransform(args.resolution, 3, args.center_crop, args.random_flip)
    cache = args.cache_latents if args.cache_latents is not None else len(dataset) <= CACHE_LATENTS_MAX_ROWS
    latent_cache = text_cache = None
    empty_state = encode_captions(tokenizer, text_encoder, [""])
    if cache:
        rows = sorted(set(map(int, unlabeled_rows)) | set(map(int, sensitive_rows)))
        latent_cache = {}
        for flip in ([False, True] if args.random_flip else [False]):
            for start in range(0, len(rows), 16):
                chunk = rows[start:start + 16]
                pixels = torch.stack([transform(dataset[row][args.image_column], 0, flip=flip) for row in chunk])
                for row, parameters in zip(chunk, encode_latent_parameters(vae, pixels).cpu()):
                    latent_cache[(row, flip)] = parameters
        unique_captions = sorted(set(captions))
        text_cache = dict(zip(unique_captions, encode_captions(tokenizer, text_encoder, unique_captions).cpu()))
        logger.info(f"Cached {len(latent_cache)} latents and {len(text_cache)} caption encodings")
    train_dataloader = torch.utils.data.DataLoader(
        TextImageBatches(dataset, args.image_column, captions, sensitive_rows, transform, latent_cache, text_cache),
        batch_sampler=batch_sampler, collate_fn=collate, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed or 0))

    if accelerator.is_main_process:
        prepare_output_dir(args.output_dir, run_config, args.overwrite_output_dir and resume_path is None)

    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer_cls = torch.optim.AdamW
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from error
        optimizer_cls = bnb.optim.AdamW8bit
    trainable = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = optimizer_cls(trainable, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                              weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch = math.ceil(math.ceil(len(batch_sampler) / accelerator.num_processes)
                                  / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    if ema_model is not None:
        ema_model.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("pu-text-to-image", config=public_config(args))
    logger.info(f"***** PU text-to-image: {len(unlabeled_rows)} U, {len(sensitive_rows)} S, method {args.method}, "
                f"beta {args.beta}, {args.train_batch_size} U + {sensitive_batch_size} S per batch, "
                f"{args.max_train_steps} steps, cached latents: {cache} *****")

    global_step = first_epoch = resume_step = 0
    if resume_path:
        accelerator.load_state(resume_path)
        global_step = int(os.path.basename(os.path.normpath(resume_path)).split("-")[-1])
        first_epoch = global_step // updates_per_epoch
        resume_step = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    start_time, start_step = time.time(), global_step
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        loader = accelerator.skip_first_batches(train_dataloader, resume_step) \
            if epoch == first_epoch and resume_step else train_dataloader
        loader.set_epoch(epoch)  # accelerate's own epoch counter, which it passes to the sampler (exact resume)
        batch_sampler.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(unet):
                loss, terms = compute_loss(args, batch, unet, vae, tokenizer, text_encoder, noise_scheduler,
                                           empty_state, weight_dtype)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
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
                    save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                if (accelerator.is_main_process and args.validation_prompts and args.validation_steps
                        and global_step % args.validation_steps == 0):
                    log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break
    train_seconds = time.time() - start_time

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        if ema_model is not None:
            ema_model.copy_to(unet.parameters())
        if args.rank:
            from peft.utils import get_peft_model_state_dict
            from diffusers.utils import convert_state_dict_to_diffusers

            StableDiffusionPipeline.save_lora_weights(
                args.output_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
                safe_serialization=True)
        else:
            pipeline = StableDiffusionPipeline.from_pretrained(path, unet=unet, vae=vae.to(torch.float32),
                                                               text_encoder=text_encoder.to(torch.float32),
                                                               tokenizer=tokenizer, revision=revision, variant=variant,
                                                               safety_checker=None, requires_safety_checker=False)
            pipeline.save_pretrained(args.output_dir, safe_serialization=True)
        images = []
        if args.validation_prompts:
            images = [log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, global_step, final=True)]
        run = public_config(args)
        run.update(train_seconds=round(train_seconds, 1),
                   steps_per_second=round((global_step - start_step) / max(train_seconds, 1e-9), 3))
        data_info = {"source": args.dataset_name or args.train_data_dir, "unlabeled (U) images": len(unlabeled_rows),
                     "sensitive (S) images": len(sensitive_rows), "validation prompts": args.validation_prompts,
                     "S caption override": args.sensitive_caption, "caption dropout": args.proportion_empty_prompts}
        write_model_card(args.output_dir, run, data_info, images=images, base_model=path,
                         repo_id=args.hub_model_id if args.push_to_hub else None,
                         extra_tags=["stable-diffusion", "text-to-image"] + (["lora"] if args.rank else []))
        if args.push_to_hub:
            push_output_dir(args.output_dir, args.hub_model_id or os.path.basename(args.output_dir), token=args.hub_token)
    accelerator.end_training()
    return {"global_step": global_step, "train_seconds": train_seconds}


def compute_loss(args, batch, unet, vae, tokenizer, text_encoder, noise_scheduler, empty_state, weight_dtype):
    """The conditional PU risk of one batch; the frozen encoders run without autograd (or come from the cache)."""
    device = next(unet.parameters()).device
    if "latent_parameters" in batch:
        latent_parameters = batch["latent_parameters"].to(device)
    else:
        latent_parameters = encode_latent_parameters(vae, batch["pixel_values"])
    latents = sample_latents(latent_parameters, vae.config.scaling_factor)
    if "text_states" in batch:
        text_states = batch["text_states"].to(device)
    else:
        text_states = encode_captions(tokenizer, text_encoder, batch["captions"])
    drop = torch.rand(latents.shape[0]) < args.proportion_empty_prompts  # one draw per row, cached or not
    text_states = drop_captions(drop, text_states, empty_state)
    noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    model_pred = predict_noise(unet, noisy_latents, timesteps, text_states.to(weight_dtype), empty_state,
                               args.pu_guidance_scale)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    per_sample_loss = per_sample_diffusion_loss(model_pred, target, args.loss_reduction)
    terms = pu_risk(per_sample_loss, batch["is_sensitive"], args.method, args.beta, args.pu_estimator)
    return terms.loss, terms


def log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, global_step, final=False):
    """Generate --num_validation_images per prompt; save one grid (a row per prompt) under validation/."""
    pipeline = StableDiffusionPipeline.from_pretrained(
        args.pretrained_model_name_or_path, unet=accelerator.unwrap_model(unet), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, safety_checker=None, requires_safety_checker=False, revision=args.revision)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed or 0)
    images = []
    # Frozen encoders may be fp16/bf16 while the trained UNet stays fp32: sample under autocast then.
    autocast = torch.autocast(accelerator.device.type, dtype=vae.dtype, enabled=vae.dtype != torch.float32)
    for prompt in args.validation_prompts:
        with autocast:
            images += pipeline([prompt] * args.num_validation_images, num_inference_steps=args.num_inference_steps,
                               guidance_scale=args.guidance_scale, generator=generator,
                               output_type="np").images.tolist()
    name = "final.png" if final else f"step_{global_step}.png"
    path = save_image_grid(np.asarray(images), os.path.join(args.output_dir, "validation", name),
                           columns=args.num_validation_images)
    del pipeline
    return path


if __name__ == "__main__":
    main(parse_args())
