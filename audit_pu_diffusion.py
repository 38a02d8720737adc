"""Audit U with a trained PU model: rank images by how sensitive the model finds them.

A PU-trained model is a classifier, p(normal | x) = exp(−ℓ(x)): images with a high diffusion loss ℓ look
sensitive to it. The audit scores every image with the Monte-Carlo ℓ over K (t, ε) draws that are *shared*
by all images, so two scores differ because the images differ, not because their noise did. With a reference
model (e.g. the unsupervised model trained on the same U), the score is ℓ_PU − ℓ_reference: how much worse PU
training made an image, with what is merely hard to model cancelled out. Stable Diffusion pipelines are scored
with ℓ(x, c): the VAE latent's mean under the image's caption; SDXL, SD3 and FLUX (full or LoRA outputs) with
their own conditioning and objective, as training scores them.

    python audit_pu_diffusion.py --pipeline my-pu-model --train_data_dir my_data --output_dir audit
    python audit_pu_diffusion.py --pipeline pu-ddpm-model      # built-in data: also scores the ranking

It writes ``audit.csv`` (file, score, rank), ``top_k.png`` (the top-k images) and ``audit.json`` (the
estimated number of sensitive images, β × |U|, and on built-in data the AUC and precision@k of finding
the sensitive digits hidden in U).
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import torch

from pipelines.saving import LORA_WEIGHTS_NAME
from pu_diffusion.arguments import HelpWithDefaults
from pu_diffusion.builtin_mnist import BUILTIN_SPLIT_FILE, builtin_pu_dataset, read_split_file
from pu_diffusion.class_prior import roc_auc
from pu_diffusion.cli import UsageError, finite_float, run_cli
from pu_diffusion.families import (
    FAMILY_PIPELINES,
    TextSide,
    denoiser_class,
    denoiser_name,
    flux_training_scheduler,
    prepare_unet,
)
from pu_diffusion.image_data import check_images_readable, is_image_file, load_captions, load_image_dataset, pu_indices
from pu_diffusion.losses import is_flow_matching, monte_carlo_diffusion_loss
from pu_diffusion.models import load_training_scheduler
from pu_diffusion.outputs import check_free, check_separate, check_writable, claim, write_json_atomic
from pu_diffusion.pu_dataset import ImageTransform, images_as_tensor
from pu_diffusion.text_to_image import scale_latents, vae_scale_factor


def shared_draws(num_draws: int, sample_shape, num_train_timesteps: int, seed: int = 0, timestep_range=None):
    """K noise tensors (K×C×H×W) and K timesteps in ``timestep_range`` [low, high) (default: all), the same for
    every image scored."""
    low, high = timestep_range or (0, num_train_timesteps)
    if not 0 <= low < high <= num_train_timesteps:
        raise UsageError(f"--timestep_range must satisfy 0 <= low < high <= {num_train_timesteps}; got {low} {high}.")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_draws, *sample_shape), generator=generator)
    timesteps = torch.randint(low, high, (num_draws,), generator=generator)
    return noise, timesteps


@torch.no_grad()
def audit_scores(
    unet,
    scheduler,
    images: torch.Tensor,
    num_draws: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    text_states: torch.Tensor | None = None,
    timestep_range=None,
) -> torch.Tensor:
    """(1/K) Σ_k ℓ(x; t_k, ε_k) for each x (N×C×H×W) with draws shared by all of them; returns (N,).

    x are images in [-1, 1] for an unconditional UNet, or scaled VAE latents with ``text_states`` (N×tokens×dim,
    each image's caption encoded) for a conditional one: ℓ(x, c).
    """
    draws = shared_draws(num_draws, images.shape[1:], scheduler.config.num_train_timesteps, seed, timestep_range)
    return monte_carlo_diffusion_loss(
        unet, scheduler, images, num_draws, batch_size=batch_size, draws=draws, text_states=text_states
    )


def ranks_of(scores) -> np.ndarray:
    """Rank 1 = the highest score (the most sensitive-looking image)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def ranking_quality(scores, is_sensitive, k: int | None = None, top_k: int | None = None) -> dict:
    """AUC and precision@k (k = the number of sensitive images by default) of ranking by ``scores``; with
    ``top_k``, also how many of the ``top_k`` highest (the images top_k.png shows) are sensitive."""

    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(is_sensitive, dtype=bool)
    k = int(truth.sum()) if k is None else k
    order = np.argsort(-scores, kind="stable")  # ranks_of's order
    quality = {"auc": roc_auc(scores[truth], scores[~truth]), "precision_at_k": float(truth[order[:k]].mean()), "k": k}
    if top_k is not None:
        quality["sensitive_in_top_k"] = int(truth[order[:top_k]].sum())
    return quality


AUDIT_OUTPUTS = ("audit.csv", "top_k.png", "audit.json")


def write_audit(output_dir: str, files: list[str], scores, images: torch.Tensor, top_k: int, extra: dict) -> dict:
    """audit.csv (file, score, rank, sorted by rank), top_k.png and audit.json: claimed first, each written atomically."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    claim(output_dir, AUDIT_OUTPUTS)
    scores = np.asarray(scores, dtype=np.float64)
    ranks = ranks_of(scores)
    order = np.argsort(ranks)
    path = os.path.join(output_dir, "audit.csv")
    with open(path + ".tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score", "rank"])
        for row in order:
            writer.writerow([files[row], f"{scores[row]:.6g}", int(ranks[row])])
    os.replace(path + ".tmp", path)
    top = order[: min(top_k, len(order))]
    pixels = ((images[top].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    tiles = [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p).resize((64, 64), Image.NEAREST) for p in pixels]
    columns = min(8, len(tiles))
    rows = -(-len(tiles) // columns)
    tiles += [Image.new(tiles[0].mode, tiles[0].size)] * (rows * columns - len(tiles))
    grid_path = os.path.join(output_dir, "top_k.png")
    make_image_grid(tiles, rows, columns).save(grid_path + ".tmp", format="PNG")
    os.replace(grid_path + ".tmp", grid_path)
    summary = {"num_images": len(files), "top_k": len(top), **extra}
    write_json_atomic(os.path.join(output_dir, "audit.json"), summary)
    return summary


def read_run(pipeline_path: str) -> dict:
    """The flags of the pu-diffusion run that wrote the folder (its pu_run.json), or {}."""
    path = os.path.join(pipeline_path, "pu_run.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        run = json.load(handle)
    return run if isinstance(run, dict) else {}


def recorded_beta(pipeline_path: str) -> float | None:
    """The share of all of U a pu-diffusion run took to be sensitive (its pu_run.json), if the folder has one: the β
    it trained with, or with --pu_filter_unlabeled the β its cut used (it trained with the β left in the kept U), or
    the β given or estimated where --pu_filter_min_beta raised the cut's above it."""
    run = read_run(pipeline_path)
    if not run:
        return None
    if run.get("method", "pu") != "pu":  # unsupervised and the baselines never used a β
        return None
    if run.get("beta_resolved"):
        resolved = run["beta_resolved"]
        if "unlabeled_filter" not in resolved:
            return float(resolved["beta"])
        cut = resolved["unlabeled_filter"]
        return float(cut.get("beta_below_floor", cut["beta_before"]))
    return float(run["beta"]) if isinstance(run.get("beta"), (int, float)) else None


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        description="Rank images by how sensitive a trained PU model finds them.", formatter_class=HelpWithDefaults
    )
    parser.add_argument(
        "--pipeline", type=str, required=True, help="Trained pipeline folder (unconditional, or Stable Diffusion)."
    )
    parser.add_argument(
        "--reference_pipeline",
        type=str,
        default=None,
        help="Score ℓ_pipeline − ℓ_reference instead (e.g. the unsupervised model trained on the same U).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--train_data_dir", type=str, default=None, help="Training data: its U images are scored.")
    source.add_argument("--image_folder", type=str, default=None, help="Score every image in this folder instead.")
    parser.add_argument("--image_column", type=str, default="image", help="As in training (--train_data_dir).")
    parser.add_argument("--caption_column", type=str, default="text", help="Stable Diffusion: the caption column.")
    parser.add_argument(
        "--device", type=str, default=None, help="Where the models run (default: cuda when available, else cpu)."
    )
    parser.add_argument(
        "--caption", type=str, default=None, help="Stable Diffusion: score every image under this caption instead."
    )
    parser.add_argument("--pu_label_column", type=str, default="label", help="As in training (--train_data_dir).")
    parser.add_argument("--sensitive_label", type=str, default="sensitive", help="As in training.")
    parser.add_argument("--output_dir", type=str, default="audit", help="Where audit.csv, top_k.png, audit.json go.")
    parser.add_argument("--top_k", type=int, default=64, help="Images in top_k.png.")
    parser.add_argument("--num_draws", type=int, default=16, help="Shared (t, ε) draws per image.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per forward pass.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shared draws.")
    parser.add_argument(
        "--timestep_range",
        type=int,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="Draw t from [LOW, HIGH) only (default: every timestep). The built-in model's signal lies at mid t.",
    )
    parser.add_argument(
        "--beta", type=finite_float, default=None, help="Share of U assumed sensitive (default: the run's)."
    )
    args = parser.parse_args(input_args)
    for flag in ("top_k", "num_draws", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1; got {getattr(args, flag)}.")
    if args.timestep_range and not 0 <= args.timestep_range[0] < args.timestep_range[1]:
        parser.error(f"--timestep_range needs 0 <= LOW < HIGH; got {args.timestep_range}.")
    if args.beta is not None and not 0 <= args.beta < 1:
        parser.error(f"--beta must lie in [0, 1); got {args.beta}.")
    for flag in ("pipeline", "reference_pipeline", "train_data_dir", "image_folder"):
        value = getattr(args, flag)
        if value is not None and not os.path.isdir(value):
            parser.error(f"--{flag} {value!r} is not a folder.")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is a file: choose a folder path.")
    inputs = {
        f"--{flag}": getattr(args, flag)
        for flag in ("pipeline", "reference_pipeline", "train_data_dir", "image_folder")
    }
    check_separate(args.output_dir, "--output_dir", inputs)
    check_writable(args.output_dir, "--output_dir")
    check_free(args.output_dir, AUDIT_OUTPUTS)
    return args


class Scorer:
    """A saved pipeline as an image scorer: an unconditional UNet, or a text-to-image pipeline of any family the
    training script takes (SD 1.x/2.x, SDXL, SD3, FLUX), scored with ℓ(x, c) of the VAE latent's mean under the
    image's caption, the family's own conditioning and objective (ε or velocity), as training scores it. A LoRA
    output (``pytorch_lora_weights.safetensors`` and the run's ``pu_run.json``) is scored as its base with the
    adapters loaded."""

    def __init__(self, path: str, flag: str = "--pipeline", device=None):
        run = read_run(path)
        self.lora = os.path.isfile(os.path.join(path, LORA_WEIGHTS_NAME)) and not os.path.isfile(
            os.path.join(path, "model_index.json")
        )
        if self.lora and not run.get("pretrained_model_name_or_path"):
            raise UsageError(
                f"{flag} {path!r} holds LoRA weights but no pu_run.json naming their base model: audit the folder "
                "a train_pu_text_to_image.py run wrote, or a full pipeline."
            )
        # a LoRA output's base: a local folder or a Hub id, at the revision and variant the run trained on
        self.base = run["pretrained_model_name_or_path"] if self.lora else path
        self.revision, self.variant = (run.get("revision"), run.get("variant")) if self.lora else (None, None)
        if not self.lora and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise UsageError(
                f"{flag} {path!r} is not a saved pipeline (no model_index.json): audit a folder the training "
                "scripts wrote."
            )
        try:
            self._load(path, run, device)
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - diffusers, transformers and safetensors raise many types
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else 'no message'}"
            raise UsageError(
                f"{flag} {path!r}: its base model {self.base!r} (named in its pu_run.json) or its LoRA weights "
                f"cannot be loaded ({reason}). Make the base reachable from here (a relative path is read from "
                "the current folder), or audit a full pipeline."
                if self.lora
                else f"{flag} {path!r} cannot be loaded ({reason}). Save the pipeline again (a resumed training "
                "run saves it at its end), or pass another folder."
            ) from error

    def _load(self, path: str, run: dict, device) -> None:
        from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DModel

        base, revision, variant = self.base, self.revision, self.variant
        self.family = FAMILY_PIPELINES.get(DiffusionPipeline.load_config(base, revision=revision).get("_class_name"))
        self.conditional = self.family is not None
        if self.family == "flux" and not run.get("resolution"):  # checked before any weights are loaded
            raise UsageError(
                f"{path!r} is a FLUX pipeline without the pu_run.json of its training run: the audit scores at the "
                "training resolution, which only that file records. Audit the folder train_pu_text_to_image.py wrote."
            )
        self.scheduler = load_training_scheduler(base, revision=revision)
        if not self.conditional:
            self.unet = UNet2DModel.from_pretrained(path, subfolder="unet").eval().to(device)
            self.resolution, self.channels = self.unet.config.sample_size, self.unet.config.in_channels
            return
        name = denoiser_name(self.family)
        self.unet = (
            denoiser_class(self.family).from_pretrained(base, subfolder=name, revision=revision, variant=variant).eval()
        )
        if self.lora:  # the adapters as the family's load_lora_weights would load them
            self.unet.load_lora_adapter(path, prefix=name, weight_name=LORA_WEIGHTS_NAME)
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", revision=revision, variant=variant)
        self.vae.eval().to(device)
        factor = vae_scale_factor(self.vae)
        self.resolution = run.get("resolution") or self.unet.config.sample_size * factor
        if self.family == "flux":  # σ shifted as the run trained at this size
            flux_training_scheduler(self.scheduler, self.resolution // factor)
        self.text_side = TextSide.load(
            self.family, base, revision, variant, max_sequence_length=run.get("max_sequence_length")
        )
        self.text_side.to(device, torch.float32)
        prepare_unet(self.family, self.unet, self.text_side, self.resolution)
        self.unet.to(device)
        self.channels = 3

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, captions, num_draws: int, seed: int, batch_size: int, timestep_range=None
    ) -> np.ndarray:
        if not self.conditional:
            return audit_scores(
                self.unet, self.scheduler, images, num_draws, seed, batch_size, timestep_range=timestep_range
            ).numpy()

        if captions is None:
            raise UsageError(
                "A text-to-image pipeline scores ℓ(x, c): give --caption, or --train_data_dir with captions."
            )
        config = self.vae.config
        latents = torch.cat(
            [
                scale_latents(
                    self.vae.encode(images[start : start + batch_size].to(self.vae.device)).latent_dist.mean,
                    config.scaling_factor,
                    config.get("shift_factor"),
                )
                for start in range(0, len(images), batch_size)
            ]
        )
        states = self.text_side.encode(list(captions))
        return audit_scores(
            self.unet, self.scheduler, latents, num_draws, seed, batch_size, states, timestep_range
        ).numpy()


def load_audit_images(args, resolution: int, channels: int):
    """(images N×C×H×W, file names, captions or None, truth or None): U of --train_data_dir, an --image_folder,
    or the built-in U."""
    from PIL import Image

    if args.image_folder:
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(args.image_folder)
            for name in names
            if is_image_file(os.path.join(root, name))
        )
        if not files:
            raise UsageError(f"--image_folder {args.image_folder!r} holds no images.")
        transform = ImageTransform(resolution, channels, center_crop=True)
        images = []
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(transform(image))
            except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated or corrupt files
                raise UsageError(
                    f"--image_folder: {file} cannot be read as an image ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:100] if str(error) else 'no message'}). Repair or remove it."
                ) from None
        captions = None if args.caption is None else [args.caption] * len(files)
        return torch.stack(images), [os.path.relpath(f, args.image_folder) for f in files], captions, None
    if args.train_data_dir:
        from datasets import Image as ImageFeature

        column = args.image_column
        dataset = load_image_dataset(None, None, args.train_data_dir, None)
        unlabeled_rows, _ = pu_indices(dataset, column, args.pu_label_column, args.sensitive_label)
        check_images_readable(dataset, column)
        paths = dataset.cast_column(column, ImageFeature(decode=False))
        files = [
            os.path.relpath(paths[int(row)][column]["path"] or f"row {row}", args.train_data_dir)
            for row in unlabeled_rows
        ]
        captions = None
        if args.caption is not None:
            captions = [args.caption] * len(files)
        elif args.caption_column in dataset.column_names:
            every = load_captions(dataset, args.caption_column)
            captions = [every[int(row)] for row in unlabeled_rows]
        return images_as_tensor(dataset, column, unlabeled_rows, resolution, channels), files, captions, None
    # Built-in data: the pipeline's own split (pu_split.json), whose U hides sensitive digits we can score against.

    split_file = os.path.join(args.pipeline, BUILTIN_SPLIT_FILE)
    if not os.path.isfile(split_file):
        raise UsageError(
            f"--pipeline {args.pipeline!r} was not trained on the built-in data (no {BUILTIN_SPLIT_FILE}): "
            "pass --train_data_dir or --image_folder."
        )
    split = read_split_file(split_file)
    dataset = builtin_pu_dataset(split)
    unlabeled_rows, _ = pu_indices(dataset, "image", "label", "sensitive")
    hidden = set(split["indices"]["unlabeled_sensitive"])
    rows = split["indices"]["unlabeled_normal"] + split["indices"]["unlabeled_sensitive"]
    files = [f"mnist row {row}" for row in rows]  # dataset order: U normal, then U sensitive
    truth = np.array([row in hidden for row in rows])
    return images_as_tensor(dataset, "image", unlabeled_rows, resolution, channels), files, None, truth


def main(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorer = Scorer(args.pipeline, device=device)
    reference = Scorer(args.reference_pipeline, "--reference_pipeline", device) if args.reference_pipeline else None
    if reference is not None and (reference.family, reference.resolution) != (scorer.family, scorer.resolution):
        raise UsageError(
            "--reference_pipeline must be the same kind of pipeline (unconditional, or the same text-to-image "
            "family) at the same resolution as --pipeline."
        )
    if reference is not None and (
        is_flow_matching(reference.scheduler) != is_flow_matching(scorer.scheduler)
        or reference.scheduler.config.num_train_timesteps != scorer.scheduler.config.num_train_timesteps
    ):
        raise UsageError(
            "--reference_pipeline must be trained with the same objective and number of timesteps as --pipeline "
            "(flow matching against diffusion, or another T, gives losses on different scales): train the "
            "reference with the same --objective."
        )
    images, files, captions, truth = load_audit_images(args, scorer.resolution, scorer.channels)
    if scorer.conditional and captions is None:
        raise UsageError(
            f"--pipeline {args.pipeline!r} is a text-to-image pipeline, which scores ℓ(x, c): the images need "
            f"captions (--caption_column {args.caption_column!r} is not in the data): pass --caption."
        )
    print(f"Scoring {len(images)} images with {args.num_draws} shared (t, ε) draws")
    own = scorer.score(images, captions, args.num_draws, args.seed, args.batch_size, args.timestep_range)
    scores, extra = own, {"score": "ℓ (the model's per-sample diffusion loss)"}
    if reference is not None:
        other = reference.score(images, captions, args.num_draws, args.seed, args.batch_size, args.timestep_range)
        scores = own - other
        extra = {"score": "ℓ_pipeline − ℓ_reference", "reference_pipeline": args.reference_pipeline}
    beta = args.beta if args.beta is not None else recorded_beta(args.pipeline)
    extra.update(
        pipeline=args.pipeline,
        num_draws=args.num_draws,
        timestep_range=args.timestep_range,
        seed=args.seed,
        beta=beta,
        estimated_sensitive_images=None if beta is None else int(round(beta * len(images))),
    )
    if truth is not None:
        extra["ranking_quality"] = {"score": ranking_quality(scores, truth, top_k=args.top_k)}
        if reference is not None:
            extra["ranking_quality"]["pipeline ℓ alone"] = ranking_quality(own, truth, top_k=args.top_k)
            extra["ranking_quality"]["reference ℓ alone"] = ranking_quality(other, truth, top_k=args.top_k)
    summary = write_audit(args.output_dir, files, scores, images, args.top_k, extra)
    count = summary["estimated_sensitive_images"]
    print(
        f"Wrote {args.output_dir}/audit.csv, top_k.png, audit.json"
        + ("" if count is None else f"; β = {beta:.4g} suggests about {count} sensitive images: the top {count} rows")
    )
    for name, quality in summary.get("ranking_quality", {}).items():
        print(
            f"  {name}: AUC {quality['auc']:.4f}, precision@{quality['k']} {quality['precision_at_k']:.4f}, "
            f"{quality['sensitive_in_top_k']} sensitive in the top {summary['top_k']}"
        )
    return summary


if __name__ == "__main__":
    run_cli(main, parse_args)
