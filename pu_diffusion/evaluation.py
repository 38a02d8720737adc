"""Evaluate a trained pipeline: generate samples, judge them with a classifier, write metrics.json."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import torch

from .digit_classifier import classify, load_or_train_digit_classifier
from .images import save_image_grid, to_pil_images
from .metrics import CLASSIFIER_FD, frechet_distance, non_sensitive_rate

@torch.no_grad()
def generate_samples(pipeline, num_samples: int, batch_size: int = 250, num_inference_steps: int = 100,
                     seed: int = 0) -> torch.Tensor:
    """N×C×H×W samples in [-1, 1], deterministic given ``seed``."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    chunks = []
    for begin in range(0, num_samples, batch_size):
        images = pipeline(batch_size=min(batch_size, num_samples - begin), generator=generator,
                          num_inference_steps=num_inference_steps, output_type="np").images
        chunks.append(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(chunks).float()


def load_pipeline(path: str, sampler: str | None = None):
    """DiffusionPipeline from a folder or hub id, optionally with its scheduler swapped for DDPM or DDIM."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(path)
    if sampler == "ddim" and not isinstance(pipeline.scheduler, DDIMScheduler):
        pipeline = DDIMPipeline(unet=pipeline.unet, scheduler=DDIMScheduler.from_config(pipeline.scheduler.config))
    elif sampler == "ddpm" and not isinstance(pipeline.scheduler, DDPMScheduler):
        pipeline = DDPMPipeline(unet=pipeline.unet, scheduler=DDPMScheduler.from_config(pipeline.scheduler.config))
    return pipeline


def builtin_test_images(split: dict, resolution: int) -> torch.Tensor:
    """The held-out normal-only test digits of a built-in split, as the training transform makes them."""
    from .builtin_mnist import builtin_images
    from .image_data import ImageTransform

    images, _ = builtin_images(split, "test")
    transform = ImageTransform(resolution, channels=1, center_crop=True)
    return torch.stack([transform(image) for image in images])


def evaluate_samples(samples: torch.Tensor, test_images: torch.Tensor, sensitive_classes, classifier,
                     classifier_name: str) -> dict:
    """Non-sensitive rate of ``samples`` and their classifier-feature Fréchet distance to ``test_images``."""
    predictions, features = classify(classifier, samples)
    _, test_features = classify(classifier, test_images)
    counts = np.bincount(predictions, minlength=10)
    return {
        "non_sensitive_rate": non_sensitive_rate(predictions, sensitive_classes),
        CLASSIFIER_FD: frechet_distance(features, test_features),
        "feature_space": f"penultimate layer of {classifier_name} (not Inception: no Inception weights offline)",
        "classifier": classifier_name,
        "predicted_class_counts": counts.tolist(),
        "sensitive_classes": [int(c) for c in sensitive_classes],
        "num_samples": int(len(samples)),
        "num_test_images": int(len(test_images)),
    }


def evaluate_builtin_pipeline(pipeline_path: str, num_samples: int = 500, batch_size: int = 250,
                              sampler: str | None = "ddim", num_inference_steps: int = 100, seed: int = 0,
                              cache_dir: str | None = None, pipeline=None) -> tuple[dict, torch.Tensor]:
    """Evaluate a pipeline trained on a built-in MNIST split (its folder holds pu_split.json)."""
    from .builtin_mnist import BUILTIN_SPLIT_FILE, read_split_file

    split_file = os.path.join(pipeline_path, BUILTIN_SPLIT_FILE)
    if not os.path.exists(split_file):
        raise FileNotFoundError(f"{split_file} not found: the built-in evaluation needs the split the model was "
                                "trained on; pass --test_data_dir and --classifier_name_or_path for other data.")
    split = read_split_file(split_file)
    pipeline = pipeline or load_pipeline(pipeline_path, sampler)
    resolution = pipeline.unet.config.sample_size
    classifier, classifier_info = load_or_train_digit_classifier(resolution, cache_dir)
    start = time.time()
    samples = generate_samples(pipeline, num_samples, batch_size, num_inference_steps, seed)
    generation_seconds = time.time() - start
    normal = set(split["preset"]["normal_classes"])
    sensitive = [c for c in range(10) if c not in normal]
    metrics = evaluate_samples(samples, builtin_test_images(split, resolution), sensitive, classifier,
                               f"pu-diffusion MNIST CNN (held-out accuracy {classifier_info['accuracy_held_out']:.4f})")
    metrics.update(sampler=type(pipeline.scheduler).__name__, num_inference_steps=num_inference_steps, seed=seed,
                   samples_per_second=round(num_samples / generation_seconds, 2), pipeline=pipeline_path,
                   classifier_accuracy=classifier_info["accuracy_held_out"], preset=split["preset"]["name"],
                   torch=torch.__version__, python=platform.python_version())
    return metrics, samples


def write_metrics(metrics: dict, output_dir: str, samples: torch.Tensor | None = None, grid_size: int = 64) -> str:
    """``output_dir/metrics.json`` (and ``samples_eval.png``, a grid of the first samples)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "metrics.json")
    with open(path, "w") as handle:
        json.dump(metrics, handle, indent=2)
    if samples is not None:
        images = ((samples[:grid_size].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        save_image_grid(images, os.path.join(output_dir, "samples_eval.png"), scale=max(1, 64 // samples.shape[-1]))
    return path


@torch.no_grad()
def transformers_classify(model_path: str, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """(predicted label ids, pooled last hidden states, id2label) of PIL images with a transformers classifier."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_path)
    model = AutoModelForImageClassification.from_pretrained(model_path).eval()
    predictions, features = [], []
    for begin in range(0, len(images), batch_size):
        batch = [image.convert("RGB") for image in images[begin:begin + batch_size]]
        outputs = model(**processor(images=batch, return_tensors="pt"), output_hidden_states=True)
        hidden = outputs.hidden_states[-1]
        features.append((hidden.flatten(2).mean(-1) if hidden.dim() == 4 else hidden.mean(1)).float().numpy())
        predictions.append(outputs.logits.argmax(-1).numpy())
    return np.concatenate(predictions), np.concatenate(features), dict(model.config.id2label)


def sensitive_label_ids(sensitive_labels: list[str], id2label: dict) -> list[int]:
    """Label ids for ``--sensitive_labels`` given as names or ids; unknown ones are refused by name."""
    by_name = {str(name): int(index) for index, name in id2label.items()}
    ids = []
    for label in sensitive_labels:
        if label in by_name:
            ids.append(by_name[label])
        elif label.isdigit() and int(label) in {int(k) for k in id2label}:
            ids.append(int(label))
        else:
            raise ValueError(f"--sensitive_labels: '{label}' is not a label of the classifier ({sorted(by_name)}).")
    return ids


def evaluate_with_classifier(pipeline_path: str, classifier_path: str, sensitive_labels: list[str],
                             test_data_dir: str, num_samples: int = 500, batch_size: int = 250,
                             sampler: str | None = "ddim", num_inference_steps: int = 100,
                             seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Evaluate any pipeline with a transformers image classifier and a folder of normal-only test images."""
    from .image_data import load_image_dataset

    if not (test_data_dir and os.path.isdir(test_data_dir)):
        raise ValueError(f"--test_data_dir {test_data_dir!r} is not a folder of normal-only test images.")
    pipeline = load_pipeline(pipeline_path, sampler)
    start = time.time()
    samples = generate_samples(pipeline, num_samples, batch_size, num_inference_steps, seed)
    generation_seconds = time.time() - start
    predictions, features, id2label = transformers_classify(
        classifier_path, to_pil_images(((samples.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()))
    sensitive = sensitive_label_ids(sensitive_labels, id2label)
    test_images = load_image_dataset(train_data_dir=test_data_dir)["image"]
    _, test_features, _ = transformers_classify(classifier_path, test_images)
    metrics = {
        "non_sensitive_rate": non_sensitive_rate(predictions, sensitive),
        CLASSIFIER_FD: frechet_distance(features, test_features),
        "feature_space": f"pooled last hidden state of {classifier_path} (not Inception)",
        "classifier": classifier_path, "sensitive_classes": sensitive,
        "predicted_class_counts": np.bincount(predictions, minlength=len(id2label)).tolist(),
        "num_samples": int(len(samples)), "num_test_images": int(len(test_images)),
        "sampler": type(pipeline.scheduler).__name__, "num_inference_steps": num_inference_steps, "seed": seed,
        "samples_per_second": round(num_samples / generation_seconds, 2), "pipeline": pipeline_path,
        "torch": torch.__version__, "python": platform.python_version(),
    }
    return metrics, samples
