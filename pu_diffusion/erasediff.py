"""EraseDiff (Wu et al., "Erasing data influence in diffusion models"), as a competing method for PU.

Remaining data D_r := U, forgetting data D_f := S. One step minimises

    L_r + λ · (L_f − sg[L̄_f])

    L_r   the usual diffusion loss on the U rows of the batch (mean of ℓ)
    L_f   the diffusion loss on the S rows against a *different* target: uniform noise u ~ U[0, 1)
          for unconditional models (the authors' first target, ``rand_like``), the frozen prediction for an
          anchor prompt for text-to-image. The unconditional S rows are noised with the usual Gaussian ε by
          default; the authors' DDPM code noises them with that same u (x_t = √ᾱ_t x + √(1 − ᾱ_t) u), which
          ``--erasediff_forget_noising uniform`` selects
    L̄_f   the mean L_f reached after K inner SGD passes over the S rows, starting from the current weights,
          which are restored exactly afterwards; a detached number

The reference L̄_f is a constant of the step, so the gradient is ∇L_r + λ∇L_f (it is logged, not added). The
inner passes are plain SGD at ``--learning_rate`` on the summed ℓ, so on large images L̄_f can overshoot; it
changes nothing of the update either way. With a fixed λ ≥ 0 that is one
backward pass; a negative ``--erasediff_lambda`` selects the adaptive form λ = max(η − cos(∇L_r, ∇L_f), 0),
which needs both gradients (two extra backward passes). The K inner passes cost K forward and backward passes
over the S rows on top.

Left out on purpose: the authors' class-conditional DDPM setting (this project's unconditional models have no
class input), their later "relabel" target (it needs a class to relabel to), and two bugs of their current code:
the undefined ``criteria`` loss and forget noising that reuses the retain batch's timesteps (here every row draws
its own timestep).
"""

from __future__ import annotations

import torch

from .losses import RiskTerms, per_sample_diffusion_loss


def uniform_forget_target(target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """u ~ U[0, 1) shaped like ``target``: what the model is trained to predict on S instead of the truth."""
    noise = torch.rand(target.shape, generator=generator, device="cpu" if generator is not None else target.device)
    return noise.to(device=target.device, dtype=target.dtype)


def erasediff_risk(per_sample_loss: torch.Tensor, is_sensitive: torch.Tensor, lam: float) -> RiskTerms:
    """RiskTerms of L_r + λ L_f; ``per_sample_loss`` holds ℓ against the forget target on the S rows.

    The reference L̄_f of the objective L_r + λ(L_f − sg[L̄_f]) is a constant of the step, so it is left out of
    the value backpropagated and reported (it changes neither the update nor the comparison between steps) and
    logged on its own as "L_f_ref". The terms reuse the PU names: L_U⁻ = L_r, L_S⁻ = L_f (L_S⁺ is not part of
    the method and logged as 0).
    """
    is_sensitive = is_sensitive.to(device=per_sample_loss.device, dtype=torch.bool)
    retain = per_sample_loss[~is_sensitive].float()
    forget = per_sample_loss[is_sensitive].float()
    if retain.numel() == 0 or forget.numel() == 0:
        raise ValueError("--method erasediff needs U and S samples in every batch.")
    L_r, L_f = retain.mean(), forget.mean()  # noqa: N806 - the paper's symbols
    objective = L_r + lam * L_f
    return RiskTerms(
        objective=objective,
        risk=objective,
        L_U_neg=L_r,
        L_S_neg=L_f,
        L_S_pos=torch.zeros((), device=L_r.device),
        negative_risk=L_r,
    )


def adaptive_lambda(retain_loss: torch.Tensor, forget_loss: torch.Tensor, parameters, eta: float) -> float:
    """λ = max(η − cos(∇L_r, ∇L_f), 0), both gradients taken over ``parameters`` (graphs kept for the step)."""
    parameters = [p for p in parameters if p.requires_grad]
    grads_r = torch.autograd.grad(retain_loss, parameters, retain_graph=True, allow_unused=True)
    grads_f = torch.autograd.grad(forget_loss, parameters, retain_graph=True, allow_unused=True)
    flat_r = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads_r, parameters)])
    flat_f = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads_f, parameters)])
    cosine = torch.nn.functional.cosine_similarity(flat_r.float(), flat_f.float(), dim=0).item()
    return max(eta - cosine, 0.0)


@torch.no_grad()
def _snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def reference_forget_loss(forget_loss_fn, parameters, inner_steps: int, learning_rate: float) -> float:
    """L̄_f: the mean forget loss after ``inner_steps`` SGD passes on it from the current weights, then restored.

    ``forget_loss_fn()`` runs a forward pass and returns the scalar L_f of the S rows. The weights are copied
    before and copied back after, bit for bit; no optimizer state or ``.grad`` is touched.
    """
    parameters = [p for p in parameters if p.requires_grad]
    if inner_steps <= 0:
        with torch.no_grad():
            return float(forget_loss_fn())
    saved = _snapshot(parameters)
    try:
        for _ in range(inner_steps):
            loss = forget_loss_fn()
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            with torch.no_grad():
                for parameter, grad in zip(parameters, grads):
                    if grad is not None:
                        parameter.sub_(learning_rate * grad)
        with torch.no_grad():
            return float(forget_loss_fn())
    finally:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved):
                parameter.copy_(value)


def erasediff_targets(target: torch.Tensor, is_sensitive: torch.Tensor, forget_target: torch.Tensor) -> torch.Tensor:
    """``target`` with its S rows replaced by ``forget_target``'s (U rows keep the true diffusion target)."""
    mask = is_sensitive.to(device=target.device, dtype=torch.bool).view(-1, *([1] * (target.dim() - 1)))
    return torch.where(mask, forget_target.to(target.dtype), target)


def erasediff_terms(
    per_sample_loss, is_sensitive, reference: float, parameters, lam: float, eta: float = 0.1, reduce=None
) -> RiskTerms:
    """One EraseDiff step's RiskTerms (logs gain "lambda" and "L_f_ref").

    ``per_sample_loss``: ℓ of every row, against the forget target on the S rows; ``reference``: L̄_f from
    ``reference_forget_loss``, computed *before* the forward pass that gave ``per_sample_loss`` (its inner passes
    change the weights in place, which a later backward through that graph would refuse); ``lam`` < 0 selects
    the adaptive λ (single process only: it takes gradients with ``torch.autograd.grad``, which DDP does not
    support); ``reduce``: mean over processes of the fixed-λ logs.
    """
    if lam < 0:
        parts = erasediff_risk(per_sample_loss, is_sensitive, 0.0)
        lam = adaptive_lambda(parts.L_U_neg, parts.L_S_neg, parameters, eta)
    terms = erasediff_risk(per_sample_loss, is_sensitive, lam)
    terms.extra = {"lambda": lam, "L_f_ref": reference}
    return terms


def erasediff_step(
    forward,
    forget_forward,
    target: torch.Tensor,
    forget_target: torch.Tensor,
    is_sensitive: torch.Tensor,
    *,
    parameters,
    reduction: str,
    lam: float,
    eta: float,
    inner_steps: int,
    learning_rate: float,
) -> RiskTerms:
    """One EraseDiff step of a script: the S rows' target becomes ``forget_target``; L̄_f from ``inner_steps``
    passes of ``forget_forward()`` (the S rows only, on the unwrapped model, which the passes move and restore);
    then ``forward()``, the one prediction over the whole U+S batch, gives ℓ and the step's RiskTerms.

    The order is fixed: the inner passes change the weights in place, so they run before the batch's forward pass
    (a backward through a graph built before them would be refused).
    """
    forget = is_sensitive.to(device=target.device, dtype=torch.bool)
    target = erasediff_targets(target, forget, forget_target)
    forget_rows_target = target[forget]
    reference = reference_forget_loss(
        lambda: per_sample_diffusion_loss(forget_forward(), forget_rows_target, reduction).mean(),
        parameters=parameters,
        inner_steps=inner_steps,
        learning_rate=learning_rate,
    )
    per_sample_loss = per_sample_diffusion_loss(forward(), target, reduction)
    return erasediff_terms(per_sample_loss, forget, reference, parameters=parameters, lam=lam, eta=eta)
