"""β, the share of U that is sensitive: as given with --beta, or estimated before training with --beta auto.

--beta auto scores U and S with cross-fitted U-vs-S CNNs (:func:`pu_diffusion.class_prior.estimate_beta_from_images`)
on the main process and sends the result to the others. An estimate that cannot be made, or cannot be trusted
(low separability or a wide interval), is reported with the reason and replaced by DEFAULT_BETA. Every function
returns {"beta", "beta_source", "beta_estimate"}: the β to train with and where it came from (the model card
and pu_run.json record both). Functions take values, not flags.
"""

from __future__ import annotations

import numpy as np
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from .class_prior import cross_fitted_scores, estimate_beta_from_images, estimate_class_prior

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
    repeats: int = 1,
    patience: int = 4,
) -> dict:
    """--beta auto: the ``recorded`` β of a resumed run, else the estimate from ``load_images()`` (→ U and S tensors,
    N×C×H×W; scores averaged over ``repeats`` cross-fittings of CNNs that stop after ``patience`` epochs without
    progress) × ``margin``, computed on the main process and broadcast to the others."""
    if recorded:
        logger.info(f"--beta auto: resuming with the recorded β = {recorded['beta']:.4f}")
        return recorded
    return on_main_process(
        accelerator,
        lambda: estimate_on_main_process(
            accelerator, load_images, estimator, margin, ddp_timeout, point, repeats, patience
        ),
        "--beta auto",
    )


def on_main_process(accelerator, compute, what: str) -> dict:
    """``compute()`` on the main process, its result broadcast to the others (which wait for it)."""
    resolved = [None]
    if accelerator.is_main_process:
        try:
            resolved = [compute()]
        except Exception as error:  # the other processes wait in the broadcast below: tell them, then fail
            resolved = [{"error": f"{type(error).__name__}: {error}"}]
            if accelerator.num_processes > 1:
                broadcast_object_list(resolved)
            raise
    if accelerator.num_processes > 1:
        broadcast_object_list(resolved)
    if "error" in resolved[0]:
        raise RuntimeError(f"{what} failed on the main process: {resolved[0]['error']}")
    return resolved[0]


def estimate_on_main_process(
    accelerator,
    load_images,
    estimator: str,
    margin: float,
    ddp_timeout: int,
    point: str = "estimate",
    repeats: int = 1,
    patience: int = 4,
) -> dict:
    """Score U and S, estimate β, decide whether to trust it; an estimate that cannot be made falls back too."""
    unlabeled, sensitive = load_images()
    logger.info(
        f"--beta auto: estimating β from {len(unlabeled)} U and {len(sensitive)} S images; the other processes wait up to "
        f"--ddp_timeout {ddp_timeout} s (for very large data, run `python estimate_pu_beta.py` first "
        "and pass --beta)"
    )
    return auto_beta(
        lambda: estimate_beta_from_images(
            unlabeled, sensitive, estimator, device=accelerator.device, repeats=repeats, patience=patience
        ),
        estimator,
        margin,
        point,
    )


def auto_beta(make_estimate, estimator: str, margin: float, point: str = "estimate") -> dict:
    """--beta auto's β from ``make_estimate()`` (→ BetaEstimate), logged: the estimate when trusted (see
    :func:`beta_from_estimate`), else DEFAULT_BETA with a warning that says why; an estimate that cannot be made
    (``ValueError``: constant scores, too few images) falls back the same way."""
    try:
        estimate = make_estimate()
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


# --beta_auto_point: which point of a trusted estimate --beta auto trains with, and how the run's log names it.
AUTO_POINTS = {
    "estimate": "",
    "lower": ", the interval's lower end (--beta_auto_point lower)",
    "midpoint": ", halfway between it and its interval's lower end (--beta_auto_point midpoint)",
}


# train_pu_diffusion.py's --beta_auto_point with --beta auto (since 2026-12-07; "estimate" before, and still with a
# given β, where the flag does nothing). On the robustness suite's 24 draws (docs/beta_and_audit.md, session 20) BBE
# read high (+0.012 on average; 3 trusted estimates more than 30 % off) and the midpoint halved that: within 0.02 of
# the truth on 83 % of those draws and of 24 fresh ones it was not chosen on (BBE: 75 %, 71 %). Text-to-image keeps
# "estimate": not measured there.
DEFAULT_AUTO_POINT = "midpoint"


def auto_point(estimate, point: str) -> float:
    """The value --beta_auto_point picks from a BetaEstimate: the point estimate, its 95 % interval's lower end, or
    the midpoint of the two (BBE reads high where normal images score like S: docs/beta_and_audit.md)."""
    return point_of(estimate.estimate, estimate.interval, point)


def point_of(value: float, interval, point: str) -> float:
    """:func:`auto_point` of an estimate ``value`` with 95 % interval ``interval`` (e.g. as a run recorded them)."""
    if point not in AUTO_POINTS:
        raise ValueError(f"point must be one of {list(AUTO_POINTS)}; got {point!r}.")
    lower = min(value, interval[0])  # a bootstrap end can sit above the point estimate
    return {"estimate": value, "lower": lower, "midpoint": (value + lower) / 2}[point]


def beta_from_estimate(estimate, margin: float = 1.0, point: str = "estimate") -> dict:
    """The β to train with, given a BetaEstimate: trusted → the point ``point`` picks (:func:`auto_point`,
    --beta_auto_point) × ``margin`` (--beta_margin); else DEFAULT_BETA."""
    value = auto_point(estimate, point)  # refuses an unknown point, trusted or not
    if estimate.trusted:
        beta = min(value * margin, 0.99)
        source = (
            f"estimated with --beta auto: {estimate.describe()}"
            + AUTO_POINTS[point]
            + (f", × --beta_margin {margin}" if margin != 1.0 else "")
        )
    else:
        beta = DEFAULT_BETA
        source = f"the default {DEFAULT_BETA}: --beta auto's estimate was not trusted ({estimate.reason})"
    return {"beta": float(beta), "beta_source": source, "beta_estimate": estimate.to_dict()}


def few_sensitive_warning(n_sensitive: int, n_unlabeled: int, beta: float) -> str | None:
    """A warning when S holds fewer images than the β·|U| sensitive ones β puts in U, else None.

    On the robustness suite (docs/robustness.md) PU alone stopped above the clean floor in every such cell: in
    expectation its risk cancels U's sensitive images only against S's, so with fewer S images the model still fits
    the rest; dropping U's most S-like images first (--pu_filter_unlabeled) reached the floor in most of them.
    """
    hidden = beta * n_unlabeled
    if n_sensitive >= hidden:
        return None
    return (
        f"S holds {n_sensitive} images, fewer than the ≈{hidden:.0f} sensitive images β = {beta:.3f} puts among U's "
        f"{n_unlabeled}: on the robustness suite PU alone left part of the sensitive content wherever S was this "
        "small next to them (docs/robustness.md). Leave the U filter on (drop --pu_filter_unlabeled 0: it drops U's "
        "most S-like images first), or label more S images."
    )


# ---- --pu_filter_unlabeled: drop U's most S-like images before training ----

LOW_FILTER_RECALL = 0.75  # below this estimated share of U's sensitive images in the cut, the run warns
# --pu_filter_untrusted_beta: what the cut uses when --beta auto's estimate is not trusted. "default": DEFAULT_BETA,
# as PU without the filter (runs made before the flag); "estimate": the point estimate, at least DEFAULT_BETA, with
# the β left for PU at most DEFAULT_BETA. For the cut an underestimate is the costly side (the sensitive images it
# leaves in U can outnumber S); an overestimate drops more normal images. For PU's β an overestimate is the costly
# side, so an untrusted estimate never sets a β above the default. On 2,6_S100_b0.200 (docs/robustness.md) BBE read
# 0.260 for a true 0.2, untrusted (interval 0.168–0.284): cut with 0.1 the run caught 49 % of the hidden images and
# stopped 0.050 above the clean floor; cut with 0.260 it caught 96 % and was at the floor.
UNTRUSTED_CUT_RULES = ("default", "estimate")
# The rule "estimate" needs scores that rank S above U's normal part: below this held-out AUC the CNNs tell S from
# U barely better than chance, their point estimate says nothing (a 16-image U read 0.875 at AUC 0.47, and a cut
# with it dropped 14 of the 16 images: random ones), and the cut uses DEFAULT_BETA. Every untrusted estimate the
# robustness suite and the β probes cut with had an AUC of 0.84 or more (docs/robustness.md, session 28).
UNTRUSTED_CUT_MIN_AUC = 0.75
# ... and it cuts at most this share of U: an estimate nobody trusts never drops most of a user's data. 0.3 is 1.5×
# the largest β the suite measured (0.2); its untrusted estimates read 0.18–0.26 (the β probes' largest: 0.37).
UNTRUSTED_CUT_MAX_BETA = 0.3


def filter_by_scores(unlabeled_scores, sensitive_scores, beta: float, factor: float) -> dict:
    """Which U images to drop, and the sensitive share left in the rest.

    Drops the k = round(factor · β · |U|) U images with the highest cross-fitted S-vs-U scores (at most |U| − 2).
    S stands for U's sensitive images (the PU assumption, SCAR), so the share r of S's own held-out scores at or above
    the cut estimates the share of U's β·|U| sensitive images the cut removes; the β left for the kept images is
    β · |U| · (1 − r) / (|U| − k). (Re-estimating β from the kept images' scores would not do: the cut removed
    exactly the images those scores call sensitive, so it reads ≈ 0 whatever is left.)
    """
    unlabeled = np.asarray(unlabeled_scores, dtype=np.float64)
    sensitive = np.asarray(sensitive_scores, dtype=np.float64)
    n = len(unlabeled)
    k = max(0, min(int(round(factor * beta * n)), n - 2))
    if k == 0:
        return {"dropped_positions": [], "beta_left": float(beta), "sensitive_recall": 0.0, "threshold": None}
    order = np.argsort(-unlabeled, kind="stable")
    threshold = float(unlabeled[order[k - 1]])
    recall = float(np.mean(sensitive >= threshold))
    return {
        "dropped_positions": sorted(int(position) for position in order[:k]),
        "beta_left": float(min(beta * n * (1 - recall) / (n - k), 0.99)),
        "sensitive_recall": recall,
        "threshold": threshold,
    }


def untrusted_cut_beta(estimate: float) -> float:
    """The β --pu_filter_unlabeled cuts with when --beta auto's estimate is not trusted (rule "estimate"): the
    point estimate (at most UNTRUSTED_CUT_MAX_BETA) where it is above DEFAULT_BETA, else DEFAULT_BETA."""
    return max(float(min(estimate, UNTRUSTED_CUT_MAX_BETA)), DEFAULT_BETA)


def filter_cut_beta(first: dict, rule: str) -> dict:
    """The β --pu_filter_unlabeled cuts with, from --beta auto's resolved β ``first`` (see :func:`auto_beta`).

    ``rule`` "estimate" (--pu_filter_untrusted_beta): an estimate that was not trusted gives its point estimate when
    that is above DEFAULT_BETA and its scores separate S from U's normal part (AUC at least UNTRUSTED_CUT_MIN_AUC), marked ``untrusted_cut`` so that :func:`filter_cut` keeps the β left for PU at most
    DEFAULT_BETA; otherwise, and with "default", ``first`` as it is (DEFAULT_BETA when not trusted).
    """
    if rule not in UNTRUSTED_CUT_RULES:
        raise ValueError(f"rule must be one of {UNTRUSTED_CUT_RULES}; got {rule!r}.")
    estimate = first["beta_estimate"]
    if rule == "default" or estimate is None or estimate["trusted"]:
        return first
    beta = untrusted_cut_beta(estimate["estimate"])
    if beta <= DEFAULT_BETA:  # the default already cuts at least as much
        return first
    if estimate["normal_auc"] < UNTRUSTED_CUT_MIN_AUC:
        logger.warning(
            f"--pu_filter_unlabeled: --beta auto's estimate {estimate['estimate']:.4f} is not trusted, and its CNNs "
            f"tell S from U's normal part with AUC {estimate['normal_auc']:.3f} < {UNTRUSTED_CUT_MIN_AUC}, barely "
            f"better than chance: the cut uses the default β = {DEFAULT_BETA}, not the estimate."
        )
        return first
    logger.warning(
        f"--pu_filter_unlabeled: --beta auto's estimate {estimate['estimate']:.4f} is not trusted, but for the cut an "
        f"underestimate is the costly side: the cut uses β = {beta:.4f} (the point estimate"
        f"{f', capped at {UNTRUSTED_CUT_MAX_BETA}' if beta < estimate['estimate'] else ''}) rather than "
        f"{DEFAULT_BETA}, and PU trains with at most β = {DEFAULT_BETA} on what is left "
        "(--pu_filter_untrusted_beta default: cut with the default instead)."
    )
    source = (
        f"--beta auto's point estimate, not trusted ({estimate['reason']}), for the cut only "
        f"(--pu_filter_untrusted_beta estimate; PU's β at most {DEFAULT_BETA})"
    )
    return {**first, "beta": beta, "beta_source": source, "untrusted_cut": True}


# --pu_filter_min_beta: the least β the cut (and the β left after it) uses, where the filter is on and β (given, or
# --beta auto's trusted estimate) could be below it. On the robustness suite (docs/robustness.md, session 20) β = 0.1
# given where the true β was 0.05 stopped at or below the clean floor (−0.008, −0.012) while the true β (+0.018,
# +0.000) and --beta auto's estimate (+0.018, −0.006) left more: a cut of 0.1·|U| drops nearly all of U's hidden
# images, and the β left after it stays small whatever it assumes. A cut too small is the costly side.
DEFAULT_FILTER_MIN_BETA = DEFAULT_BETA


def floor_cut_beta(first: dict, floor: float) -> dict:
    """``first`` (the resolved β: given, or --beta auto's, see :func:`filter_cut_beta`) with its β raised to
    ``floor`` (--pu_filter_min_beta) where it is below it, so that the cut drops at least floor · F · |U| images and
    the β left is read from the floor; ``first`` as it is otherwise (``floor`` 0: off)."""
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1); got {floor!r}.")
    if first["beta"] >= floor:
        return first
    source = f"{first['beta_source']}, raised to the floor {floor:g} for the cut (--pu_filter_min_beta)"
    return {**first, "beta": float(floor), "beta_source": source, "beta_below_floor": float(first["beta"])}


def filter_cut(unlabeled_scores, sensitive_scores, first: dict, factor: float) -> dict:
    """:func:`filter_by_scores` with ``first["beta"]``; after a cut an untrusted estimate set (:func:`filter_cut_beta`)
    the β left is at most DEFAULT_BETA: an untrusted estimate sets how much is dropped, never a larger β for PU."""
    cut = filter_by_scores(unlabeled_scores, sensitive_scores, first["beta"], factor)
    if first.get("untrusted_cut"):
        cut["beta_left"] = min(cut["beta_left"], DEFAULT_BETA)
    return cut


def resolve_filtered_beta(
    accelerator,
    load_images,
    given: float | None,
    factor: float,
    estimator: str,
    margin: float,
    point: str,
    ddp_timeout: int,
    recorded: dict | None = None,
    repeats: int = 1,
    patience: int = 4,
    untrusted: str = "default",
    min_beta: float = 0.0,
) -> dict:
    """--pu_filter_unlabeled: {"beta", "beta_source", "beta_estimate", "unlabeled_filter"}.

    One set of cross-fitted U-vs-S scores (the CNNs --beta auto trains) gives β first, as given (``given``) or
    estimated as --beta auto does (an untrusted one as :func:`filter_cut_beta` says, with rule ``untrusted``), at
    least ``min_beta`` (:func:`floor_cut_beta`, --pu_filter_min_beta); then :func:`filter_by_scores` drops the
    factor · β · |U| most S-like U images and returns the β left for the rest, which PU trains with. A resumed run
    reads what it recorded.
    """
    if recorded and "unlabeled_filter" in recorded:
        logger.info(
            f"--pu_filter_unlabeled: resuming with the recorded {len(recorded['unlabeled_filter']['dropped_positions'])} "
            f"dropped U images and β = {recorded['beta']:.4f}"
        )
        return recorded

    def compute() -> dict:
        unlabeled, sensitive = load_images()
        logger.info(
            f"--pu_filter_unlabeled {factor}: scoring {len(unlabeled)} U and {len(sensitive)} S images with "
            f"cross-fitted U-vs-S CNNs ({repeats} cross-fitting(s)); the other processes wait up to --ddp_timeout "
            f"{ddp_timeout} s"
        )
        unlabeled_scores, sensitive_scores = cross_fitted_scores(
            unlabeled, sensitive, device=accelerator.device, repeats=repeats, patience=patience
        )
        if given is not None:
            first = given_beta(given)
        else:
            first = auto_beta(
                lambda: estimate_class_prior(unlabeled_scores, sensitive_scores, estimator), estimator, margin, point
            )
            first = filter_cut_beta(first, untrusted)
        first = floor_cut_beta(first, min_beta)
        cut = filter_cut(unlabeled_scores, sensitive_scores, first, factor)
        dropped = len(cut["dropped_positions"])
        source = (
            f"{first['beta_source']} (β = {first['beta']:.4f}); then --pu_filter_unlabeled {factor} dropped the "
            f"{dropped} U images a cross-fitted U-vs-S CNN scored most S-like, which held an estimated "
            f"{100 * cut['sensitive_recall']:.0f} % of U's sensitive images (the share of S's own held-out scores "
            f"above the cut), leaving β = {cut['beta_left']:.4f} in the {len(unlabeled) - dropped} kept"
        )
        logger.info(f"--pu_filter_unlabeled: training with {source}")
        if dropped and cut["sensitive_recall"] < LOW_FILTER_RECALL:
            logger.warning(
                f"--pu_filter_unlabeled: the cut holds only an estimated {100 * cut['sensitive_recall']:.0f} % of U's "
                "sensitive images (the CNNs cannot tell S from U well enough); PU has to suppress the rest, and "
                "with few S images per sensitive image in U it may leave part of them. Label more S images, of "
                "every kind of sensitive content U holds, or raise --pu_filter_unlabeled; check the trained model "
                "with evaluate_pu_diffusion.py."
            )
        return {
            "beta": cut["beta_left"],
            "beta_source": source,
            "beta_estimate": first["beta_estimate"],
            "unlabeled_filter": {
                "factor": factor,
                "beta_before": first["beta"],
                **({"beta_below_floor": first["beta_below_floor"]} if "beta_below_floor" in first else {}),
                "n_unlabeled": len(unlabeled),
                **cut,
            },
        }

    return on_main_process(accelerator, compute, "--pu_filter_unlabeled")


def drop_filtered(unlabeled_rows, unlabeled_filter: dict):
    """U's rows without the ones --pu_filter_unlabeled dropped (positions in the order U was scored)."""
    if len(unlabeled_rows) != unlabeled_filter["n_unlabeled"]:
        raise ValueError(
            f"--pu_filter_unlabeled: the run dropped U images by position among {unlabeled_filter['n_unlabeled']} "
            f"U images, but U now has {len(unlabeled_rows)}: resume with the data the run started with."
        )
    keep = np.ones(len(unlabeled_rows), dtype=bool)
    keep[unlabeled_filter["dropped_positions"]] = False
    return np.asarray(unlabeled_rows)[keep]
