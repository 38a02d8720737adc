"""Metrics of generated samples (pure functions on arrays).

non-sensitive rate = (1/N) Σ_i 1[classifier(x_i) ∉ sensitive classes], with its Wilson interval
Fréchet distance   = ||μ_a − μ_b||² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})   of two feature sets
class perplexity   = exp(entropy) of the predicted normal classes
"""

from __future__ import annotations

import math

import numpy as np

CLASSIFIER_FD = "frechet_distance_classifier_features"


def _psd_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those at rounding level (the numerical null space) set to 0."""
    tolerance = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(values.dtype).eps
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_psd_eigenvalues(values))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) of two covariance matrices, exact for singular ones.

    Σ_a Σ_b has the eigenvalues of the symmetric PSD matrix Σ_a^{1/2} Σ_b Σ_a^{1/2}, so the trace is the sum of
    their square roots: real by construction. A general matrix square root (scipy.linalg.sqrtm) of Σ_a Σ_b
    instead returns large spurious imaginary parts when the covariances are singular, which classifier
    features make common (dead ReLU units, fewer samples than feature dimensions).
    """
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(_psd_eigenvalues(values)).sum())


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    Each set needs at least two rows (a covariance). Singular covariances (constant or duplicated feature
    columns, fewer rows than columns) are handled exactly; non-finite features are refused.
    """
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    for name, features in (("first", features_a), ("second", features_b)):
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(
                f"frechet_distance: the {name} feature set has shape {features.shape}; it needs at "
                "least 2 rows (samples) to estimate a covariance."
            )
        if not np.isfinite(features).all():
            raise ValueError(f"frechet_distance: the {name} feature set holds NaN or infinite values.")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"frechet_distance: the feature sets have {features_a.shape[1]} and {features_b.shape[1]} "
            "columns; both must come from the same feature space."
        )
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    return float(
        ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    )


def count_non_sensitive(predicted_classes, sensitive_classes) -> int:
    """Number of samples whose predicted class is not one of ``sensitive_classes``."""
    return int((~np.isin(np.asarray(predicted_classes), np.asarray(list(sensitive_classes)))).sum())


def non_sensitive_rate(predicted_classes, sensitive_classes) -> float:
    """Share of samples whose predicted class is not one of ``sensitive_classes``."""
    predicted = np.asarray(predicted_classes)
    if predicted.size == 0:
        raise ValueError("non_sensitive_rate needs at least one prediction.")
    return count_non_sensitive(predicted, sensitive_classes) / predicted.size


def class_perplexity(class_counts, exclude=()) -> float:
    """exp(entropy) of the judge's predicted classes, leaving out the classes in ``exclude`` (the sensitive ones).

    It reads as "how many equally common classes the samples amount to": 5 when the five normal digits are drawn
    equally often, less when a method thins out some of them (collateral erasure or mode dropping), which the
    non-sensitive rate cannot see. 0 when no sample falls in the counted classes.
    """
    counts = np.delete(np.asarray(class_counts, dtype=np.float64), list(exclude))
    if counts.sum() == 0:
        return 0.0
    share = counts[counts > 0] / counts.sum()
    return float(np.exp(-(share * np.log(share)).sum()))


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if total <= 0:
        raise ValueError("wilson_interval needs at least one trial.")
    share = successes / total
    denominator = 1 + z**2 / total
    centre = (share + z**2 / (2 * total)) / denominator
    half_width = z * math.sqrt(share * (1 - share) / total + z**2 / (4 * total**2)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


# A sensitive class counts as not suppressed when its share of the samples is still at least this fraction of a
# reference model's (unsupervised, or the base model) and the reference drew enough of it for the ratio to mean
# something. PU pushes down only what S shows: a sensitive class S holds too few images of (or a look-alike of a
# normal class) is where it fails, and the per-class counts are how a user with a judge sees it.
NOT_SUPPRESSED_RATIO = 0.75
MIN_REFERENCE_COUNT = 10


def sensitive_classes_against_reference(class_counts, reference_counts, sensitive_classes, labels=None) -> list[dict]:
    """Per sensitive class (an index into the counts): its count and share of the samples, the reference's, their
    ratio, and ``suppressed`` (False when the share is ≥ NOT_SUPPRESSED_RATIO × the reference's and the reference
    drew at least MIN_REFERENCE_COUNT of it; None when the reference drew too few to tell)."""
    counts = np.asarray(class_counts, dtype=float)
    reference = np.asarray(reference_counts, dtype=float)
    if counts.shape != reference.shape:
        raise ValueError(f"class counts of {counts.shape[0]} classes against a reference of {reference.shape[0]}")
    rows = []
    for index in sensitive_classes:
        share, reference_share = counts[index] / counts.sum(), reference[index] / reference.sum()
        ratio = share / reference_share if reference_share > 0 else None
        enough = reference[index] >= MIN_REFERENCE_COUNT
        rows.append({
            "class": str(labels[index]) if labels is not None else str(index),
            "count": round(float(counts[index]), 2), "share": float(share),
            "reference_count": round(float(reference[index]), 2), "reference_share": float(reference_share),
            "ratio": None if ratio is None else float(ratio),
            "suppressed": None if not enough else bool(ratio < NOT_SUPPRESSED_RATIO),
        })  # fmt: skip
    return rows
