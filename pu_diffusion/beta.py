"""β, the share of U that is sensitive: as given with --beta, or estimated before training with --beta auto.

--beta auto scores U and S with cross-fitted U-vs-S CNNs (:func:`pu_diffusion.class_prior.estimate_beta_from_images`)
on the main process and sends the result to the others. An estimate that cannot be made, or cannot be trusted
(low separability or a wide interval), is reported with the reason and replaced by DEFAULT_BETA. Every function
returns {"beta", "beta_source", "beta_estimate"}: the β to train with and where it came from (the model card
and pu_run.json record both). Functions take values, not flags.
"""

from __future__ import annotations

from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from .class_prior import estimate_beta_from_images

logger = get_logger(__name__, log_level="INFO")

DEFAULT_BETA = 0.1  # the paper's β, used when --beta auto cannot be trusted
ESTIMATION_RESOLUTION = 32  # --beta auto scores images at most this large: enough to tell S from U, and cheap


def given_beta(beta: float) -> dict:
    """A β the user gave with --beta."""
    return {"beta": float(beta), "beta_source": "given with --beta", "beta_estimate": None}


def resolve_auto_beta(
    accelerator,
    load_images,
    estimator: str,
    margin: float,
    ddp_timeout: int,
    recorded: dict | None = None,
    point: str = "estimate",
) -> dict:
    """--beta auto: the ``recorded`` β of a resumed run, else the estimate from ``load_images()`` (→ U and S tensors,
    N×C×H×W) × ``margin``, computed on the main process and broadcast to the others."""
    if recorded:
        logger.info(f"--beta auto: resuming with the recorded β = {recorded['beta']:.4f}")
        return recorded
    resolved = [None]
    if accelerator.is_main_process:
        try:
            resolved = [estimate_on_main_process(accelerator, load_images, estimator, margin, ddp_timeout, point)]
        except Exception as error:  # the other processes wait in the broadcast below: tell them, then fail
            resolved = [{"error": f"{type(error).__name__}: {error}"}]
            if accelerator.num_processes > 1:
                broadcast_object_list(resolved)
            raise
    if accelerator.num_processes > 1:
        broadcast_object_list(resolved)
    if "error" in resolved[0]:
        raise RuntimeError(f"--beta auto failed on the main process: {resolved[0]['error']}")
    return resolved[0]


def estimate_on_main_process(
    accelerator, load_images, estimator: str, margin: float, ddp_timeout: int, point: str = "estimate"
) -> dict:
    """Score U and S, estimate β, decide whether to trust it; an estimate that cannot be made falls back too."""
    unlabeled, sensitive = load_images()
    logger.info(
        f"--beta auto: estimating β from {len(unlabeled)} U and {len(sensitive)} S images; the other processes wait up to "
        f"--ddp_timeout {ddp_timeout} s (for very large data, run `python estimate_pu_beta.py` first "
        "and pass --beta)"
    )
    try:
        estimate = estimate_beta_from_images(unlabeled, sensitive, estimator, device=accelerator.device)
    except ValueError as error:  # e.g. constant scores, or too few images to score
        logger.warning(
            f"--beta auto (--beta_estimator {estimator}) could not estimate β: {error}. Training with "
            f"β = {DEFAULT_BETA} (the paper's value); pass --beta to choose it yourself."
        )
        return {
            "beta": DEFAULT_BETA,
            "beta_source": f"the default {DEFAULT_BETA}: --beta auto could not estimate β ({error})",
            "beta_estimate": None,
        }
    resolved = beta_from_estimate(estimate, margin, point)
    if estimate.trusted:
        logger.info(f"--beta auto: training with β = {resolved['beta']:.4f}; {resolved['beta_source']}")
    else:
        logger.warning(
            f"--beta auto: the estimate cannot be trusted: {estimate.describe()}; {estimate.reason}. Training "
            f"with β = {DEFAULT_BETA} (the paper's value); pass --beta to choose it yourself."
        )
    return resolved


def beta_from_estimate(estimate, margin: float = 1.0, point: str = "estimate") -> dict:
    """The β to train with, given a BetaEstimate: trusted → the estimate (``point="lower"``: its interval's lower
    end, --beta_auto_point) × ``margin`` (--beta_margin); else DEFAULT_BETA."""
    if point not in ("estimate", "lower"):
        raise ValueError(f"point must be 'estimate' or 'lower'; got {point!r}.")
    if estimate.trusted:
        value = estimate.estimate if point == "estimate" else estimate.interval[0]
        beta = min(value * margin, 0.99)
        source = (
            f"estimated with --beta auto: {estimate.describe()}"
            + (", the interval's lower end (--beta_auto_point lower)" if point == "lower" else "")
            + (f", × --beta_margin {margin}" if margin != 1.0 else "")
        )
    else:
        beta = DEFAULT_BETA
        source = f"the default {DEFAULT_BETA}: --beta auto's estimate was not trusted ({estimate.reason})"
    return {"beta": float(beta), "beta_source": source, "beta_estimate": estimate.to_dict()}
