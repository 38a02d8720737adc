#!/usr/bin/env python
"""Speed of one training step for --method pu vs unsupervised vs supervised vs EraseDiff, and of generation.

All methods use the same model and the same U+S batch; steps are interleaved (round-robin) in one run
so machine noise hits every method alike. Peak memory: CUDA max_memory_allocated on a GPU; on CPU a fresh
process per method, whose resident-set high-water mark is reset once the model and optimizer exist
(/proc/self/clear_refs), so the peak is that of the training steps and not of importing torch. The memory a
method's steps add above that setup is reported beside it.

    python benchmarks/speed.py                    # built-in 16×16 UNet, 64 U + 16 S
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import train_pu_diffusion as script
from pu_diffusion import training
from pu_diffusion.models import default_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = ["unsupervised", "supervised", "pu", "erasediff", "erasediff-adaptive"]
# Each method is train_pu_diffusion.py's own step (make_compute_loss) under the script's default flags, with β 0.1;
# erasediff-adaptive is --erasediff_lambda -1 (λ = max(η − cos, 0)).
METHOD_FLAGS = {
    "unsupervised": ["--method", "unsupervised"],
    "supervised": ["--method", "supervised"],
    "pu": ["--method", "pu"],
    "erasediff": ["--method", "erasediff"],
    "erasediff-adaptive": ["--method", "erasediff", "--erasediff_lambda", "-1"],
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--unlabeled_batch_size", type=int, default=64)
    parser.add_argument("--sensitive_batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--generation_samples", type=int, default=64)
    parser.add_argument("--generation_steps", type=int, default=50)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "speed.json"))
    parser.add_argument("--memory_probe", choices=METHODS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(input_args)


def make_step(args, device):
    """``step(method)``: one optimizer step of train_pu_diffusion.py's compute_loss on the same U+S batch."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    accelerator = Accelerator(cpu=device.type == "cpu")
    torch.manual_seed(0)
    unet = UNet2DModel(**default_unet_config(args.resolution, args.channels)).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    batch_size = args.unlabeled_batch_size + args.sensitive_batch_size
    batch = {
        "pixel_values": torch.randn(batch_size, args.channels, args.resolution, args.resolution, device=device),
        "is_sensitive": torch.arange(batch_size, device=device) >= args.unlabeled_batch_size,
    }
    compute_losses = {}
    for method, flags in METHOD_FLAGS.items():
        script_args = script.parse_args([*flags, "--resolution", str(args.resolution), "--beta", "0.1"])
        risk = training.make_risk(accelerator, script_args, 0.1, scheduler.config.num_train_timesteps)
        compute_losses[method] = script.make_compute_loss(accelerator, script_args, scheduler, risk)

    def step(method):
        terms = compute_losses[method](unet, batch)
        terms.objective.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return unet, scheduler, step


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(args, method, device) -> tuple[float, float]:
    """(peak memory during 3 training steps, how much of it the steps added above the set-up model and optimizer)."""
    if device.type == "cuda":
        _, _, step = make_step(args, device)
        torch.cuda.synchronize()
        setup = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step(method)
        peak = torch.cuda.max_memory_allocated() / 2**20
        return peak, peak - setup
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory_probe",
            method,
            "--resolution",
            str(args.resolution),
            "--channels",
            str(args.channels),
            "--unlabeled_batch_size",
            str(args.unlabeled_batch_size),
            "--sensitive_batch_size",
            str(args.sensitive_batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peak, added = output.strip().splitlines()[-1].split()
    return float(peak), float(added)


def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.memory_probe:
        _, _, step = make_step(args, device)
        reset = reset_peak_rss()
        setup = _status_mb("VmRSS") if reset else 0.0  # without /proc: the whole process's peak, imports included
        for _ in range(3):
            step(args.memory_probe)
        peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(peak, peak - setup)
        return None
    unet, scheduler, step = make_step(args, device)
    times = {method: [] for method in METHODS}
    for _ in range(args.warmup):
        for method in METHODS:
            step(method)
    for _ in range(args.rounds):
        for method in METHODS:
            start = time.perf_counter()
            step(method)
            times[method].append(time.perf_counter() - start)
    steps_per_second = {method: 1.0 / float(np.median(values)) for method, values in times.items()}
    probes = {method: peak_memory_mb(args, method, device) for method in METHODS}
    memory = {method: peak for method, (peak, _) in probes.items()}
    added = {method: extra for method, (_, extra) in probes.items()}

    from diffusers import DDIMPipeline, DDIMScheduler

    pipeline = DDIMPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    pipeline(
        batch_size=args.generation_samples,
        num_inference_steps=args.generation_steps,
        generator=torch.Generator().manual_seed(0),
    )
    samples_per_second = args.generation_samples / (time.perf_counter() - start)

    base = steps_per_second["unsupervised"]
    report = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "settings": {
            key: os.path.relpath(value, ROOT) if isinstance(value, str) and os.path.isabs(value) else value
            for key, value in vars(args).items()
        },  # no machine paths in results
        "steps_per_second": steps_per_second,
        "ratio_vs_unsupervised": {m: v / base for m, v in steps_per_second.items()},
        "peak_memory_mb": memory,
        "step_memory_above_setup_mb": added,
        "peak_memory_kind": "cuda max_memory_allocated during 3 steps"
        if device.type == "cuda"
        else "peak RSS during 3 steps of a fresh process (high-water mark reset after model + optimizer setup)",
        "generation_samples_per_second": samples_per_second,
        "generation": f"DDIM {args.generation_steps} steps, batch {args.generation_samples}",
    }
    print(
        "| method | steps/s | ratio vs unsupervised | peak memory (MB) | added by the steps (MB) |\n|---|---|---|---|---|"
    )
    for method in METHODS:
        print(
            f"| {method} | {steps_per_second[method]:.2f} | {steps_per_second[method] / base:.3f} "
            f"| {memory[method]:.0f} | {added[method]:.1f} |"
        )
    print(
        f"\ngeneration: {samples_per_second:.1f} samples/s ({report['generation']}); device {device}, "
        f"batch {args.unlabeled_batch_size} U + {args.sensitive_batch_size} S at {args.resolution}px"
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main(parse_args())
