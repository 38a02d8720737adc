"""Loss math of Positive-Unlabeled diffusion models (pure functions on tensors).

Notation (DESIGN.md §2): for a sample x with noise ε and timestep t,

    ℓ(x)  = || target − model_pred ||²   summed over every element of the sample
    ℓ⁻(x) = ℓ(x)                         BCE loss for the label "normal",  p(normal|x) = exp(−ℓ)
    ℓ⁺(x) = −log(1 − exp(−ℓ(x)))         BCE loss for the label "sensitive"

and, on a batch split into its unlabeled part U and its sensitive part S,

    L_U⁻ = mean_U ℓ⁻,  L_S⁻ = mean_S ℓ⁻,  L_S⁺ = mean_S ℓ⁺
    unsupervised  L_U⁻
    supervised    L_U⁻ + L_S⁺  (paper Eq. 12; ``supervised_form="paper"``)
                  or mean over the whole U+S batch of (1−y)·ℓ + y·(−log(1 − e^{−ℓ} + 1e-6))
                  (``supervised_form="authors"``: the released code's form; an S row weighs what a U row weighs)
                  or β L_S⁺ + (1−β) L_U⁻  (``supervised_form="weighted"``: the β-weighted PN risk, paper Eq. 15,
                  which absPU/nnPU estimate without labels; with U all normal it is the PN oracle of that risk)
    absPU         β L_S⁺ + | L_U⁻ − β L_S⁻ |
    nnPU          β L_S⁺ + max(0, L_U⁻ − β L_S⁻); when L_U⁻ − β L_S⁻ < 0 the step descends
                  −(L_U⁻ − β L_S⁻) instead (Kiryo et al. 2017, paper Algorithm 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

METHODS = ("unsupervised", "supervised", "pu")
PU_ESTIMATORS = ("abs", "nn")
LOSS_REDUCTIONS = ("sum", "mean")
SUPERVISED_FORMS = ("paper", "authors", "weighted")
LN2 = math.log(2.0)


def diffusion_target(
    scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str | None = None
) -> torch.Tensor:
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
    raise ValueError(f"Unknown prediction_type {prediction_type!r}: use one of 'epsilon', 'v_prediction', 'sample'.")


def is_flow_matching(scheduler) -> bool:
    """Whether ``scheduler`` is a flow-matching one (FlowMatchEulerDiscreteScheduler: SD3, FLUX, rectified flow)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def flow_matching_sigmas(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """σ of training-timestep indices ``timesteps`` ∈ [0, T) on the flow-matching scheduler's own training grid:
    (t + 1)/T, shifted as the scheduler shifts it (σ → sσ/(1 + (s − 1)σ)). Index 0 is the least noise, as for DDPM,
    so timestep bands and ``sample_timesteps`` mean the same for both objectives."""
    if scheduler.config.get("use_dynamic_shifting"):
        raise ValueError("A flow-matching scheduler with use_dynamic_shifting needs a resolution-dependent shift.")
    steps = scheduler.config.num_train_timesteps
    sigmas = (timesteps.cpu().to(torch.float64) + 1) / steps  # float64 on the CPU (MPS has none)
    shift = scheduler.config.shift
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).float()


def noisy_input_and_target(scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """(x_t, the model's timestep input, the target) for training-timestep indices ``timesteps`` ∈ [0, T).

    DDPM-family schedulers: x_t = ``add_noise``(x, ε, t), input t, target by prediction type (:func:`diffusion_target`).
    Flow matching (rectified flow): σ = :func:`flow_matching_sigmas`, x_t = (1 − σ) x + σ ε, input σ·T (the
    scheduler's own timestep values), target v = ε − x. ℓ = ‖v_θ − (ε − x)‖² with t uniform is a weighted ELBO
    (Kingma & Gao 2023), read as the classifier exp(−ℓ) like the ε-loss; docs/training.md has the caveat.
    """
    if is_flow_matching(scheduler):
        sigmas = flow_matching_sigmas(scheduler, timesteps).to(sample.device)  # back on the sample's device
        scale = sigmas.view(-1, *([1] * (sample.dim() - 1)))
        noisy = ((1 - scale) * sample.float() + scale * noise.float()).to(sample.dtype)
        return noisy, sigmas * scheduler.config.num_train_timesteps, noise - sample
    noisy = scheduler.add_noise(sample, noise, timesteps)
    return noisy, timesteps, diffusion_target(scheduler, sample, noise, timesteps)


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
    """ℓ⁺ = −log(1 − exp(−ℓ)), computed stably in float32 (the log1mexp of Mächler 2012).

    ℓ ≤ ln 2: −log(−expm1(−ℓ)) (no cancellation as 1 − exp(−ℓ) → 0); ℓ > ln 2: −log1p(−exp(−ℓ)), which stays
    ≈ exp(−ℓ) > 0 with gradient ≈ −exp(−ℓ) until exp(−ℓ) underflows (ℓ ≈ 100 in float32) instead of rounding
    to exactly 0 from ℓ ≈ 17. ℓ is clamped to ``min_loss`` from below, so ℓ⁺ and its gradient −1/(exp(ℓ) − 1)
    stay finite as ℓ → 0. Autocast is disabled so half precision never enters.
    """
    with torch.autocast(device_type=loss.device.type, enabled=False):
        loss = loss.float().clamp(min=min_loss)
        small = loss <= LN2
        # Each branch is evaluated on inputs that are safe for it, so neither value nor gradient is ever NaN.
        near_zero = -torch.log(-torch.expm1(-torch.where(small, loss, torch.full_like(loss, LN2))))
        far = -torch.log1p(-torch.exp(-torch.where(small, torch.full_like(loss, 1.0), loss)))
        return torch.where(small, near_zero, far)


@dataclass
class RiskTerms:
    """The value to backpropagate and the named parts of one batch's risk (one name per quantity everywhere).

    objective       what ``.backward()`` is called on
    risk            the risk value reported (equals ``objective`` except in the nnPU fallback branch)
    L_U_neg         L_U⁻ = mean_U ℓ           (log key "L_U-")
    L_S_neg         L_S⁻ = mean_S ℓ           (log key "L_S-")
    L_S_pos         L_S⁺ = mean_S ℓ⁺          (log key "L_S+")
    negative_risk   L_U⁻ − β L_S⁻ for pu, L_U⁻ otherwise   (log key "neg_risk")
    nn_branch       nnPU: the negative risk was < 0 and −(L_U⁻ − β L_S⁻) was descended   (log key "nn_branch")
    """

    objective: torch.Tensor
    risk: torch.Tensor
    L_U_neg: torch.Tensor  # noqa: N815 - the paper's symbol
    L_S_neg: torch.Tensor  # noqa: N815
    L_S_pos: torch.Tensor  # noqa: N815
    negative_risk: torch.Tensor
    nn_branch: bool = False
    extra: dict[str, float] = field(default_factory=dict)  # a method's own numbers (EraseDiff: lambda, L_f_ref)

    def log_dict(self) -> dict[str, float]:
        """The terms under their log / progress-bar keys: risk, L_U-, L_S-, L_S+, neg_risk, nn_branch (+ extra)."""
        return {
            **self.extra,
            "risk": self.risk.detach().item(),
            "L_U-": self.L_U_neg.detach().item(),
            "L_S-": self.L_S_neg.detach().item(),
            "L_S+": self.L_S_pos.detach().item(),
            "neg_risk": self.negative_risk.detach().item(),
            "nn_branch": float(self.nn_branch),
        }


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.new_zeros(())


def pu_risk(
    per_sample_loss: torch.Tensor,
    is_sensitive: torch.Tensor,
    method: str = "pu",
    beta: float = 0.1,
    estimator: str = "abs",
    reduce_for_branch=None,
    supervised_form: str = "paper",
    temperature: float = 1.0,
    sensitive_cap: float | None = None,
    nn_gamma: float = 1.0,
    cap_reference: torch.Tensor | None = None,
) -> RiskTerms:
    """Risk of one batch from its per-sample losses ℓ and its S mask (see module docstring).

    ``per_sample_loss``: (B,) ℓ of each sample; ``is_sensitive``: (B,) bool, True for rows of S.
    ``method``: unsupervised | supervised | pu; ``estimator`` (pu only): abs | nn.
    ``reduce_for_branch``: nnPU only, maps the detached local L_U⁻ − β L_S⁻ to the value the branch is chosen
    on; with several processes pass the mean over processes, so every process takes the same branch.
    ``supervised_form`` (supervised only): paper (L_U⁻ + L_S⁺) | authors (one mean over the batch, ℓ⁺ capped) |
    weighted (β L_S⁺ + (1−β) L_U⁻, Eq. 15).
    ``temperature`` τ: the classifier becomes p(normal | x) = exp(−ℓ/τ), i.e. every ℓ is divided by τ first
    (τ = number of elements turns the summed ℓ into the mean-reduced one). Opt-in; 1 is the paper's method.
    ``sensitive_cap`` κ (pu only, opt-in): the subtracted term becomes β · mean_S min(ℓ, κ · sg[L_U⁻]), so an S
    sample stops being pushed up once its ℓ is κ times the U mean. Without it, absPU pushes L_S⁻ until
    L_U⁻ − β L_S⁻ reaches 0, i.e. to L_S⁻ ≈ L_U⁻/β (10× the U loss at β = 0.1); with κβ < 1 the negative risk
    stays positive and that push stops far earlier. L_S⁻ is logged uncapped. ``cap_reference`` (B,) replaces
    sg[L_U⁻] by a value per row (only the S rows' are read), e.g. U's mean ℓ at each S row's noise level
    (:func:`timestep_matched_reference`); it is divided by τ like ℓ and detached.
    ``nn_gamma`` γ (nnPU only): the negative branch descends −γ(L_U⁻ − βL_S⁻) (Kiryo et al.'s discount; 1 is the
    paper's Algorithm 1, 0 makes that step a no-op instead of a push towards S).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {METHODS}.")
    if estimator not in PU_ESTIMATORS:
        raise ValueError(f"Unknown PU estimator {estimator!r}: use one of {PU_ESTIMATORS}.")
    if supervised_form not in SUPERVISED_FORMS:
        raise ValueError(f"Unknown supervised form {supervised_form!r}: use one of {SUPERVISED_FORMS}.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if sensitive_cap is not None and not sensitive_cap > 0:
        raise ValueError(f"sensitive_cap must be > 0, got {sensitive_cap}.")
    is_sensitive = is_sensitive.to(device=per_sample_loss.device, dtype=torch.bool)
    per_sample_loss = per_sample_loss.float() / temperature
    unlabeled = per_sample_loss[~is_sensitive]
    sensitive = per_sample_loss[is_sensitive]
    if unlabeled.numel() == 0:
        raise ValueError("The batch holds no unlabeled (U) sample; every PU risk needs at least one.")
    if method != "unsupervised" and sensitive.numel() == 0:
        raise ValueError(f"--method {method} needs at least one sensitive (S) sample in every batch.")

    L_U_neg = unlabeled.mean()  # noqa: N806 - the paper's symbols
    L_S_neg = _mean_or_zero(sensitive)  # noqa: N806
    L_S_pos = _mean_or_zero(sensitive_loss(sensitive)) if sensitive.numel() else L_S_neg  # noqa: N806
    terms = {"L_U_neg": L_U_neg, "L_S_neg": L_S_neg, "L_S_pos": L_S_pos}

    if method == "unsupervised":
        return RiskTerms(
            objective=L_U_neg,
            risk=L_U_neg,
            L_U_neg=L_U_neg,
            L_S_neg=L_S_neg.detach(),
            L_S_pos=L_S_pos.detach(),
            negative_risk=L_U_neg,
        )
    if method == "supervised" and supervised_form == "authors":
        capped = -torch.log(1 - torch.exp(-sensitive) + 1e-6)  # the released code's ℓ⁺, capped at −log 1e-6
        risk = torch.cat([unlabeled, capped]).mean()
        return RiskTerms(objective=risk, risk=risk, negative_risk=L_U_neg, **terms)
    if method == "supervised" and supervised_form == "weighted":
        risk = beta * L_S_pos + (1 - beta) * L_U_neg
        return RiskTerms(objective=risk, risk=risk, negative_risk=(1 - beta) * L_U_neg, **terms)
    if method == "supervised":
        risk = L_U_neg + L_S_pos
        return RiskTerms(objective=risk, risk=risk, negative_risk=L_U_neg, **terms)

    positive_risk = beta * L_S_pos
    subtracted = L_S_neg
    if sensitive_cap is not None:
        reference = L_U_neg.detach()
        if cap_reference is not None:
            reference = cap_reference.to(per_sample_loss.device).detach().float()[is_sensitive] / temperature
        subtracted = torch.minimum(sensitive, sensitive_cap * reference).mean()
    negative_risk = L_U_neg - beta * subtracted
    if estimator == "abs":
        risk = positive_risk + negative_risk.abs()
        return RiskTerms(objective=risk, risk=risk, negative_risk=negative_risk, **terms)
    # nnPU
    risk = positive_risk + negative_risk.clamp(min=0.0)
    branch_value = negative_risk.detach() if reduce_for_branch is None else reduce_for_branch(negative_risk.detach())
    if branch_value.item() < 0:
        objective = -nn_gamma * negative_risk
        return RiskTerms(objective=objective, risk=risk, negative_risk=negative_risk, nn_branch=True, **terms)
    return RiskTerms(objective=risk, risk=risk, negative_risk=negative_risk, **terms)


def sample_timesteps(
    num_train_timesteps: int, is_sensitive: torch.Tensor, sensitive_min_timestep: int = 0, device=None
) -> torch.Tensor:
    """t ~ U{0, …, T−1} for every row; with t₀ = ``sensitive_min_timestep`` > 0 the S rows draw U{t₀, …, T−1}.

    With t₀ = 0 this is the one ``torch.randint`` call of plain diffusion training (the random stream is unchanged).
    """
    if not 0 <= sensitive_min_timestep < num_train_timesteps:
        raise ValueError(
            f"sensitive_min_timestep must lie in [0, {num_train_timesteps}); got {sensitive_min_timestep}."
        )
    timesteps = torch.randint(0, num_train_timesteps, (len(is_sensitive),), device=device).long()
    if sensitive_min_timestep > 0:
        high = torch.randint(sensitive_min_timestep, num_train_timesteps, (len(is_sensitive),), device=device).long()
        timesteps = torch.where(is_sensitive.to(device=timesteps.device, dtype=torch.bool), high, timesteps)
    return timesteps


def timestep_banded_pu_risk(
    per_sample_loss: torch.Tensor,
    is_sensitive: torch.Tensor,
    timesteps: torch.Tensor,
    min_timestep: int,
    **pu_kwargs,
) -> RiskTerms:
    """The PU risk on the noise levels that decide what is drawn; plain diffusion on U below them (opt-in).

    With t₀ = ``min_timestep``, the U rows with t < t₀ give L_U,low⁻ = mean ℓ, and the U rows with t ≥ t₀ together
    with the S rows give R_high = ``pu_risk(...)`` (absPU or nnPU, as ``pu_kwargs`` say). The objective is

        (n_low / n_U) · L_U,low⁻ + (n_high / n_U) · R_high

    i.e. the paper's PU risk with t restricted to [t₀, T) for its S terms and for the U mean they correct, and
    plain diffusion on U at t < t₀. S rows should be drawn with t ≥ t₀ (``sample_timesteps``); S rows below t₀
    are left out. Why: with ε-prediction ℓ is largest at low noise, so there the unbounded −β·ℓ push on S
    dominates the gradient, while what class a sample becomes is settled at high noise. Not in the paper.
    With t₀ = 0 this equals ``pu_risk``.
    """
    is_sensitive = is_sensitive.to(device=per_sample_loss.device, dtype=torch.bool)
    in_band = timesteps.to(per_sample_loss.device) >= min_timestep
    unlabeled_low = per_sample_loss[~is_sensitive & ~in_band].float()
    n_unlabeled = int((~is_sensitive).sum())
    n_high = int((~is_sensitive & in_band).sum())
    if n_unlabeled == 0:
        raise ValueError("The batch holds no unlabeled (U) sample; every PU risk needs at least one.")
    weight_low, weight_high = len(unlabeled_low) / n_unlabeled, n_high / n_unlabeled
    temperature = pu_kwargs.get("temperature", 1.0)  # pu_risk divides by it too
    L_U_low = _mean_or_zero(unlabeled_low) / temperature  # noqa: N806
    L_U_all = per_sample_loss[~is_sensitive].float().mean() / temperature  # noqa: N806
    if n_high == 0:  # no U row in the band to correct: this batch trains U only
        sensitive = per_sample_loss[is_sensitive & in_band].float() / temperature
        L_S_neg = _mean_or_zero(sensitive).detach()  # noqa: N806
        L_S_pos = _mean_or_zero(sensitive_loss(sensitive)).detach() if sensitive.numel() else L_S_neg  # noqa: N806
        return RiskTerms(L_U_low, L_U_low, L_U_all, L_S_neg, L_S_pos, negative_risk=L_U_low.detach())
    if pu_kwargs.get("cap_reference") is not None:  # per row: keep the band's rows
        pu_kwargs = {**pu_kwargs, "cap_reference": pu_kwargs["cap_reference"].to(in_band.device)[in_band]}
    band = pu_risk(per_sample_loss[in_band], is_sensitive[in_band], **pu_kwargs)
    return RiskTerms(
        objective=weight_low * L_U_low + weight_high * band.objective,
        risk=weight_low * L_U_low + weight_high * band.risk,
        L_U_neg=L_U_all,
        L_S_neg=band.L_S_neg,
        L_S_pos=band.L_S_pos,
        negative_risk=band.negative_risk,
        nn_branch=band.nn_branch,
        extra={"L_U-_band": band.L_U_neg.detach().item()},
    )


CAP_REFERENCES = ("batch", "timestep")  # what --pu_sensitive_cap κ multiplies: L_U⁻, or U's ℓ at each S row's t
CAP_REFERENCE_BANDS = 10  # --pu_sensitive_cap_reference timestep: U's mean ℓ per tenth of [0, T)


def timestep_matched_reference(
    per_sample_loss: torch.Tensor,
    is_sensitive: torch.Tensor,
    timesteps: torch.Tensor,
    num_train_timesteps: int,
    num_bands: int = CAP_REFERENCE_BANDS,
) -> torch.Tensor:
    """For every row, the batch's mean U loss at that row's noise level: the mean ℓ of the U rows whose t lies in
    the same one of ``num_bands`` equal bands of [0, T), or, where that band holds no U row, in the nearest band
    that does. Returns (B,), detached.

    Why: ℓ spans orders of magnitude over t (with ε-prediction it is largest at low noise), so a cap at κ times the
    batch's mean U loss leaves the low-noise S rows capped from the start and lets the high-noise ones, where S and
    U look alike, be pushed to many times their natural loss. Matched per band, the cap is κ× U at every t.
    """
    loss = per_sample_loss.detach().float()
    is_sensitive = is_sensitive.to(device=loss.device, dtype=torch.bool)
    if not bool((~is_sensitive).any()):
        raise ValueError("The batch holds no unlabeled (U) sample; the cap's reference needs at least one.")
    steps = timesteps.to(loss.device).float()
    band = (steps * num_bands / num_train_timesteps).floor().long().clamp(0, num_bands - 1)
    u_band, u_loss = band[~is_sensitive], loss[~is_sensitive]
    sums = torch.zeros(num_bands, device=loss.device).index_add_(0, u_band, u_loss)
    counts = torch.zeros(num_bands, device=loss.device).index_add_(0, u_band, torch.ones_like(u_loss))
    filled = torch.nonzero(counts > 0).squeeze(1)
    index = torch.arange(num_bands, device=loss.device)
    # the nearest band holding a U row (ties: the lower band); the band itself where it holds one
    nearest = filled[(index[:, None] - filled[None, :]).abs().argmin(dim=1)]
    means = sums[nearest] / counts[nearest]
    return means[band]


SENSITIVE_BAND_STATS = ("n", "n<ln2", "sum l+", "sum dl+", "max dl+")  # per band, log key "S <stat> t<lo>-<hi>"


def timestep_bands(num_train_timesteps: int, num_bands: int = 4) -> list[tuple[int, int]]:
    """``num_bands`` equal timestep bands [lo, hi) covering [0, T)."""
    edges = [round(i * num_train_timesteps / num_bands) for i in range(num_bands + 1)]
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def sensitive_term_by_band(
    per_sample_loss: torch.Tensor,
    is_sensitive: torch.Tensor,
    timesteps: torch.Tensor,
    num_train_timesteps: int,
    num_bands: int = 4,
    temperature: float = 1.0,
) -> dict[str, float]:
    """How live ℓ⁺ is on S, per timestep band: a diagnostic logged beside the risk (it changes nothing).

    For the S rows of each band [lo, hi) of t: their count ("S n t<lo>-<hi−1>"), how many have ℓ < ln 2
    ("S n<ln2"), Σ ℓ⁺ ("S sum l+") and Σ and max of g = |dℓ⁺/dℓ| = 1/(e^ℓ − 1) ("S sum dl+", "S max dl+"), with
    ℓ divided by ``temperature`` as in the risk. g is ℓ⁺'s pull on an S sample relative to the unit push of
    the subtracted −β·ℓ term: g ≪ 1 means ℓ⁺ is inert there, g > 1 that it outweighs the push. Sums and counts
    (not means) so that steps and processes add up exactly: a band's mean is Σ/n over the run.
    """
    is_sensitive = is_sensitive.to(device=per_sample_loss.device, dtype=torch.bool)
    loss = (per_sample_loss.detach().float() / temperature)[is_sensitive].clamp(min=1e-12)
    steps = timesteps.to(per_sample_loss.device)[is_sensitive]
    pull = 1.0 / torch.expm1(loss)  # inf only at ℓ = 0 exactly, which the clamp rules out
    plus = sensitive_loss(loss)
    names, values = [], []
    for lo, hi in timestep_bands(num_train_timesteps, num_bands):
        rows = ((steps >= lo) & (steps < hi)).float()  # one mask per band; no host sync until the end
        band = f"t{lo}-{hi - 1}"
        names += [f"S {stat} {band}" for stat in SENSITIVE_BAND_STATS]
        values += [
            rows.sum(),
            (rows * (loss < LN2).float()).sum(),
            (rows * plus).sum(),
            (rows * pull).sum(),
            (rows * pull).max() if len(rows) else pull.new_zeros(()),
        ]
    return dict(zip(names, torch.stack(values).tolist()))


@torch.no_grad()
def monte_carlo_diffusion_loss(
    unet,
    scheduler,
    images: torch.Tensor,
    num_draws: int = 8,
    reduction: str = "sum",
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    *,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    text_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_{t,ε} ℓ(x) ≈ (1/K) Σ_k ℓ(x; t_k, ε_k) for each x (N×C×H×W), K = ``num_draws``; returns (N,).

    The project's one estimate of E[ℓ] (scoring, β estimation's inputs and the audit all call it). Each image draws
    its own (t, ε) from ``generator`` (chunk by chunk, draw by draw), unless ``draws`` = (noise K×C×H×W,
    timesteps K) gives draws shared by every image, which makes scores of different images comparable draw for
    draw. x are images in [-1, 1] for an unconditional UNet, or scaled VAE latents with ``text_states``
    (N×tokens×dim, each image's caption encoded) for a conditional one: ℓ(x, c). The UNet runs in its own dtype;
    ℓ is taken and summed in float64.
    """
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    totals = torch.zeros(len(images), dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(device)
        condition = ()  # positional, as the training step calls it (the SDXL/SD3/FLUX hooks read it there)
        if text_states is not None:
            condition = (text_states[start : start + batch_size].to(device, dtype),)
        for draw in range(num_draws):
            if draws is not None:
                noise = draws[0][draw].expand_as(chunk).to(device)
                timesteps = draws[1][draw].repeat(len(chunk)).to(device)
            else:
                noise = torch.randn(chunk.shape, generator=generator).to(device)
                timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(chunk),), generator=generator)
                timesteps = timesteps.to(device)
            noisy, model_timesteps, target = noisy_input_and_target(scheduler, chunk, noise, timesteps)
            prediction = unet(noisy.to(dtype), model_timesteps, *condition, return_dict=False)[0]
            totals[start : start + len(chunk)] += per_sample_diffusion_loss(prediction.float(), target, reduction).cpu()
    return (totals / num_draws).float()


@dataclass(frozen=True, kw_only=True)
class PURisk:
    """The risk of a batch, fixed once from the flags and the resolved β: ``risk(per_sample_loss, is_sensitive,
    timesteps)`` → RiskTerms.

    ``method``/``beta``/``estimator``/``supervised_form``/``temperature``/``sensitive_cap`` as in :func:`pu_risk`;
    ``sensitive_cap_reference`` "timestep" caps each S row at κ times U's mean ℓ at its noise level
    (:func:`timestep_matched_reference`; needs ``num_train_timesteps`` and ``timesteps``), "batch" at κ·L_U⁻;
    ``min_timestep`` t₀ > 0 takes :func:`timestep_banded_pu_risk` (which needs ``timesteps``); ``reduce_for_branch``
    averages nnPU's branch value over processes. ``num_train_timesteps`` given (and ``timesteps`` passed), a
    pu/supervised step also logs how live ℓ⁺ is on S per quarter of [0, T) (:func:`sensitive_term_by_band`).
    ``beta`` is a number: a run resolves ``--beta auto`` first.
    """

    method: str
    beta: float
    estimator: str = "abs"
    supervised_form: str = "paper"
    temperature: float = 1.0
    sensitive_cap: float | None = None
    nn_gamma: float = 1.0
    sensitive_cap_reference: str = "batch"
    min_timestep: int = 0
    reduce_for_branch: Callable | None = None
    num_train_timesteps: int | None = None  # given: log ℓ⁺ on S per timestep band (sensitive_term_by_band)

    def __post_init__(self):
        if isinstance(self.beta, str) or not 0 <= self.beta < 1:
            raise ValueError(f"PURisk needs a resolved β in [0, 1); got {self.beta!r}.")
        if self.sensitive_cap_reference not in CAP_REFERENCES:
            raise ValueError(f"Unknown cap reference {self.sensitive_cap_reference!r}: use one of {CAP_REFERENCES}.")
        if self.sensitive_cap_reference == "timestep" and not self.num_train_timesteps:
            raise ValueError("The timestep cap reference needs num_train_timesteps.")

    def __call__(self, per_sample_loss: torch.Tensor, is_sensitive: torch.Tensor, timesteps=None) -> RiskTerms:
        options = {
            "method": self.method,
            "beta": self.beta,
            "estimator": self.estimator,
            "reduce_for_branch": self.reduce_for_branch,
            "supervised_form": self.supervised_form,
            "temperature": self.temperature,
            "sensitive_cap": self.sensitive_cap,
            "nn_gamma": self.nn_gamma,
        }
        if self.sensitive_cap is not None and self.sensitive_cap_reference == "timestep" and self.method == "pu":
            if timesteps is None:
                raise ValueError("The timestep cap reference needs each row's timestep.")
            options["cap_reference"] = timestep_matched_reference(
                per_sample_loss, is_sensitive, timesteps, self.num_train_timesteps
            )
        if self.min_timestep:
            terms = timestep_banded_pu_risk(per_sample_loss, is_sensitive, timesteps, self.min_timestep, **options)
        else:
            terms = pu_risk(per_sample_loss, is_sensitive, **options)
        if self.num_train_timesteps and timesteps is not None and self.method != "unsupervised":
            bands = sensitive_term_by_band(
                per_sample_loss, is_sensitive, timesteps, self.num_train_timesteps, temperature=self.temperature
            )
            terms.extra.update(bands)
        return terms
