"""Estimating β, the share of U that is sensitive, from U and S alone (`--beta auto`).

Both estimators read cross-fitted scores of a classifier trained to tell S from U: every image is scored by a
model that did not train on it, higher = more S-like. If U = β·S-like + (1 − β)·normal, the scores' densities
satisfy f_U = β f_S + (1 − β) f_N, so β ≤ f_U / f_S everywhere, with equality where no normal image scores.

- Best Bin Estimation (Garg et al., NeurIPS 2021): with q_S(c), q_U(c) the fractions of S and U scoring ≥ c,
  pick the c minimising q_U/q_S + (1 + γ)/q_S · (√(ln(4/δ)/2n_U) + √(ln(4/δ)/2n_S)) and return q_U/q_S there.
- DEDPUL (Ivanov, 2020): estimate f_S and f_U of the logit scores with kernel densities, take the ratio
  r = f_S/f_U on U (the posterior of "S-like" is β·r), fit it increasing in the score, and take the largest
  β whose clipped posteriors still average to β: β = mean_U min(1, β·r), which is 1 / max r.

Both are written from the papers' descriptions. The interval is a bootstrap over the scores (the classifier is
not retrained), so it leaves out the classifier's own variance; the benchmark measures its coverage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

ESTIMATORS = ("bbe", "dedpul")
MIN_NORMAL_AUC = 0.9
MAX_INTERVAL_WIDTH = 0.1


def best_bin_estimate(unlabeled_scores, sensitive_scores, delta: float = 0.1, gamma: float = 0.01) -> float:
    """Best Bin Estimation of β = share of S-like data in U, from scores where higher means more S-like."""
    unlabeled = np.sort(np.asarray(unlabeled_scores, dtype=np.float64))
    sensitive = np.sort(np.asarray(sensitive_scores, dtype=np.float64))
    thresholds = np.unique(np.concatenate([unlabeled, sensitive]))
    q_unlabeled = 1.0 - np.searchsorted(unlabeled, thresholds, side="left") / len(unlabeled)  # share ≥ c
    q_sensitive = 1.0 - np.searchsorted(sensitive, thresholds, side="left") / len(sensitive)
    slack = (1.0 + gamma) * (
        math.sqrt(math.log(4.0 / delta) / (2 * len(unlabeled)))
        + math.sqrt(math.log(4.0 / delta) / (2 * len(sensitive)))
    )
    valid = q_sensitive > 0
    ratio = np.where(valid, q_unlabeled / np.where(valid, q_sensitive, 1.0), np.inf)
    objective = ratio + np.where(valid, slack / np.where(valid, q_sensitive, 1.0), np.inf)
    return float(min(ratio[int(np.argmin(objective))], 1.0))


def _bandwidth(values: np.ndarray) -> float:
    """Silverman's rule of thumb, robust to outliers (the smaller of std and IQR/1.34)."""
    spread = min(values.std(ddof=1), (np.percentile(values, 75) - np.percentile(values, 25)) / 1.34)
    if spread <= 0:
        spread = values.std(ddof=1)
    return 0.9 * spread * len(values) ** -0.2


def _kernel_density(values: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel density of ``values`` on ``grid``."""
    density = np.zeros(len(grid))
    for start in range(0, len(values), 1024):
        offsets = (grid[:, None] - values[None, start : start + 1024]) / bandwidth
        density += np.exp(-0.5 * offsets**2).sum(1)
    return density / (len(values) * bandwidth * math.sqrt(2 * math.pi))


def increasing_fit(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in squared error (pool adjacent violators)."""
    means, counts = [], []
    for value in np.asarray(values, dtype=np.float64):
        means.append(value)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            count = counts[-2] + counts[-1]
            means[-2] = (means[-2] * counts[-2] + means[-1] * counts[-1]) / count
            counts[-2] = count
            means.pop()
            counts.pop()
    return np.repeat(means, counts)


def dedpul_estimate(unlabeled_scores, sensitive_scores) -> float:
    """DEDPUL's estimate of β from logit scores: kernel densities, their ratio on U, the clipped-posterior fixed point.

    Both densities use one bandwidth, S's (U's own would be wider, U being a mixture, and would flatten U's
    S-like bump: the ratio f_S/f_U, and with it the clipping, would be biased up and β down).
    """
    unlabeled = np.asarray(unlabeled_scores, dtype=np.float64)
    sensitive = np.asarray(sensitive_scores, dtype=np.float64)
    if np.ptp(unlabeled) == 0 or np.ptp(sensitive) == 0:
        raise ValueError("DEDPUL needs scores that vary within U and within S.")
    bandwidth = _bandwidth(sensitive)
    grid = np.linspace(min(unlabeled.min(), sensitive.min()), max(unlabeled.max(), sensitive.max()), 1024)
    f_sensitive = np.interp(unlabeled, grid, _kernel_density(sensitive, grid, bandwidth))
    f_unlabeled = np.interp(unlabeled, grid, _kernel_density(unlabeled, grid, bandwidth))
    ratio = f_sensitive / np.maximum(f_unlabeled, 1e-300)
    # The ratio rises with the score (a higher score is more S-like): a monotone fit averages the kernel
    # estimates' noise, which the clipping below would otherwise turn into a downward bias.
    order = np.argsort(unlabeled, kind="stable")
    ratio[order] = increasing_fit(ratio[order])
    ratio = ratio / ratio.mean()  # E_U[f_S/f_U] = 1 exactly; the kernel estimates only approximately
    # With mean_U r = 1, mean_U min(1, β r) ≤ β, with equality exactly when no posterior is clipped, i.e.
    # β ≤ 1 / max r: the largest fixed point is 1 / max r, computed directly (iterating only approaches it).
    # The monotone fit makes max r the mean of the top block of U scores rather than one image's ratio.
    return float(min(1.0, 1.0 / ratio.max()))


def roc_auc(sensitive_scores, unlabeled_scores) -> float:
    """P(an S score > a U score), ties counting half (Mann–Whitney)."""
    from scipy.stats import rankdata

    sensitive = np.asarray(sensitive_scores, dtype=np.float64)
    unlabeled = np.asarray(unlabeled_scores, dtype=np.float64)
    ranks = rankdata(np.concatenate([sensitive, unlabeled]))
    wins = ranks[: len(sensitive)].sum() - len(sensitive) * (len(sensitive) + 1) / 2
    return float(wins / (len(sensitive) * len(unlabeled)))


def normal_part_auc(auc: float, beta: float) -> float:
    """AUC of S against the normal part of U implied by ``beta``.

    U's S-like share scores like S (AUC 0.5 against it), so AUC(S, U) = (1 − β)·AUC(S, normal) + β/2: even a
    perfect classifier reaches only 1 − β/2 against U. Separability is judged on the normal part.
    """
    if beta >= 1.0:
        return 0.5
    return float(np.clip((auc - beta / 2) / (1 - beta), 0.0, 1.0))


@dataclass
class BetaEstimate:
    """β estimated from U and S, with what it rests on; ``trusted`` is False when it should not be used."""

    estimate: float
    interval: tuple[float, float]
    estimator: str
    auc: float  # held-out AUC of S vs U scores
    normal_auc: float  # of S vs the normal part of U (see normal_part_auc)
    n_unlabeled: int
    n_sensitive: int
    trusted: bool
    reason: str

    def to_dict(self) -> dict:
        data = asdict(self)
        data["interval"] = list(self.interval)
        return data

    def describe(self) -> str:
        low, high = self.interval
        return (
            f"β = {self.estimate:.4f} (95 % bootstrap interval {low:.4f}–{high:.4f}, {self.estimator.upper()}; "
            f"held-out AUC S vs U {self.auc:.3f}, S vs U's normal part {self.normal_auc:.3f}; "
            f"{self.n_unlabeled} U, {self.n_sensitive} S)"
        )


def estimate_class_prior(
    unlabeled_scores,
    sensitive_scores,
    estimator: str = "bbe",
    num_bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
    min_normal_auc: float = MIN_NORMAL_AUC,
    max_interval_width: float = MAX_INTERVAL_WIDTH,
) -> BetaEstimate:
    """β from cross-fitted scores, a bootstrap interval, the separability, and whether to trust it."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
    function = best_bin_estimate if estimator == "bbe" else dedpul_estimate
    unlabeled = np.asarray(unlabeled_scores, dtype=np.float64)
    sensitive = np.asarray(sensitive_scores, dtype=np.float64)
    if len(unlabeled) < 2 or len(sensitive) < 2:
        raise ValueError(f"Estimating β needs at least 2 U and 2 S images; got {len(unlabeled)} U, {len(sensitive)} S.")
    estimate = function(unlabeled, sensitive)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_bootstrap):
        u = unlabeled[rng.integers(0, len(unlabeled), len(unlabeled))]
        s = sensitive[rng.integers(0, len(sensitive), len(sensitive))]
        try:
            draws.append(function(u, s))
        except ValueError:  # a resample without spread (tiny sets): no estimate from it
            continue
    tail = (1 - level) / 2 * 100
    interval = (float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))) if draws else (0.0, 1.0)
    auc = roc_auc(sensitive, unlabeled)
    # The correction grows with β, so an overestimate would make S look more separable and vouch for itself:
    # judge at the interval's lower end (still a limit: an interval that sits wholly above the truth passes).
    normal_auc = normal_part_auc(auc, min(estimate, interval[0]))
    problems = []
    if normal_auc < min_normal_auc:
        problems.append(
            f"the classifier separates S from U's normal part with AUC {normal_auc:.3f} < {min_normal_auc} "
            "(S may not look different enough from the rest of U, or there are too few images to learn it)"
        )
    if interval[1] - interval[0] > max_interval_width:
        problems.append(
            f"the interval {interval[0]:.3f}–{interval[1]:.3f} is wider than {max_interval_width} "
            f"({len(unlabeled)} U and {len(sensitive)} S are too few for a precise estimate)"
        )
    return BetaEstimate(
        estimate=float(estimate),
        interval=interval,
        estimator=estimator,
        auc=auc,
        normal_auc=normal_auc,
        n_unlabeled=len(unlabeled),
        n_sensitive=len(sensitive),
        trusted=not problems,
        reason="; ".join(problems) or "separable, and the interval is narrow",
    )


# ---- Cross-fitted scores of a small U-vs-S CNN ----


def score_network(channels: int) -> nn.Module:
    """A small CNN giving one logit (S-like) per image; any resolution ≥ 8 px."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(64, 1),
    )  # fmt: skip


def _weighted_loss(logits: torch.Tensor, is_sensitive: torch.Tensor, sensitive_weight: float) -> torch.Tensor:
    """Class-weighted logistic loss: S rows weigh n_U/n_S, so both classes count equally."""
    weights = torch.where(is_sensitive > 0, sensitive_weight, 1.0)
    losses = nn.functional.binary_cross_entropy_with_logits(logits, is_sensitive, reduction="none")
    return (weights * losses).sum() / weights.sum()


def _stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    assignment = np.empty(len(labels), dtype=np.int64)
    for value in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == value))
        assignment[rows] = np.arange(len(rows)) % folds
    return assignment


def fold_assignment(n_unlabeled: int, n_sensitive: int, folds: int, seed: int) -> np.ndarray:
    """The cross-fitting fold of each image of [U, S] (stratified: every fold holds its share of U and of S)."""
    labels = np.concatenate([np.zeros(n_unlabeled, dtype=np.int64), np.ones(n_sensitive, dtype=np.int64)])
    return _stratified_folds(labels, folds, np.random.default_rng(seed))


def rank_within_folds(unlabeled_scores, sensitive_scores, fold_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each score replaced by its quantile among the scores of its own fold (ties share the mean rank).

    Each fold is scored by its own CNN, so raw logits of different folds sit on different scales, and BBE's top bin
    mixes them. The folds are stratified, so each holds the same U/S mixture: per-fold quantiles put every fold on
    one scale without changing any fold's own ordering.
    """
    from scipy.stats import rankdata

    scores = np.concatenate([np.asarray(unlabeled_scores, float), np.asarray(sensitive_scores, float)])
    ranked = np.empty_like(scores)
    for fold in np.unique(fold_of):
        rows = np.flatnonzero(fold_of == fold)
        ranked[rows] = rankdata(scores[rows]) / len(rows)
    n_unlabeled = len(unlabeled_scores)
    return ranked[:n_unlabeled], ranked[n_unlabeled:]


def train_score_network(
    images: torch.Tensor,
    is_sensitive: torch.Tensor,
    seed: int = 0,
    max_epochs: int = 40,
    patience: int = 4,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    augment=None,
) -> nn.Module:
    """Train ``score_network`` on images (N×C×H×W) with class weights; stop early on a held-out 20 %.

    ``augment(batch, rng) -> batch``, if given, transforms each training batch (never the held-out check)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = is_sensitive.cpu().numpy().astype(np.int64)
    holdout = _stratified_folds(labels, 5, rng) == 0
    train_rows, check_rows = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    sensitive_weight = float((labels == 0).sum()) / max(float((labels == 1).sum()), 1.0)
    network = score_network(images.shape[1]).to(images.device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    best_loss, best_state, stale = math.inf, None, 0
    for _ in range(max_epochs):
        network.train()
        order = train_rows[rng.permutation(len(train_rows))]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two rows
                continue
            batch = images[rows] if augment is None else augment(images[rows], rng)
            loss = _weighted_loss(network(batch).squeeze(1), is_sensitive[rows], sensitive_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            held_out = _weighted_loss(
                network(images[check_rows]).squeeze(1), is_sensitive[check_rows], sensitive_weight
            ).item()
        if held_out < best_loss - 1e-4:
            best_loss, stale = held_out, 0
            best_state = {key: value.clone() for key, value in network.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    return network.eval()


@torch.no_grad()
def cross_fitted_scores(
    unlabeled_images: torch.Tensor,
    sensitive_images: torch.Tensor,
    folds: int = 3,
    seed: int = 0,
    device=None,
    repeats: int = 1,
    **train_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Logit scores (higher = S-like) of every U and S image from a CNN that did not train on it.

    ``repeats`` > 1 cross-fits that many times, each with its own fold assignment and CNN seeds (repeat r uses
    seed + 1000·r), and returns each image's mean logit over the repeats: an ensemble of CNNs none of which saw the
    image. Runs inside ``torch.random.fork_rng``: seeding its CNNs leaves the caller's random state (CPU and CUDA)
    untouched, so a training run's --seed means the same with --beta auto as without.
    """
    if folds < 2:
        raise ValueError(f"Cross-fitting needs at least 2 folds; got {folds}.")
    if repeats < 1:
        raise ValueError(f"Cross-fitting needs at least 1 repeat; got {repeats}.")
    device = torch.device(device or "cpu")
    images = torch.cat([unlabeled_images, sensitive_images]).float().to(device)
    is_sensitive = torch.cat([torch.zeros(len(unlabeled_images)), torch.ones(len(sensitive_images))]).to(device)
    scores = np.zeros(len(images))
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        for repeat in range(repeats):
            repeat_seed = seed + 1000 * repeat
            fold_of = fold_assignment(len(unlabeled_images), len(sensitive_images), folds, repeat_seed)
            for fold in range(folds):
                test = fold_of == fold
                with torch.enable_grad():
                    network = train_score_network(
                        images[~test], is_sensitive[~test], seed=repeat_seed + fold, **train_kwargs
                    ).to(device)
                rows = np.flatnonzero(test)
                scores[rows] += (
                    torch.cat([network(images[rows[i : i + 512]]).squeeze(1) for i in range(0, len(rows), 512)])
                    .cpu()
                    .numpy()
                )
    scores /= repeats
    return scores[: len(unlabeled_images)], scores[len(unlabeled_images) :]


def estimate_beta_from_images(
    unlabeled_images: torch.Tensor,
    sensitive_images: torch.Tensor,
    estimator: str = "bbe",
    folds: int = 3,
    seed: int = 0,
    device=None,
    repeats: int = 1,
    patience: int = 4,
    **kwargs,
) -> BetaEstimate:
    """``estimate_class_prior`` on cross-fitted CNN scores of images (N×C×H×W in [-1, 1]), averaged over
    ``repeats`` cross-fittings whose CNNs stop after ``patience`` epochs without progress (see
    :func:`cross_fitted_scores`)."""
    unlabeled_scores, sensitive_scores = cross_fitted_scores(
        unlabeled_images, sensitive_images, folds, seed, device, repeats=repeats, patience=patience
    )
    return estimate_class_prior(unlabeled_scores, sensitive_scores, estimator, seed=seed, **kwargs)
