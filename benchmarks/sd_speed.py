#!/usr/bin/env python
"""One PU training step of train_pu_text_to_image.py's path vs the authors' path, on a tiny SD pipeline.

ours:    train_pu_text_to_image.py's own step (make_compute_loss, --method pu, β 0.1) on a batch whose VAE posterior
         and text states were cached once (frozen, no autograd); each step samples z and runs the UNet.
authors: each step runs the VAE encoder and the text encoder inside autograd (their gradients are unused).
Steps are interleaved in one run; peak memory is CUDA max_memory_allocated, or on CPU the peak RSS of a
fresh process doing that path's steps.

    python benchmarks/sd_speed.py
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import train_pu_text_to_image as script
from pu_diffusion import training
from pu_diffusion.families import TextSide
from pu_diffusion.losses import per_sample_diffusion_loss, pu_risk
from pu_diffusion.testing_utils import build_tiny_sd
from pu_diffusion.text_to_image import encode_captions, encode_latent_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PATHS = ["ours", "authors"]


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--unlabeled_batch_size", type=int, default=8)
    parser.add_argument("--sensitive_batch_size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "sd_speed.json"))
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory_probe", choices=PATHS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(input_args)


def make_step(model_dir, args, device):
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").to(device)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").to(device)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").to(device)
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    batch = args.unlabeled_batch_size + args.sensitive_batch_size
    torch.manual_seed(0)
    pixels = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    captions = ["a photo of a middle-aged man"] * args.unlabeled_batch_size + [
        "a photo of brad pitt"
    ] * args.sensitive_batch_size
    is_sensitive = torch.arange(batch) >= args.unlabeled_batch_size
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    cached_parameters = encode_latent_parameters(vae, pixels)
    cached_states = encode_captions(tokenizer, text_encoder, captions)
    vae.requires_grad_(True)  # the authors' path: encoders are trainable modules inside autograd
    text_encoder.requires_grad_(True)

    script_args = script.parse_args(
        ["--pretrained_model_name_or_path", model_dir, "--train_data_dir", model_dir, "--method", "pu", "--beta", "0.1"]
    )  # parsed only: nothing is loaded from or written to these folders
    accelerator = Accelerator(cpu=device.type == "cpu")
    empty_state = encode_captions(tokenizer, text_encoder, [""])
    ours = script.make_compute_loss(
        accelerator,
        script_args,
        risk=training.make_risk(accelerator, script_args, 0.1, scheduler.config.num_train_timesteps),
        encoders=script.FrozenEncoders(
            vae, TextSide("sd", [tokenizer], [text_encoder], [""]), empty_state, torch.float32
        ),
        noise_scheduler=scheduler,
        trainable=list(unet.parameters()),
    )
    cached_batch = {"latent_parameters": cached_parameters, "text_states": cached_states, "is_sensitive": is_sensitive}

    def step(path):
        if path == "ours":
            terms = ours(unet, cached_batch)
            terms.objective.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        tokens = tokenizer(
            captions,
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        states = text_encoder(tokens)[0]
        noise = torch.randn(latents.shape, device=device)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
        terms = pu_risk(per_sample_diffusion_loss(prediction, noise), is_sensitive, "pu", 0.1, "abs")
        terms.objective.backward()
        optimizer.step()
        optimizer.zero_grad()
        vae.zero_grad(set_to_none=True)
        text_encoder.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or build_tiny_sd(os.path.join(scratch, "tiny_sd"), sample_size=args.resolution // 2)
        if args.memory_probe:
            step = make_step(model_dir, args, device)
            for _ in range(3):
                step(args.memory_probe)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return None
        step = make_step(model_dir, args, device)
        times = {path: [] for path in PATHS}
        for path in PATHS:
            step(path)
        for _ in range(args.rounds):
            for path in PATHS:
                start = time.perf_counter()
                step(path)
                times[path].append(time.perf_counter() - start)
        memory = {}
        for path in PATHS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                step(path)
                memory[path] = torch.cuda.max_memory_allocated() / 2**20
            else:
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--memory_probe",
                        path,
                        "--model_dir",
                        model_dir,
                        "--resolution",
                        str(args.resolution),
                        "--unlabeled_batch_size",
                        str(args.unlabeled_batch_size),
                        "--sensitive_batch_size",
                        str(args.sensitive_batch_size),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                memory[path] = float(output.stdout.strip().splitlines()[-1])
    steps_per_second = {path: 1.0 / float(np.median(values)) for path, values in times.items()}
    report = {
        "device": str(device),
        "settings": {
            key: os.path.relpath(value, ROOT) if isinstance(value, str) and os.path.isabs(value) else value
            for key, value in vars(args).items()
        },  # no machine paths in results
        "steps_per_second": steps_per_second,
        "speedup_ours_vs_authors": steps_per_second["ours"] / steps_per_second["authors"],
        "peak_memory_mb": memory,
        "memory_ratio_ours_vs_authors": memory["ours"] / memory["authors"],
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS of a fresh process",
    }
    print("| path | steps/s | peak memory (MB) |\n|---|---|---|")
    for path in PATHS:
        print(f"| {path} | {steps_per_second[path]:.2f} | {memory[path]:.0f} |")
    print(
        f"\nspeed-up ours/authors: {report['speedup_ours_vs_authors']:.2f}×, memory ratio "
        f"{report['memory_ratio_ours_vs_authors']:.2f} ({device}, tiny SD at {args.resolution}px, "
        f"{args.unlabeled_batch_size} U + {args.sensitive_batch_size} S)"
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main(parse_args())
