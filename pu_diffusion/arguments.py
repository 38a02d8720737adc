"""The flags both training scripts share, in argument groups, and the checks that refuse bad values up front.

Each script adds the groups it needs, then its own flags, then sets its defaults in one place with
``parser.set_defaults(**SCRIPT_DEFAULTS)``. Nothing rewrites ``args`` after parsing: data-dependent defaults
(the built-in preset's resolution, learning rate and steps) are set on the parser before the final parse.
Every check here runs before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import decimal
import importlib.util
import os

from .beta import DEFAULT_BETA
from .class_prior import ESTIMATORS
from .cli import UsageError, finite_float
from .losses import CAP_REFERENCES, LOSS_REDUCTIONS, METHODS, PU_ESTIMATORS, SUPERVISED_FORMS
from .outputs import check_separate, check_writable, is_within
from .run_dir import ADDED_ARGS_NEUTRAL, SCORE_FLAGS


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every flag's default beside its help (argparse's formatter, under a name that says so); a
    default of None reads "not set" (the flag's help says what happens then), not "None"."""

    def _get_help_string(self, action):
        if action.default is None and action.help and "%(default)" not in action.help:
            return f"{action.help} (default: not set)"
        return super()._get_help_string(action)


def note_preset_defaults(parser: argparse.ArgumentParser, recipe: dict, where: str) -> None:
    """Add to the help of each flag in ``recipe`` the value it takes ``where`` (e.g. with the built-in data)."""
    for action in parser._actions:
        if action.dest in recipe:
            action.help = f"{action.help} {where}: {recipe[action.dest]}."


# train_pu_diffusion.py's S-loss cap for --method pu when neither --pu_sensitive_cap nor --pu_sensitive_cap_fraction
# is given: each S loss in the subtracted β·L_S⁻ is capped at κ = min(4, 0.4/β) times U's mean loss at its noise
# level. Chosen on the robustness suite (docs/robustness.md): with a β that is too large the paper's uncapped risk
# trains towards S; the cap bounds that push. --pu_sensitive_cap 0 turns it off.
DEFAULT_SENSITIVE_CAP = {
    "pu_sensitive_cap": 4.0,
    "pu_sensitive_cap_fraction": 0.4,
    "pu_sensitive_cap_reference": "timestep",
}
CAP_FLAGS = tuple(DEFAULT_SENSITIVE_CAP)
# train_pu_diffusion.py's --pu_filter_unlabeled F for --method pu when the flag is not given: drop U's β·|U| most
# S-like images before the PU risk. Chosen on the robustness suite and the built-in benchmark (docs/robustness.md,
# sessions 14-18): where S is small next to the sensitive part of U, S alone cannot cancel that part in the PU
# risk. The CNNs it needs are those --beta auto trains; 0 turns it off (what runs made before 2026-12-06 trained).
DEFAULT_UNLABELED_FILTER = 1.0


# train_pu_diffusion.py's --beta for --method pu when the flag is not given: auto (estimate β from U and S, the
# midpoint of a trusted estimate, the paper's 0.1 when the estimate cannot be trusted). Chosen on the robustness
# suite (docs/robustness.md, session 28): a fixed 0.1 missed the floor on every cell whose true β is 0.2, auto on
# one of 12; where the point it trains with lies at or below 0.1 the U filter's floor makes both train the same model. The other
# methods that read β (--supervised_form weighted) keep DEFAULT_BETA (0.1), and so does train_pu_text_to_image.py.
DEFAULT_PU_BETA = "auto"


def beta_default(method: str):
    """--beta when not given (train_pu_diffusion.py): DEFAULT_PU_BETA for --method pu, else DEFAULT_BETA."""
    return DEFAULT_PU_BETA if method == "pu" else DEFAULT_BETA


def unlabeled_filter_default(method: str) -> float:
    """--pu_filter_unlabeled when not given: DEFAULT_UNLABELED_FILTER for --method pu, else 0 (off)."""
    return DEFAULT_UNLABELED_FILTER if method == "pu" else 0.0


# How the U-vs-S CNNs behind --beta auto and --pu_filter_unlabeled are trained where they run (measured on the
# robustness suite's draws with benchmarks/filter_score_probe.py; docs/robustness.md, session 16): with an early-
# stopping patience of 4 epochs a CNN sometimes stopped before it had learned anything (logits within ±0.3,
# hidden-vs-normal AUC 0.61–0.89 where a patience of 10 reads 0.96–0.99), and averaging cross-fittings steadies the
# rest. Runs that score nothing keep the values runs made before these flags recorded (1 cross-fitting, patience 4).
DEFAULT_SCORE_REPEATS = 3
DEFAULT_SCORE_PATIENCE = 10
SCORE_FLAGS_BEFORE = {flag: ADDED_ARGS_NEUTRAL[flag] for flag in SCORE_FLAGS}  # 1 cross-fitting, patience 4
MAX_SCORE_REPEATS = 10
MAX_SCORE_PATIENCE = 40  # epochs: train_score_network's max_epochs
# The cap flags' default in sensitive_cap_defaults' first parse: tells "given" from "left out" (not a string, which
# argparse would convert with the flag's type).
_UNSET = object()


def sensitive_cap_flag(text: str) -> float | None:
    """argparse type of --pu_sensitive_cap: κ, or None for 0 (no cap: what runs without a cap always recorded)."""
    value = finite_float(text)
    if value == 0 and decimal.Decimal(text.strip()) != 0:  # e.g. 1e-400: not the "0" that turns the cap off
        raise argparse.ArgumentTypeError(f"{text!r} rounds to 0; give 0 for no cap, or κ > 0")
    return None if value == 0 else value


def sensitive_cap_defaults(parser: argparse.ArgumentParser, input_args, default: dict | None) -> dict:
    """Parser defaults for the S-loss cap flags, from a first parse of ``input_args`` (call after the script's
    own first parse, which answers --help and refuses malformed values).

    ``default`` (train_pu_diffusion.py: DEFAULT_SENSITIVE_CAP) applies to --method pu when neither
    --pu_sensitive_cap nor --pu_sensitive_cap_fraction is given; a given --pu_sensitive_cap_reference is kept.
    ``--pu_sensitive_cap 0`` (no cap) with ρ or a reference is refused: they would cap again.
    """
    saved = {dest: parser.get_default(dest) for dest in CAP_FLAGS}
    parser.set_defaults(**dict.fromkeys(CAP_FLAGS, _UNSET))
    try:
        first, _ = parser.parse_known_args(input_args)
    finally:
        parser.set_defaults(**saved)
    cap, fraction, reference = (getattr(first, dest) for dest in CAP_FLAGS)
    if cap is None and (fraction is not _UNSET or reference is not _UNSET):
        raise UsageError(
            "--pu_sensitive_cap 0 turns the S-loss cap off; --pu_sensitive_cap_fraction and "
            "--pu_sensitive_cap_reference set a cap: drop them, or give --pu_sensitive_cap κ > 0."
        )
    if default is None or first.method != "pu" or cap is not _UNSET or fraction is not _UNSET:
        return {}
    return {key: value for key, value in default.items() if key != "pu_sensitive_cap_reference" or reference is _UNSET}


def scores_u_and_s(args: argparse.Namespace) -> bool:
    """Whether the run trains the U-vs-S CNNs: --beta auto, or --pu_filter_unlabeled (train_pu_diffusion.py)."""
    return args.beta == "auto" or bool(getattr(args, "pu_filter_unlabeled", 0))


def score_repeats_default(first: argparse.Namespace) -> dict:
    """Parser defaults of --beta_score_repeats and --beta_score_patience from a first parse: DEFAULT_SCORE_REPEATS
    and DEFAULT_SCORE_PATIENCE where the U-vs-S CNNs run (:func:`scores_u_and_s`), else none (what runs made before
    the flags recorded: SCORE_FLAGS_BEFORE)."""
    if not scores_u_and_s(first):
        return {}
    return {"beta_score_repeats": DEFAULT_SCORE_REPEATS, "beta_score_patience": DEFAULT_SCORE_PATIENCE}


def add_model_arguments(parser: argparse.ArgumentParser, pretrained_help: str, required: bool = False):
    """The "model" group with --pretrained_model_name_or_path, --revision, --variant; returns it for more flags."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--pretrained_model_name_or_path", type=str, default=None, required=required, help=pretrained_help
    )
    group.add_argument("--revision", type=str, default=None, help="Revision of --pretrained_model_name_or_path.")
    group.add_argument("--variant", type=str, default=None, help="Weights variant, e.g. fp16.")
    return group


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A dataset `datasets.load_dataset` accepts (hub name or local script).",
    )
    group.add_argument("--dataset_config_name", type=str, default=None, help="The config of --dataset_name, if any.")
    group.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="Local folder: imagefolder with unlabeled/ and sensitive/ sub-folders (or a metadata.jsonl "
        "with a label column), or parquet files.",
    )
    group.add_argument("--cache_dir", type=str, default=None, help="Where `datasets` caches downloads.")
    group.add_argument("--image_column", type=str, default="image", help="The column holding the images.")
    group.add_argument(
        "--pu_label_column",
        type=str,
        default="label",
        help="The column that says which rows are S (labelled sensitive); every other row is U.",
    )
    group.add_argument(
        "--sensitive_label",
        type=str,
        default="sensitive",
        help="The value of --pu_label_column that marks a row of S (imagefolder: the sub-folder name; "
        "a boolean column: true).",
    )
    group.add_argument(
        "--skip_image_check",
        action="store_true",
        help="Do not decode every image before training (for very large datasets).",
    )
    group.add_argument("--resolution", type=int, default=None, help="Training resolution in pixels (square).")
    group.add_argument(
        "--center_crop",
        action="store_true",
        help="Crop the centre after resizing the short side (default: a random crop).",
    )
    group.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random.")
    group.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="Worker processes loading images (0: in the main process).",
    )


def beta_value(text: str):
    """--beta: a number, or "auto" (estimate it)."""
    if text == "auto":
        return "auto"
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or auto; got {text!r}") from None


def add_pu_arguments(parser: argparse.ArgumentParser, methods=METHODS) -> None:
    group = parser.add_argument_group("PU method")
    group.add_argument(
        "--method",
        type=str,
        default="pu",
        choices=list(methods),
        help="pu: PU risk (the method); supervised: L_U⁻ + L_S⁺ (all of U treated as normal); "
        "unsupervised: plain diffusion training on U"
        + ("; erasediff: EraseDiff with D_r = U, D_f = S (a competing method)" if "erasediff" in methods else "")
        + ("; esd-x / esd-u: ESD on the S caption (cross-attention / the rest)" if "esd-x" in methods else "")
        + ".",
    )
    group.add_argument(
        "--supervised_form",
        type=str,
        default="paper",
        choices=SUPERVISED_FORMS,
        help="--method supervised only. paper: L_U⁻ + L_S⁺ (Eq. 12, the S mean weighs as much as the U mean); "
        "authors: the released code's single mean over the U+S batch of (1−y)ℓ + y(−log(1 − e^{−ℓ} + 1e-6)); "
        "weighted: β L_S⁺ + (1−β) L_U⁻ (Eq. 15, the risk PU estimates; uses --beta).",
    )
    group.add_argument(
        "--beta",
        type=beta_value,
        default=DEFAULT_BETA,
        help="β: the fraction of U that is sensitive (class prior), or auto: estimate it from U and S before "
        "training (cross-fitted U-vs-S CNN scores; see --beta_estimator).",
    )
    group.add_argument(
        "--beta_estimator",
        type=str,
        default="bbe",
        choices=ESTIMATORS,
        help="--beta auto: bbe (Best Bin Estimation, Garg et al. 2021) or dedpul (Ivanov 2020).",
    )
    group.add_argument(
        "--beta_margin",
        type=finite_float,
        default=1.0,
        help="--beta auto: train with this multiple of the point --beta_auto_point picks (the paper's best β lay "
        "above the true share).",
    )
    group.add_argument(
        "--beta_auto_point",
        type=str,
        default="estimate",
        choices=["estimate", "lower", "midpoint"],
        help="--beta auto: train with the point estimate, the lower end of its 95 %% bootstrap interval (a "
        "conservative β: an overestimated β makes PU train towards the sensitive data), or halfway between the two "
        "(BBE's upward bias, halved on the robustness suite's draws: docs/beta_and_audit.md). With --beta auto "
        "train_pu_diffusion.py defaults to midpoint (since 2026-12-07); otherwise, and in train_pu_text_to_image.py "
        "(not measured there), the default is estimate.",
    )
    group.add_argument(
        "--beta_score_repeats",
        type=int,
        default=SCORE_FLAGS_BEFORE["beta_score_repeats"],
        help="R: cross-fit the U-vs-S CNNs behind --beta auto (and --pu_filter_unlabeled) R times, each with its "
        "own folds and seeds, and average each image's score over the R (an ensemble of CNNs none of which saw "
        f"it). Default {DEFAULT_SCORE_REPEATS} where those CNNs run, else 1; 1: one cross-fitting (runs made "
        "before this flag).",
    )
    group.add_argument(
        "--beta_score_patience",
        type=int,
        default=SCORE_FLAGS_BEFORE["beta_score_patience"],
        help="Epochs without a better held-out loss before each of those CNNs stops (at most 40 epochs). Default "
        f"{DEFAULT_SCORE_PATIENCE} where they run; 4: what runs made before this flag used (some CNNs stopped "
        "before they had learned anything).",
    )
    group.add_argument(
        "--pu_estimator",
        type=str,
        default="abs",
        choices=PU_ESTIMATORS,
        help="abs: β L_S⁺ + |L_U⁻ − β L_S⁻| (authors' code); nn: non-negative PU (paper Algorithm 1).",
    )
    group.add_argument(
        "--sensitive_batch_size",
        type=int,
        default=None,
        help="Number of S samples in every batch, beside --train_batch_size U samples.",
    )
    group.add_argument(
        "--loss_reduction",
        type=str,
        default="sum",
        choices=LOSS_REDUCTIONS,
        help="ℓ per sample: sum (the method's default) or mean of the squared error over elements.",
    )
    group.add_argument(
        "--pu_sensitive_cap",
        type=sensitive_cap_flag,
        default=None,
        help="κ (not in the paper): cap each S loss in the subtracted β·L_S⁻ at κ times the batch's U loss, "
        "so S stops being pushed up once it is κ× worse than U (absPU otherwise pushes it to ≈ L_U⁻/β). "
        "0: no cap (the paper's risk). train_pu_diffusion.py caps by default (DEFAULT_SENSITIVE_CAP: "
        "--pu_sensitive_cap 4 --pu_sensitive_cap_fraction 0.4 --pu_sensitive_cap_reference timestep) when neither "
        "--pu_sensitive_cap nor --pu_sensitive_cap_fraction is given; train_pu_text_to_image.py does not.",
    )
    group.add_argument(
        "--pu_sensitive_cap_fraction",
        type=finite_float,
        default=None,
        help="ρ in (0, 1): κ = ρ/β, i.e. cap each S loss at the fraction ρ of the point where absPU's "
        "L_U⁻ − β·L_S⁻ reaches zero (L_U⁻/β), so the push scales with β: ρ 0.4 is κ 4 at β 0.1 and κ 2 at β 0.2. "
        "β is the resolved one (--beta auto's estimate or fallback). With --pu_sensitive_cap too, the smaller κ "
        "holds: --pu_sensitive_cap 4 --pu_sensitive_cap_fraction 0.4 is κ = min(4, 0.4/β).",
    )
    group.add_argument(
        "--pu_sensitive_cap_reference",
        type=str,
        default="batch",
        choices=CAP_REFERENCES,
        help="What --pu_sensitive_cap κ multiplies: batch (the batch's mean U loss) or timestep (U's mean loss at "
        "each S sample's noise level, per tenth of the schedule, so S is held at most κ× worse than U at every t).",
    )
    group.add_argument(
        "--pu_nn_gamma",
        type=finite_float,
        default=1.0,
        help="γ of nnPU (--pu_estimator nn; Kiryo et al. 2017): when L_U⁻ − βL_S⁻ < 0 the step descends "
        "−γ(L_U⁻ − βL_S⁻), which raises U's loss and lowers S's. 1: the paper's Algorithm 1; 0: skip that push "
        "(a too-large β then stalls the step instead of training towards S).",
    )
    group.add_argument(
        "--loss_temperature",
        type=finite_float,
        default=1.0,
        help="τ in p(normal | x) = exp(−ℓ/τ): every ℓ is divided by τ before the risk (1 = the paper; opt-in).",
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Seed of weights, noise, batches and augmentation (not given: weights and noise unseeded, batches seed 0).",
    )
    group.add_argument(
        "--train_batch_size", type=int, default=None, help="Number of U samples in every batch (per process)."
    )
    group.add_argument(
        "--num_train_epochs",
        "--num_epochs",
        dest="num_train_epochs",
        type=int,
        default=None,
        help="Passes over U (ignored when --max_train_steps is given).",
    )
    group.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimization steps to train; overrides --num_train_epochs."
    )
    group.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimization step."
    )
    group.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Recompute activations in the backward pass to save memory.",
    )
    group.add_argument("--learning_rate", type=finite_float, default=None, help="Peak learning rate (after warm-up).")
    group.add_argument(
        "--scale_lr",
        action="store_true",
        help="Multiply the learning rate by accumulation steps × batch size × processes.",
    )
    group.add_argument(
        "--lr_scheduler",
        type=str,
        default=None,
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        help="Learning-rate schedule (diffusers.optimization.get_scheduler).",
    )
    group.add_argument("--lr_warmup_steps", type=int, default=None, help="Warm-up steps of the schedule.")
    group.add_argument("--use_8bit_adam", action="store_true", help="8-bit AdamW from bitsandbytes.")
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    group.add_argument("--adam_beta1", type=finite_float, default=None, help="AdamW β₁.")
    group.add_argument("--adam_beta2", type=finite_float, default=0.999, help="AdamW β₂.")
    group.add_argument("--adam_weight_decay", type=finite_float, default=None, help="AdamW weight decay.")
    group.add_argument("--adam_epsilon", type=finite_float, default=1e-08, help="AdamW ε.")
    group.add_argument(
        "--max_grad_norm", type=finite_float, default=1.0, help="Gradient clipping norm (0: no clipping)."
    )
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision (default: accelerate's config). ℓ⁺ is always computed in float32.",
    )
    group.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Keep an EMA of the weights; it is what gets saved (the built-in presets turn it on: --no-use_ema "
        "turns it off).",
    )
    group.add_argument("--ema_max_decay", type=finite_float, default=0.9999, help="Largest EMA decay.")
    group.add_argument(
        "--ema_inv_gamma", type=finite_float, default=1.0, help="EMA warm-up: inverse multiplicative factor."
    )
    group.add_argument("--ema_power", type=finite_float, default=3 / 4, help="EMA warm-up: exponential factor.")
    group.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint-N every this many steps."
    )
    group.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoints (the oldest are deleted after a new one is complete; not given: all).",
    )
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint-N folder, or 'latest' (the newest complete one; with none yet, a fresh start "
        "of the same run).",
    )
    group.add_argument(
        "--ddp_timeout",
        type=int,
        default=1800,
        help="Seconds a process waits for the others (several processes only): long enough for the main process "
        "to estimate --beta auto, save, sample and push while the others wait.",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output_dir",
        type=str,
        default=None,
        help="Where the pipeline, model card, samples, logs and checkpoints are written.",
    )
    group.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace the run in --output_dir: everything it wrote is removed first.",
    )
    group.add_argument(
        "--logging_dir",
        type=str,
        default="logs",
        help="Log folder, relative to --output_dir (train_log.jsonl is always written).",
    )
    group.add_argument(
        "--report_to", type=str, default="tensorboard", help="Also log to tensorboard, wandb, all or none."
    )
    group.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline and model card at the end.")
    group.add_argument(
        "--hub_model_id", type=str, default=None, help="Hub repository (default: the name of --output_dir)."
    )
    group.add_argument(
        "--hub_token", type=str, default=None, help="Hub token (never written to disk; prefer `hf auth login`)."
    )


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation samples")
    group.add_argument(
        "--validation_steps",
        "--save_images_steps",
        dest="validation_steps",
        type=int,
        default=None,
        help="Save a grid of samples every this many steps (0: never).",
    )
    group.add_argument(
        "--num_validation_images", type=int, default=None, help="Images per validation grid (per prompt)."
    )
    group.add_argument("--num_inference_steps", type=int, default=None, help="Sampling steps of validation grids.")


def add_erasediff_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("EraseDiff (--method erasediff)")
    group.add_argument(
        "--erasediff_lambda",
        type=finite_float,
        default=0.1,
        help="λ in L_r + λ(L_f − sg[L̄_f]) (authors' DDPM default 0.1); negative: adaptive λ = max(η − cos, 0) "
        "(one process only).",
    )
    group.add_argument(
        "--erasediff_eta",
        type=finite_float,
        default=0.1,
        help="η of the adaptive λ (used when --erasediff_lambda < 0).",
    )
    group.add_argument(
        "--erasediff_inner_steps",
        type=int,
        default=2,
        help="K: inner SGD passes over the S rows (at --learning_rate) that give the reference L̄_f; weights are "
        "restored after them.",
    )


def add_shared_arguments(parser: argparse.ArgumentParser, methods=METHODS) -> None:
    """Every group both scripts share: data, PU method, training, validation samples, output."""
    add_data_arguments(parser)
    add_pu_arguments(parser, methods)
    if "erasediff" in methods:
        add_erasediff_arguments(parser)
    for add_group in (
        add_training_arguments,
        add_validation_arguments,
        add_output_arguments,
    ):
        add_group(parser)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def validate_training_args(args) -> None:
    """Refuse bad values of the shared flags, before anything is loaded or written."""
    _require(not (args.dataset_name and args.train_data_dir), "Give --dataset_name or --train_data_dir, not both.")
    if args.beta == "auto":
        _require(
            args.method == "pu",
            f"--beta auto estimates β for --method pu; --method {args.method} does not use β: drop --beta auto.",
        )
        _require(args.beta_margin > 0, f"--beta_margin must be > 0; got {args.beta_margin}.")
    else:
        _require(
            0.0 <= args.beta < 1.0, f"--beta must lie in [0, 1) (the fraction of U that is sensitive); got {args.beta}."
        )
        # --beta auto is --method pu's alone: other methods are told to drop the flag, not to give a β they may not read.
        instead = (
            "give the β you want directly"
            if args.method == "pu"
            else f"--method {args.method} takes no --beta auto: drop it"
        )
        _require(
            args.beta_margin == 1.0,
            f"--beta_margin {args.beta_margin} multiplies the estimate of --beta auto; with --beta {args.beta} {instead}.",
        )
        _require(
            args.beta_auto_point == "estimate",
            f"--beta_auto_point {args.beta_auto_point} picks what --beta auto trains with; with --beta {args.beta} "
            f"{instead}.",
        )
    _require(
        1 <= args.beta_score_repeats <= MAX_SCORE_REPEATS,
        f"--beta_score_repeats must lie in 1..{MAX_SCORE_REPEATS}; got {args.beta_score_repeats}.",
    )
    _require(
        1 <= args.beta_score_patience <= MAX_SCORE_PATIENCE,
        f"--beta_score_patience must lie in 1..{MAX_SCORE_PATIENCE} (epochs); got {args.beta_score_patience}.",
    )
    scored = scores_u_and_s(args)
    for flag, before in SCORE_FLAGS_BEFORE.items():
        _require(
            scored or getattr(args, flag) == before,
            f"--{flag} {getattr(args, flag)} sets how the U-vs-S CNNs of --beta auto and --pu_filter_unlabeled are "
            f"trained; with --beta {args.beta}"
            + (" and --pu_filter_unlabeled 0" if hasattr(args, "pu_filter_unlabeled") else "")
            + " nothing is scored: drop it.",
        )
    _require(args.sensitive_batch_size >= 0, f"--sensitive_batch_size must be >= 0; got {args.sensitive_batch_size}.")
    _require(args.loss_temperature > 0, f"--loss_temperature must be > 0; got {args.loss_temperature}.")
    _require(0 <= args.pu_nn_gamma <= 1, f"--pu_nn_gamma must lie in [0, 1]; got {args.pu_nn_gamma}.")
    _require(
        args.pu_nn_gamma == 1.0 or (args.method == "pu" and args.pu_estimator == "nn"),
        f"--pu_nn_gamma {args.pu_nn_gamma} is nnPU's: it needs --method pu --pu_estimator nn.",
    )
    _require(
        args.pu_sensitive_cap is None or args.pu_sensitive_cap > 0,
        f"--pu_sensitive_cap must be > 0 (or 0: no cap); got {args.pu_sensitive_cap}.",
    )
    _require(
        args.pu_sensitive_cap_fraction is None or 0 < args.pu_sensitive_cap_fraction < 1,
        f"--pu_sensitive_cap_fraction must lie in (0, 1); got {args.pu_sensitive_cap_fraction}.",
    )
    _require(
        args.method == "pu" or (args.pu_sensitive_cap is None and args.pu_sensitive_cap_fraction is None),
        "--pu_sensitive_cap / --pu_sensitive_cap_fraction cap the S term of the PU risk: they need --method pu.",
    )
    _require(
        args.pu_sensitive_cap_reference == "batch"
        or args.pu_sensitive_cap is not None
        or args.pu_sensitive_cap_fraction is not None,
        "--pu_sensitive_cap_reference sets what --pu_sensitive_cap multiplies: give --pu_sensitive_cap κ (or "
        "--pu_sensitive_cap_fraction ρ) too.",
    )
    if args.method == "erasediff":
        _require(args.erasediff_eta >= 0, f"--erasediff_eta must be >= 0; got {args.erasediff_eta}.")
        _require(
            args.erasediff_inner_steps >= 0, f"--erasediff_inner_steps must be >= 0; got {args.erasediff_inner_steps}."
        )
    _require(
        args.method == "unsupervised" or args.sensitive_batch_size >= 1,
        f"--method {args.method} needs S samples in every batch: set --sensitive_batch_size >= 1 "
        "(or use --method unsupervised).",
    )
    _require(args.train_batch_size >= 1, f"--train_batch_size must be at least 1; got {args.train_batch_size}.")
    _require(args.resolution >= 8, f"--resolution {args.resolution} is too small: use at least 8.")
    _require(
        args.gradient_accumulation_steps >= 1,
        f"--gradient_accumulation_steps must be at least 1; got {args.gradient_accumulation_steps}.",
    )
    _require(args.learning_rate > 0, f"--learning_rate must be > 0; got {args.learning_rate}.")
    _require(args.lr_warmup_steps >= 0, f"--lr_warmup_steps must be >= 0; got {args.lr_warmup_steps}.")
    _require(
        args.max_train_steps is None or args.max_train_steps >= 1,
        f"--max_train_steps must be at least 1; got {args.max_train_steps} (it would save an untrained model).",
    )
    _require(
        args.max_train_steps is not None or args.num_train_epochs >= 1,
        f"--num_train_epochs must be at least 1; got {args.num_train_epochs} (it would save an untrained model).",
    )
    _require(
        args.checkpointing_steps >= 1, f"--checkpointing_steps must be at least 1; got {args.checkpointing_steps}."
    )
    _require(
        args.checkpoints_total_limit is None or args.checkpoints_total_limit >= 1,
        f"--checkpoints_total_limit must be at least 1; got {args.checkpoints_total_limit}.",
    )
    _require(args.ddp_timeout >= 1, f"--ddp_timeout must be at least 1 second; got {args.ddp_timeout}.")
    _require(args.max_grad_norm >= 0, f"--max_grad_norm must be >= 0 (0 disables clipping); got {args.max_grad_norm}.")
    _require(
        args.dataloader_num_workers >= 0, f"--dataloader_num_workers must be >= 0; got {args.dataloader_num_workers}."
    )
    for flag in ("adam_beta1", "adam_beta2"):
        value = getattr(args, flag)
        _require(0.0 <= value < 1.0, f"--{flag} must lie in [0, 1); got {value}.")
    _require(0.0 < args.ema_max_decay <= 1.0, f"--ema_max_decay must lie in (0, 1]; got {args.ema_max_decay}.")
    _require(args.ema_inv_gamma > 0, f"--ema_inv_gamma must be > 0; got {args.ema_inv_gamma}.")
    _require(args.ema_power > 0, f"--ema_power must be > 0; got {args.ema_power}.")
    _require(args.adam_epsilon > 0, f"--adam_epsilon must be > 0; got {args.adam_epsilon}.")
    _require(args.adam_weight_decay >= 0, f"--adam_weight_decay must be >= 0; got {args.adam_weight_decay}.")
    _require(
        not args.use_8bit_adam or importlib.util.find_spec("bitsandbytes") is not None,
        "--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`, or drop the flag.",
    )
    _require(
        not (args.push_to_hub and args.hub_token is not None and args.report_to in ("wandb", "all")),
        "--hub_token with --report_to wandb would expose the token: run `hf auth login` instead.",
    )
    _require(
        not (os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir)),
        f"--output_dir {args.output_dir!r} is a file, not a folder: choose a folder path.",
    )
    check_training_outputs(args)
    _require(args.validation_steps >= 0, f"--validation_steps must be >= 0 (0: none); got {args.validation_steps}.")
    _require(
        args.num_validation_images >= 0, f"--num_validation_images must be >= 0; got {args.num_validation_images}."
    )
    _require(
        args.num_inference_steps >= 1, f"--num_inference_steps must be at least 1; got {args.num_inference_steps}."
    )


def check_training_outputs(args) -> None:
    """--output_dir and the log folder are writable and apart from every input (never written into what is read)."""
    inputs = {
        "--pretrained_model_name_or_path": args.pretrained_model_name_or_path,
        "--train_data_dir": args.train_data_dir,
        "--dataset_name": args.dataset_name,
        "--model_config_name_or_path": getattr(args, "model_config_name_or_path", None),
    }
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    for flag, path in (("--output_dir", args.output_dir), ("--logging_dir", logging_dir)):
        check_separate(path, flag, inputs)
        check_writable(path, flag)
    if is_within(args.output_dir, logging_dir) and not is_within(logging_dir, args.output_dir):
        raise UsageError(
            f"--logging_dir {args.logging_dir!r} contains --output_dir {args.output_dir!r}: starting over would clear "
            "logs beside other folders. Give a --logging_dir inside --output_dir (default: logs) or beside it."
        )
