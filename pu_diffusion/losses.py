"""Loss math of Positive-Unlabeled diffusion models (pure functions on tensors).

Notation (DESIGN.md §2): for a sample x with noise ε and timestep t,

    ℓ(x)  = || target − model_pred ||²   summed over every element of the sample
    ℓ⁻(x) = ℓ(x)                         BCE loss for the label "normal",  p(normal|x) = exp(−ℓ)
    ℓ⁺(x) = −log(1 − exp(−ℓ(x)))         BCE loss for the label "sensitive"

and, on a batch split into its unlabeled part U and its sensitive part S,

    L_U⁻ = mean_U ℓ⁻,  L_S⁻ = mean_S ℓ⁻,  L_S⁺ = mean_S ℓ⁺
    unsupervised  L_U⁻
    supervised    L_U⁻ + L_S⁺
    absPU         β L_S⁺ + | L_U⁻ − β L_S⁻ |
    nnPU          β L_S⁺ + max(0, L_U⁻ − β L_S⁻); when L_U⁻ − β L_S⁻ < 0 the step descends
                  −(L_U⁻ − β L_S⁻) instead (Kiryo et al. 2017, paper Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("unsupervised", "supervised", "pu")
PU_ESTIMATORS = ("abs", "nn")
LOSS_REDUCTIONS = ("sum", "mean")


def diffusion_target(scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     prediction_type: str | None = None) -> torch.Tensor:
    """What the network is trained to predict for ``scheduler``'s prediction type.

    epsilon → ε;  v_prediction → v = √ᾱ_t ε − √(1−ᾱ_t) x₀;  sample → x₀.
    """
    prediction_type = prediction_type or scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(sample, noise, timesteps)
    if prediction_type == "sample":
        return sample
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}: use one of 'epsilon', 'v_prediction', 'sample'."
    )


def per_sample_diffusion_loss(model_pred: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """ℓ per sample: squared error over all non-batch elements, in float32.

    ``reduction="sum"`` (default, the authors' choice) sums the squared error over every
    pixel/latent element; ``"mean"`` averages it instead, which shrinks ℓ by the number of
    elements and so changes how saturated ℓ⁺ is (a different method, opt-in only).
    """
    if model_pred.shape != target.shape:
        raise ValueError(f"model_pred {tuple(model_pred.shape)} and target {tuple(target.shape)} differ in shape")
    squared_error = (model_pred.float() - target.float()).pow(2).flatten(start_dim=1)
    if reduction == "sum":
        return squared_error.sum(dim=1)
    if reduction == "mean":
        return squared_error.mean(dim=1)
    raise ValueError(f"Unknown loss reduction {reduction!r}: use one of {LOSS_REDUCTIONS}.")


def sensitive_loss(loss: torch.Tensor, min_loss: float = 1e-12) -> torch.Tensor:
    """ℓ⁺ = −log(1 − exp(−ℓ)), computed stably as −log(−expm1(−ℓ)) in float32.

    ℓ is clamped to ``min_loss`` from below, so ℓ⁺ and its gradient −1/(exp(ℓ) − 1) stay finite
    for ℓ → 0; for large ℓ, expm1 keeps 1 − exp(−ℓ) from rounding to 1 too early, and the value
    and gradient go smoothly to 0. Autocast is disabled so half precision never enters.
    """
    with torch.autocast(device_type=loss.device.type, enabled=False):
        loss = loss.float().clamp(min=min_loss)
        return -torch.log(-torch.expm1(-loss))


@dataclass
class RiskTerms:
    """The value to backpropagate and the parts to log for one batch."""

    loss: torch.Tensor  # what .backward() is called on
    risk: torch.Tensor  # the risk value to report (equals ``loss`` except in the nnPU fallback branch)
    unlabeled_normal: torch.Tensor  # L_U⁻
    sensitive_normal: torch.Tensor  # L_S⁻
    sensitive_sensitive: torch.Tensor  # L_S⁺
    negative_risk: torch.Tensor  # L_U⁻ − β L_S⁻ (for pu); L_U⁻ otherwise
    nn_branch_fired: bool = False  # nnPU: the negative risk was < 0 and −(L_U⁻ − β L_S⁻) was descended

    def log_dict(self) -> dict[str, float]:
        return {
            "loss": self.risk.detach().item(),
            "L_U-": self.unlabeled_normal.detach().item(),
            "L_S-": self.sensitive_normal.detach().item(),
            "L_S+": self.sensitive_sensitive.detach().item(),
            "neg_risk": self.negative_risk.detach().item(),
            "nn_fired": float(self.nn_branch_fired),
        }


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.new_zeros(())


def pu_risk(per_sample_loss: torch.Tensor, is_sensitive: torch.Tensor, method: str = "pu", beta: float = 0.1,
            estimator: str = "abs") -> RiskTerms:
    """Risk of one batch from its per-sample losses ℓ and its S mask (see module docstring).

    ``per_sample_loss``: (B,) ℓ of each sample; ``is_sensitive``: (B,) bool, True for rows of S.
    ``method``: unsupervised | supervised | pu; ``estimator`` (pu only): abs | nn.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {METHODS}.")
    if estimator not in PU_ESTIMATORS:
        raise ValueError(f"Unknown PU estimator {estimator!r}: use one of {PU_ESTIMATORS}.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}.")
    is_sensitive = is_sensitive.to(device=per_sample_loss.device, dtype=torch.bool)
    per_sample_loss = per_sample_loss.float()
    unlabeled = per_sample_loss[~is_sensitive]
    sensitive = per_sample_loss[is_sensitive]
    if unlabeled.numel() == 0:
        raise ValueError("The batch holds no unlabeled (U) sample; every PU risk needs at least one.")
    if method != "unsupervised" and sensitive.numel() == 0:
        raise ValueError(f"--method {method} needs at least one sensitive (S) sample in every batch.")

    unlabeled_normal = unlabeled.mean()
    sensitive_normal = _mean_or_zero(sensitive)
    sensitive_sensitive = _mean_or_zero(sensitive_loss(sensitive)) if sensitive.numel() else sensitive_normal

    if method == "unsupervised":
        return RiskTerms(unlabeled_normal, unlabeled_normal, unlabeled_normal, sensitive_normal.detach(),
                         sensitive_sensitive.detach(), unlabeled_normal)
    if method == "supervised":
        risk = unlabeled_normal + sensitive_sensitive
        return RiskTerms(risk, risk, unlabeled_normal, sensitive_normal, sensitive_sensitive, unlabeled_normal)

    positive_risk = beta * sensitive_sensitive
    negative_risk = unlabeled_normal - beta * sensitive_normal
    if estimator == "abs":
        risk = positive_risk + negative_risk.abs()
        return RiskTerms(risk, risk, unlabeled_normal, sensitive_normal, sensitive_sensitive, negative_risk)
    # nnPU
    risk = positive_risk + negative_risk.clamp(min=0.0)
    if negative_risk.item() < 0:
        return RiskTerms(-negative_risk, risk, unlabeled_normal, sensitive_normal, sensitive_sensitive,
                         negative_risk, nn_branch_fired=True)
    return RiskTerms(risk, risk, unlabeled_normal, sensitive_normal, sensitive_sensitive, negative_risk)
