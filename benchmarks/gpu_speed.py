#!/usr/bin/env python
"""Steps/s and peak GPU memory of PU training on the real architectures (random weights, configs written here).

Every case builds its denoiser from the architecture's published config (no download: random weights), then times
training steps after a warm-up. The paths:

    pu       train_pu_text_to_image.py's step: U rows and S rows from its latent/text cache (VAE and text encoders do
             not run), one forward pass, ℓ per row (noisy_input_and_target, per_sample_diffusion_loss) and the PU
             risk (PURisk, absPU, β 0.1), as its make_compute_loss does.
    plain    plain fine-tuning (diffusers' train_text_to_image / LoRA examples): U rows only, mean squared error.
             SD 1.x: the VAE and the text encoder run each step under no_grad, as in those examples; the other
             families: from the same cache as pu (so pu − plain is the cost of the S rows and the risk).
    authors  SD 1.x only: the PU authors' path, the VAE and the text encoder inside autograd every step (trainable
             modules whose gradients go unused), as in their training code.

Precision as the script runs it under ``accelerate --mixed_precision``: trained weights in fp32 under autocast
(fp16 with a gradient scaler). ``base bf16`` cases instead hold a LoRA run's frozen base in bf16 (what diffusers'
LoRA examples do; FLUX always). FLUX is measured here although train_pu_text_to_image.py does not take it yet.

A GPU benchmark: never part of the tests or CI.

    python benchmarks/gpu_speed.py                      # on a CUDA machine, all cases; writes gpu_speed.json
    python benchmarks/gpu_speed.py --tiny --steps 1     # the same code on tiny configs (a CPU smoke run)
"""

import argparse
import json
import os
import time
import traceback

import torch

from pu_diffusion.families import pack_pooled
from pu_diffusion.losses import PURisk, noisy_input_and_target, per_sample_diffusion_loss, sample_timesteps
from pu_diffusion.text_to_image import vae_scale_factor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # train_pu_text_to_image.py's LoRA targets

# ---------------------------------------------------------------------------------------------- architectures

SD14_UNET = dict(
    cross_attention_dim=768, attention_head_dim=8, sample_size=64
)  # the rest: diffusers' defaults (SD 1.x)
SD14_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)
CLIP_L = dict(  # CLIP ViT-L/14's text tower (SD 1.x)
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)
SD3_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)  # fmt: skip
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip

TINY = {  # the same code paths on configs a CPU runs in seconds (--tiny)
    "sd_unet": dict(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        layers_per_block=1, sample_size=8, norm_num_groups=8,
    ),
    "sd_vae": dict(
        block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        sample_size=16,
    ),
    "clip": dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=1000, projection_dim=32,
    ),
    "sdxl": dict(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4), cross_attention_dim=64, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, use_linear_projection=True,
        layers_per_block=1, norm_num_groups=8,
    ),
    "sd3": dict(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=24,
        pos_embed_max_size=16,
    ),
    "flux": dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
}  # fmt: skip


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None, help="Case names to run (default: all, in order).")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per case (after --warmup).")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--deadline_s", type=float, default=None, help="Start no case after this many seconds.")
    parser.add_argument(
        "--gradient_checkpointing",
        choices=["case", "on", "off"],
        default="case",
        help="Gradient checkpointing as each case sets it (FLUX on), or on/off for every case.",
    )
    parser.add_argument(
        "--disable_cudnn_attention",
        action="store_true",
        help="Keep PyTorch's SDPA off its cuDNN backend (its backward failed on FLUX's attention, torch 2.11/H200).",
    )
    parser.add_argument("--tiny", action="store_true", help="Tiny configs (a CPU smoke run of the same code).")
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/gpu_speed.json).")
    args = parser.parse_args(input_args)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0.")
    return args


def all_cases() -> list[dict]:
    """Every case, in priority order: SD 1.x at 512 px (issue 24), then SDXL, SD3-medium and FLUX-dev (issue 26)."""
    cases = []
    for mode in ("lora", "full"):
        for precision in ("fp16", "bf16"):
            for path in ("pu", "plain", "authors"):
                cases.append(dict(family="sd", resolution=512, mode=mode, precision=precision, path=path, u=8, s=2))
    for path in ("pu", "plain"):
        cases.append(dict(family="sdxl", resolution=1024, mode="lora", precision="bf16", path=path, u=4, s=1))
    for path in ("pu", "plain"):
        base = dict(family="sdxl", resolution=1024, mode="lora", precision="bf16", path=path, u=4, s=1)
        cases.append(dict(base, base_dtype="bf16"))
    for path in ("pu", "plain"):
        cases.append(dict(family="sd3", resolution=1024, mode="lora", precision="bf16", path=path, u=4, s=1))
    for resolution in (512, 1024):
        for path in ("pu", "plain"):
            cases.append(
                dict(
                    family="flux", resolution=resolution, mode="lora", precision="bf16", path=path, u=2, s=1,
                    base_dtype="bf16", gradient_checkpointing=True,
                )
            )  # fmt: skip
    for case in cases:
        case.setdefault("base_dtype", "fp32")
        case.setdefault("gradient_checkpointing", False)
        case["name"] = "-".join(
            [case["family"], str(case["resolution"]), case["mode"], case["precision"], case["path"]]
            + (["base_bf16"] if case["base_dtype"] == "bf16" else [])
        )
    return cases


# ---------------------------------------------------------------------------------------------- models and steps


class Setup:
    """One family's models (built once per family/mode/precision/base dtype) and its step for each path."""

    def __init__(self, case: dict, tiny: bool, device: torch.device):
        from diffusers import (
            AutoencoderKL,
            DDPMScheduler,
            FlowMatchEulerDiscreteScheduler,
            FluxTransformer2DModel,
            SD3Transformer2DModel,
            UNet2DConditionModel,
        )

        self.case, self.device, family = case, device, case["family"]
        self.amp_dtype = torch.float16 if case["precision"] == "fp16" else torch.bfloat16
        base_dtype = torch.bfloat16 if case["base_dtype"] == "bf16" else torch.float32
        self.vae = self.text_encoder = None
        with torch.device(device):
            if family == "sd":
                from transformers import CLIPTextConfig, CLIPTextModel

                self.model = UNet2DConditionModel(**(TINY["sd_unet"] if tiny else SD14_UNET))
                self.vae = AutoencoderKL(**(TINY["sd_vae"] if tiny else SD14_VAE))
                self.text_encoder = CLIPTextModel(CLIPTextConfig(**(TINY["clip"] if tiny else CLIP_L)))
                self.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
                self.vae_factor = vae_scale_factor(self.vae)
            elif family == "sdxl":
                self.model = UNet2DConditionModel(**(TINY["sdxl"] if tiny else SDXL_UNET))
                self.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
                self.vae_factor = 8
            elif family == "sd3":
                self.model = SD3Transformer2DModel(**(TINY["sd3"] if tiny else SD3_MEDIUM))
                self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
                self.vae_factor = 8
            else:
                self.model = FluxTransformer2DModel(**(TINY["flux"] if tiny else FLUX_DEV))
                self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
                self.vae_factor = 8
        if tiny:
            self.vae_factor = 2 if family == "sd" else 8
        self.model.to(device=device, dtype=base_dtype)  # buffers built from numpy in __init__ too
        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.to(device=device, dtype=self.amp_dtype)
        if case["mode"] == "lora":
            from peft import LoraConfig

            self.model.requires_grad_(False)
            self.model.add_adapter(
                LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
            )
            for parameter in self.model.parameters():  # trained weights in fp32, as accelerate keeps them
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
        if case["gradient_checkpointing"]:
            self.model.enable_gradient_checkpointing()
        self.model.train()
        self.trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=case["precision"] == "fp16")
        self.risk = PURisk(method="pu", beta=0.1)
        self.skipped_steps = 0
        self.trainable_parameters = sum(parameter.numel() for parameter in self.trainable)
        self.parameters = sum(parameter.numel() for parameter in self.model.parameters())
        self._inputs(tiny)

    def _inputs(self, tiny: bool):
        """A fixed batch of the cache's kind: latents (or pixels for SD's plain/authors paths) and text states."""
        case, device, family = self.case, self.device, self.case["family"]
        rows = case["u"] + case["s"]
        generator = torch.Generator(device="cpu").manual_seed(0)
        side = (16 if tiny else case["resolution"]) // self.vae_factor
        channels = {"sd": 4, "sdxl": 4, "sd3": 16, "flux": 16}[family]
        self.latents = torch.randn(rows, channels, side, side, generator=generator).to(device)
        self.is_sensitive = torch.arange(rows) >= case["u"]
        if family == "sd":
            width = self.text_encoder.config.hidden_size
            self.states = torch.randn(rows, 77, width, generator=generator).to(device)
            self.pixels = (torch.rand(rows, 3, side * self.vae_factor, side * self.vae_factor) * 2 - 1).to(device)
            vocab = self.text_encoder.config.vocab_size
            self.token_ids = torch.randint(0, vocab, (rows, 77), generator=generator).to(device)
        elif family == "sdxl":  # packed as the script packs them: 77 tokens of 2048 + the pooled 1280 as one more
            config = self.model.config
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            tokens = torch.randn(rows, 77, config.cross_attention_dim, generator=generator)
            self.states = pack_pooled(tokens, torch.randn(rows, pooled, generator=generator)).to(device)
            self.pooled_dim = pooled
        elif family == "sd3":  # 77 CLIP + 256 T5 tokens of 4096, the pooled 2048 packed as one more
            config = self.model.config
            tokens = torch.randn(rows, 77 + 256, config.joint_attention_dim, generator=generator)
            pooled = torch.randn(rows, config.pooled_projection_dim, generator=generator)
            self.states = pack_pooled(tokens, pooled).to(device)
        else:  # FLUX: 512 T5 tokens, CLIP's pooled 768, 2×2-packed latents with their position ids
            config = self.model.config
            self.states = torch.randn(rows, 512, config.joint_attention_dim, generator=generator).to(device)
            self.pooled = torch.randn(rows, config.pooled_projection_dim, generator=generator).to(device)
            self.txt_ids = torch.zeros(512, 3, device=device)
            half = side // 2
            ids = torch.zeros(half, half, 3)
            ids[..., 1] += torch.arange(half)[:, None]
            ids[..., 2] += torch.arange(half)[None, :]
            self.img_ids = ids.reshape(half * half, 3).to(device)
            self.latents = (self.latents.view(rows, channels, half, 2, half, 2).permute(0, 2, 4, 1, 3, 5)).reshape(
                rows, half * half, channels * 4
            )
        if family == "sdxl":
            from pu_diffusion.families import install_sdxl_unpacking

            install_sdxl_unpacking(self.model, self.pooled_dim, side * 8)
        if family == "sd3":
            from pu_diffusion.families import install_sd3_unpacking

            install_sd3_unpacking(self.model, self.model.config.pooled_projection_dim)

    def forward(self, noisy, timesteps, states, rows):
        if self.case["family"] == "flux":
            guidance = torch.full((len(noisy),), 3.5, device=self.device)
            return self.model(
                hidden_states=noisy, timestep=timesteps / 1000, guidance=guidance,
                pooled_projections=self.pooled[rows], encoder_hidden_states=states, txt_ids=self.txt_ids,
                img_ids=self.img_ids, return_dict=False,
            )[0]  # fmt: skip
        return self.model(noisy, timesteps, states, return_dict=False)[0]

    def step(self, path: str):
        rows = torch.arange(len(self.is_sensitive)) if path != "plain" else torch.arange(self.case["u"])
        is_sensitive = self.is_sensitive[rows]
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            latents, states = self.latents[rows], self.states[rows]
            if self.case["family"] == "sd" and path in ("plain", "authors"):
                encode = torch.enable_grad() if path == "authors" else torch.no_grad()
                self.vae.requires_grad_(path == "authors")
                self.text_encoder.requires_grad_(path == "authors")
                with encode:
                    latents = self.vae.encode(self.pixels[rows].to(self.amp_dtype)).latent_dist.sample()
                    latents = latents * self.vae.config.scaling_factor
                    states = self.text_encoder(self.token_ids[rows])[0]
            noise = torch.randn_like(latents)
            timesteps = sample_timesteps(self.scheduler.config.num_train_timesteps, is_sensitive, device=self.device)
            noisy, model_timesteps, target = noisy_input_and_target(self.scheduler, latents, noise, timesteps)
            prediction = self.forward(noisy, model_timesteps, states, rows)
        if path == "plain":
            objective = torch.nn.functional.mse_loss(prediction.float(), target.float())
        else:
            objective = self.risk(per_sample_diffusion_loss(prediction, target), is_sensitive).objective
        self.scaler.scale(objective).backward()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # fp16 overflow: the optimizer step was skipped
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.zero_grad(set_to_none=True)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(setup: Setup, case: dict, args, device) -> dict:
    for _ in range(args.warmup):
        setup.step(case["path"])
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, setup.skipped_steps = [], 0
    for _ in range(args.steps):
        start = time.perf_counter()
        setup.step(case["path"])
        synchronize(device)
        times.append(time.perf_counter() - start)
    rows = case["u"] + (case["s"] if case["path"] != "plain" else 0)
    median = sorted(times)[len(times) // 2]
    return {
        **case,
        "rows_per_step": rows,
        "steps_per_second": 1.0 / median,
        "rows_per_second": rows / median,
        "step_seconds": times,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "optimizer_steps_skipped": setup.skipped_steps,  # of the timed steps (fp16 gradient overflow)
        "parameters": setup.parameters,
        "trainable_parameters": setup.trainable_parameters,
    }


def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if args.disable_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    output = args.output or os.path.join(ROOT, "benchmarks", "results", "gpu_speed.json")
    cases = [case for case in all_cases() if args.cases is None or case["name"] in args.cases]
    for case in cases:
        if args.gradient_checkpointing != "case":
            case["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    if args.cases is not None and len(cases) != len(set(args.cases)):
        known = {case["name"] for case in all_cases()}
        raise SystemExit(f"error: --cases: unknown {sorted(set(args.cases) - known)}; known: {sorted(known)}")
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "steps": args.steps,
        "warmup": args.warmup,
        "cudnn_attention": not args.disable_cudnn_attention,
        "results": [],
        "skipped": [],
    }
    setup, setup_key = None, None
    for case in cases:
        if args.deadline_s is not None and time.perf_counter() - started > args.deadline_s:
            report["skipped"].append({"name": case["name"], "why": "deadline"})
            continue
        key = tuple(case[name] for name in ("family", "resolution", "mode", "precision", "base_dtype"))
        key += (case["gradient_checkpointing"],)  # one Setup (models and inputs) per key
        try:
            if key != setup_key:
                setup = setup_key = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                build_start = time.perf_counter()
                setup, setup_key = Setup(case, args.tiny, device), key
                build_seconds = time.perf_counter() - build_start
            result = run_case(setup, case, args, device)
            result["build_seconds"] = round(build_seconds, 1)
            report["results"].append(result)
            memory = "" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.1f} GiB"
            print(
                f"{case['name']}: {result['steps_per_second']:.2f} steps/s, {result['rows_per_second']:.1f} rows/s, "
                f"{memory} (t={time.perf_counter() - started:.0f}s)",
                flush=True,
            )
        except Exception as error:  # one case's failure (e.g. out of memory) must not lose the others
            traceback.print_exc()
            report["skipped"].append({"name": case["name"], "why": f"{type(error).__name__}: {error}"[:300]})
            setup = setup_key = None
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as handle:  # after every case: a killed run keeps what it measured
            json.dump(report, handle, indent=2)
    print_table(report)
    return report


def print_table(report: dict):
    print(f"\n{report['device']}, torch {report['torch']}, median of {report['steps']} steps")
    print("| case | rows/step | steps/s | rows/s | peak GiB | trainable |\n|---|---|---|---|---|---|")
    for result in report["results"]:
        memory = "–" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.1f}"
        print(
            f"| {result['name']} | {result['rows_per_step']} | {result['steps_per_second']:.2f} | "
            f"{result['rows_per_second']:.1f} | {memory} | {result['trainable_parameters'] / 1e6:.1f} M |"
        )
    for skipped in report["skipped"]:
        print(f"skipped {skipped['name']}: {skipped['why']}")


if __name__ == "__main__":
    main(parse_args())
