"""Metrics of generated samples (pure functions on arrays).

    non-sensitive rate = (1/N) Σ_i 1[classifier(x_i) ∉ sensitive classes]
    Fréchet distance   = ||μ_a − μ_b||² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})   of two feature sets
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

CLASSIFIER_FD = "frechet_distance_classifier_features"


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    Each set needs at least two rows (a covariance). A matrix square root with a non-negligible imaginary
    part means the covariances are numerically singular: it is retried with a small diagonal offset, and
    refused if the imaginary part stays.
    """
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    for name, features in (("first", features_a), ("second", features_b)):
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"frechet_distance: the {name} feature set has shape {features.shape}; it needs at "
                             "least 2 rows (samples) to estimate a covariance.")
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        largest = np.abs(covmean.imag).max()
        if largest > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"frechet_distance: the covariance square root has an imaginary part of {largest:.3g}; "
                             "the features are degenerate (use more samples).")
        covmean = covmean.real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def non_sensitive_rate(predicted_classes, sensitive_classes) -> float:
    """Share of samples whose predicted class is not one of ``sensitive_classes``."""
    predicted = np.asarray(predicted_classes)
    if predicted.size == 0:
        raise ValueError("non_sensitive_rate needs at least one prediction.")
    return float(1.0 - np.isin(predicted, np.asarray(list(sensitive_classes))).mean())
