import math

import pytest
import torch
from diffusers import DDPMScheduler

from pu_diffusion.losses import (
    diffusion_target,
    per_sample_diffusion_loss,
    pu_risk,
    sample_timesteps,
    sensitive_loss,
    timestep_banded_pu_risk,
)


def test_per_sample_loss_sums_over_all_elements():
    prediction = torch.zeros(2, 3, 2, 2)
    target = torch.ones(2, 3, 2, 2)
    target[1] *= 2
    assert per_sample_diffusion_loss(prediction, target).tolist() == [12.0, 48.0]
    assert per_sample_diffusion_loss(prediction, target, reduction="mean").tolist() == [1.0, 4.0]


def test_per_sample_loss_is_float32_for_half_inputs():
    prediction = torch.zeros(1, 4, dtype=torch.bfloat16)
    assert per_sample_diffusion_loss(prediction, torch.ones(1, 4, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_target(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    sample, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    timesteps = torch.tensor([0, 500, 999])
    target = diffusion_target(scheduler, sample, noise, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = {
        "epsilon": noise,
        "sample": sample,
        "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * sample,
    }[prediction_type]
    torch.testing.assert_close(target, expected)


def test_sensitive_loss_matches_formula_and_is_stable():
    values = torch.tensor([0.5, 1.0, 3.0])
    expected = torch.tensor([-math.log(1 - math.exp(-v)) for v in values.tolist()])
    torch.testing.assert_close(sensitive_loss(values), expected)
    extremes = torch.tensor([1e-8, 1e-4, 1.0, 50.0, 1e3, 1e6], requires_grad=True)
    value = sensitive_loss(extremes)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(extremes.grad).all()
    assert (extremes.grad <= 0).all()  # larger ℓ always lowers ℓ⁺
    assert value[0] > 15 and value[-1] >= 0


def test_sensitive_loss_and_gradient_do_not_vanish_for_large_losses():
    """ℓ⁺ ≈ exp(−ℓ) stays positive, with gradient ≈ −exp(−ℓ), far past ℓ ≈ 17 where −log(−expm1(−ℓ)) hits 0 in fp32."""
    losses = torch.tensor([20.0, 50.0, 80.0], requires_grad=True)
    value = sensitive_loss(losses)
    value.sum().backward()
    expected = torch.exp(-losses.detach().double())
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(losses.grad.double(), -expected, rtol=1e-5, atol=0)


def test_sensitive_loss_stays_fp32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sensitive_loss(torch.tensor([1e-3, 2.0], dtype=torch.bfloat16))
    assert out.dtype == torch.float32


def hand_terms():
    loss = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)
    is_sensitive = torch.tensor([False, False, True, True])
    l_plus = (-math.log(1 - math.exp(-2.0)) - math.log(1 - math.exp(-4.0))) / 2
    return loss, is_sensitive, l_plus


def test_risks_match_hand_values():
    loss, is_sensitive, l_plus = hand_terms()
    assert pu_risk(loss, is_sensitive, "unsupervised").objective.item() == pytest.approx(2.0)
    assert pu_risk(loss, is_sensitive, "supervised").objective.item() == pytest.approx(2.0 + l_plus)
    absolute = pu_risk(loss, is_sensitive, "pu", beta=0.1, estimator="abs")
    assert absolute.objective.item() == pytest.approx(0.1 * l_plus + abs(2.0 - 0.1 * 3.0))
    assert absolute.negative_risk.item() == pytest.approx(1.7)
    nn = pu_risk(loss, is_sensitive, "pu", beta=0.1, estimator="nn")
    assert nn.objective.item() == pytest.approx(0.1 * l_plus + 1.7) and not nn.nn_branch
    logs = absolute.log_dict()
    assert logs["L_U-"] == pytest.approx(2.0) and logs["L_S-"] == pytest.approx(3.0)
    assert logs["L_S+"] == pytest.approx(l_plus)


def test_abs_pu_negative_branch_flips_sign():
    loss = torch.tensor([0.1, 10.0])
    terms = pu_risk(loss, torch.tensor([False, True]), "pu", beta=0.5, estimator="abs")
    assert terms.objective.item() == pytest.approx(0.5 * sensitive_loss(torch.tensor(10.0)).item() + 4.9)


def test_nnpu_gradient_directions_in_both_branches():
    # Branch 1: L_U⁻ − βL_S⁻ ≥ 0 → descend the nnPU risk: U loss pushed down, S loss pushed up (via −β L_S⁻).
    loss = torch.tensor([5.0, 2.0], requires_grad=True)
    terms = pu_risk(loss, torch.tensor([False, True]), "pu", beta=0.5, estimator="nn")
    terms.objective.backward()
    assert not terms.nn_branch
    assert loss.grad[0] == pytest.approx(1.0)
    expected_s = 0.5 * (-1 / (math.exp(2.0) - 1)) - 0.5
    assert loss.grad[1].item() == pytest.approx(expected_s, rel=1e-5)
    # Branch 2: L_U⁻ − βL_S⁻ < 0 → descend −(L_U⁻ − βL_S⁻): U loss pushed up, S loss pushed down.
    loss = torch.tensor([0.1, 10.0], requires_grad=True)
    terms = pu_risk(loss, torch.tensor([False, True]), "pu", beta=0.5, estimator="nn")
    terms.objective.backward()
    assert terms.nn_branch
    assert terms.objective.item() == pytest.approx(4.9)
    assert terms.risk.item() == pytest.approx(0.5 * sensitive_loss(torch.tensor(10.0)).item())
    assert loss.grad.tolist() == pytest.approx([-1.0, 0.5])
    # γ discounts that push (Kiryo et al.): γ = 0 makes the step a no-op, γ = 0.5 halves it; the risk is unchanged
    for gamma in (0.0, 0.5):
        loss = torch.tensor([0.1, 10.0], requires_grad=True)
        terms = pu_risk(loss, torch.tensor([False, True]), "pu", beta=0.5, estimator="nn", nn_gamma=gamma)
        terms.objective.backward()
        assert terms.nn_branch and terms.objective.item() == pytest.approx(4.9 * gamma)
        assert loss.grad.tolist() == pytest.approx([-gamma, 0.5 * gamma])
        assert terms.risk.item() == pytest.approx(0.5 * sensitive_loss(torch.tensor(10.0)).item())


def test_risk_refuses_bad_input():
    loss = torch.ones(3)
    with pytest.raises(ValueError, match="beta"):
        pu_risk(loss, torch.tensor([False, True, True]), "pu", beta=1.0)
    with pytest.raises(ValueError, match="sensitive"):
        pu_risk(loss, torch.zeros(3, dtype=torch.bool), "pu")
    with pytest.raises(ValueError, match="unlabeled"):
        pu_risk(loss, torch.ones(3, dtype=torch.bool), "unsupervised")
    with pytest.raises(ValueError, match="method"):
        pu_risk(loss, torch.tensor([False, True, True]), "magic")


def test_supervised_authors_form_is_one_mean_over_the_batch_with_a_capped_sensitive_loss():
    loss = torch.tensor([1.0, 3.0, 0.5, 40.0])  # two U rows, two S rows
    is_sensitive = torch.tensor([False, False, True, True])
    capped = [-math.log(1 - math.exp(-0.5) + 1e-6), -math.log(1 - math.exp(-40.0) + 1e-6)]
    authors = pu_risk(loss, is_sensitive, "supervised", supervised_form="authors")
    assert authors.objective.item() == pytest.approx((1.0 + 3.0 + capped[0] + capped[1]) / 4, rel=1e-5)
    paper = pu_risk(loss, is_sensitive, "supervised", supervised_form="paper")
    expected = 2.0 + (sensitive_loss(torch.tensor(0.5)) + sensitive_loss(torch.tensor(40.0))).item() / 2
    assert paper.objective.item() == pytest.approx(expected, rel=1e-5)
    assert -math.log(1e-6) == pytest.approx(
        pu_risk(
            torch.tensor([0.0, 0.0]), torch.tensor([False, True]), "supervised", supervised_form="authors"
        ).objective.item()
        * 2,
        rel=1e-3,
    )  # ℓ⁺ capped at −log 1e-6 ≈ 13.8 where ℓ → 0
    with pytest.raises(ValueError, match="supervised form"):
        pu_risk(loss, is_sensitive, "supervised", supervised_form="other")


def test_weighted_supervised_form_is_the_pn_risk_that_pu_estimates():
    """Eq. 15: β L_S⁺ + (1−β) L_N⁻, the risk whose unbiased estimate from U and S is the PU risk."""
    loss = torch.tensor([1.0, 3.0, 0.5, 40.0])
    is_sensitive = torch.tensor([False, False, True, True])
    weighted = pu_risk(loss, is_sensitive, "supervised", beta=0.2, supervised_form="weighted")
    l_s_pos = (sensitive_loss(torch.tensor(0.5)) + sensitive_loss(torch.tensor(40.0))).item() / 2
    assert weighted.objective.item() == pytest.approx(0.2 * l_s_pos + 0.8 * 2.0, rel=1e-6)
    assert weighted.risk.item() == weighted.objective.item() and not weighted.nn_branch
    x = loss.clone().requires_grad_()
    pu_risk(x, is_sensitive, "supervised", beta=0.2, supervised_form="weighted").objective.backward()
    assert x.grad[:2].tolist() == pytest.approx([0.4, 0.4])  # (1−β)/|U| per U row
    assert x.grad[2].item() < 0  # S's loss is pushed up, through ℓ⁺ only


def test_temperature_divides_every_loss_and_mean_reduction_is_the_temperature_of_the_element_count():
    loss, is_sensitive, _ = hand_terms()
    scaled = pu_risk(loss, is_sensitive, "pu", beta=0.1, temperature=4.0)
    direct = pu_risk(loss / 4.0, is_sensitive, "pu", beta=0.1)
    assert scaled.objective.item() == pytest.approx(direct.objective.item())
    assert scaled.L_S_pos.item() == pytest.approx(sensitive_loss(loss[is_sensitive] / 4.0).mean().item())
    prediction, target = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    summed = per_sample_diffusion_loss(prediction, target, "sum")
    mean = per_sample_diffusion_loss(prediction, target, "mean")
    mask = torch.tensor([False, True, False])
    assert pu_risk(summed, mask, temperature=16.0).objective.item() == pytest.approx(
        pu_risk(mean, mask).objective.item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="temperature"):
        pu_risk(loss, is_sensitive, temperature=0.0)


def test_erasediff_risk_matches_hand_values():
    from pu_diffusion.erasediff import erasediff_risk

    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0], requires_grad=True)
    is_sensitive = torch.tensor([False, False, True, False, True])
    # L_r = mean(1, 2, 4) = 7/3, L_f = mean(3, 6) = 4.5; objective = L_r + λ L_f (sg[L̄_f] is a constant: logged)
    terms = erasediff_risk(loss, is_sensitive, lam=0.5)
    assert terms.objective.item() == pytest.approx(7 / 3 + 0.5 * 4.5)
    assert terms.L_U_neg.item() == pytest.approx(7 / 3) and terms.L_S_neg.item() == pytest.approx(4.5)
    terms.objective.backward()
    assert loss.grad.tolist() == pytest.approx([1 / 3, 1 / 3, 0.25, 1 / 3, 0.25])  # 1/|U| and λ/|S|
    with pytest.raises(ValueError, match="U and S samples"):
        erasediff_risk(loss, torch.ones(5, dtype=torch.bool), lam=0.1)


@pytest.mark.parametrize("direction,expected", [((0.0, 1.0), 0.1), ((2.0, 0.0), 0.0), ((-1.0, 0.0), 1.1)])
def test_erasediff_adaptive_lambda_is_eta_minus_the_gradient_cosine(direction, expected):
    from pu_diffusion.erasediff import adaptive_lambda

    weight = torch.tensor([0.3, -0.7], requires_grad=True)
    retain = (weight * torch.tensor([1.0, 0.0])).sum()  # ∇L_r = (1, 0)
    forget = (weight * torch.tensor(direction)).sum()  # ∇L_f = direction
    assert adaptive_lambda(retain, forget, [weight], eta=0.1) == pytest.approx(expected)
    assert weight.grad is None  # the gradients were taken, not accumulated


def test_erasediff_inner_passes_lower_the_forget_loss_and_restore_the_weights_exactly():
    from pu_diffusion.erasediff import reference_forget_loss, uniform_forget_target

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    inputs = torch.randn(6, 4)
    target = uniform_forget_target(torch.empty(6, 4))
    assert target.min() >= 0 and target.max() < 1
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def forget_loss():
        return (model(inputs) - target).pow(2).sum(1).mean()

    start = forget_loss().item()
    reference = reference_forget_loss(forget_loss, list(model.parameters()), inner_steps=3, learning_rate=0.05)
    assert reference < start  # three SGD passes on L_f lowered it
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit for bit
    assert all(p.grad is None for p in model.parameters())
    assert reference_forget_loss(forget_loss, list(model.parameters()), 0, 0.05) == pytest.approx(start)


def test_erasediff_targets_replace_only_the_s_rows():
    from pu_diffusion.erasediff import erasediff_targets

    target, forget = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    mixed = erasediff_targets(target, torch.tensor([False, True, False, True]), forget)
    assert mixed[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_sensitive_cap_stops_pushing_s_samples_that_are_already_k_times_worse_than_u():
    loss = torch.tensor([2.0, 4.0, 5.0, 30.0], requires_grad=True)  # U = 2, 4 (L_U⁻ = 3); S = 5, 30
    is_sensitive = torch.tensor([False, False, True, True])
    terms = pu_risk(loss, is_sensitive, "pu", beta=0.1, estimator="abs", sensitive_cap=2.0)
    # subtracted: mean(min(5, 6), min(30, 6)) = 5.5; negative risk = 3 − 0.1·5.5; L_S⁻ logged uncapped (17.5)
    assert terms.negative_risk.item() == pytest.approx(3 - 0.55)
    assert terms.L_S_neg.item() == pytest.approx(17.5)
    L_S_pos = sensitive_loss(torch.tensor([5.0, 30.0])).mean().item()  # noqa: N806
    assert terms.objective.item() == pytest.approx(0.1 * L_S_pos + 3 - 0.55)
    terms.objective.backward()
    assert loss.grad[3].item() == pytest.approx(0.1 * 0.5 * (-1 / (math.exp(30.0) - 1)), abs=1e-12)  # no ascent left
    assert loss.grad[2].item() < -0.05 + 1e-3  # 5 < 6: still pushed up by β/|S| (plus the tiny ℓ⁺ gradient)
    uncapped = pu_risk(loss.detach(), is_sensitive, "pu", beta=0.1, estimator="abs")
    assert uncapped.negative_risk.item() == pytest.approx(3 - 1.75)
    with pytest.raises(ValueError, match="sensitive_cap"):
        pu_risk(loss, is_sensitive, "pu", sensitive_cap=0.0)


def test_timestep_matched_reference_is_us_mean_loss_in_each_rows_band_or_the_nearest_filled_one():
    from pu_diffusion.losses import timestep_matched_reference

    # U rows: ℓ 40, 60 at t 10, 50 (band 0 of 10 over [0, 1000)); ℓ 1 at t 950 (band 9). S rows: t 20, 940, 500.
    loss = torch.tensor([40.0, 60.0, 1.0, 7.0, 3.0, 9.0])
    is_sensitive = torch.tensor([False, False, False, True, True, True])
    timesteps = torch.tensor([10, 50, 950, 20, 940, 500])
    reference = timestep_matched_reference(loss, is_sensitive, timesteps, 1000)
    assert reference.tolist() == [50.0, 50.0, 1.0, 50.0, 1.0, 1.0]  # t 500 (band 5): nearest U band is 9 (4 vs 5)
    reference = timestep_matched_reference(loss, is_sensitive, torch.tensor([10, 50, 950, 20, 940, 400]), 1000)
    assert reference[5].item() == 50.0  # band 4: band 0 is 4 away, band 9 five
    # float timesteps (flow matching: σ·T) and t = T itself fall in the last band
    assert timestep_matched_reference(loss, is_sensitive, torch.tensor([0.0, 99.9, 1000.0, 5, 999.5, 3]), 1000)[
        3:
    ].tolist() == [50.0, 1.0, 50.0]
    with pytest.raises(ValueError, match="no unlabeled"):
        timestep_matched_reference(loss, torch.ones(6, dtype=torch.bool), timesteps, 1000)


def test_timestep_cap_holds_each_s_row_at_k_times_u_at_its_own_noise_level():
    from pu_diffusion.losses import PURisk

    # U: ℓ 40 at t 10 (low noise), ℓ 1 at t 950 (high noise); S: ℓ 5 at t 960, ℓ 70 at t 30. L_U⁻ = 20.5.
    loss = torch.tensor([40.0, 1.0, 5.0, 70.0], requires_grad=True)
    is_sensitive = torch.tensor([False, False, True, True])
    timesteps = torch.tensor([10, 950, 960, 30])
    batch = pu_risk(loss, is_sensitive, "pu", beta=0.1, sensitive_cap=2.0)
    (grad_batch,) = torch.autograd.grad(batch.objective, loss)
    # batch reference (cap 41): the high-noise S row (5, 5× its U) is still pushed, the low-noise one (70) is not
    assert grad_batch[2].item() < -0.04 and abs(grad_batch[3].item()) < 1e-12
    risk = PURisk(
        method="pu", beta=0.1, sensitive_cap=2.0, sensitive_cap_reference="timestep", num_train_timesteps=1000
    )
    matched = risk(loss, is_sensitive, timesteps)
    (grad_matched,) = torch.autograd.grad(matched.objective, loss)
    # timestep reference: caps 2·1 = 2 and 2·40 = 80, so the high-noise row stops and the low-noise one is pushed
    assert abs(grad_matched[2].item()) < 1e-2 and grad_matched[3].item() < -0.04
    assert matched.negative_risk.item() == pytest.approx(20.5 - 0.1 * (2.0 + 70.0) / 2)
    assert matched.L_S_neg.item() == pytest.approx(37.5)  # logged uncapped
    # the same through nnPU's branch and t₀'s banded risk: the per-row reference follows the band's rows
    banded = PURisk(
        method="pu",
        beta=0.1,
        sensitive_cap=2.0,
        sensitive_cap_reference="timestep",
        num_train_timesteps=1000,
        min_timestep=500,
    )(loss.detach(), is_sensitive, timesteps)
    assert banded.negative_risk.item() == pytest.approx(1.0 - 0.1 * 2.0)
    with pytest.raises(ValueError, match="cap reference"):
        PURisk(method="pu", beta=0.1, sensitive_cap=2.0, sensitive_cap_reference="mean")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        PURisk(method="pu", beta=0.1, sensitive_cap=2.0, sensitive_cap_reference="timestep")
    with pytest.raises(ValueError, match="timestep"):
        risk(loss, is_sensitive)


def test_sensitive_rows_draw_timesteps_from_the_band_and_plain_draws_keep_the_random_stream():
    is_sensitive = torch.tensor([False, True] * 500)
    torch.manual_seed(0)
    timesteps = sample_timesteps(1000, is_sensitive, 300)
    assert timesteps[is_sensitive].min() >= 300 and timesteps[~is_sensitive].min() < 300
    assert timesteps.max() < 1000
    torch.manual_seed(0)
    plain = sample_timesteps(1000, is_sensitive, 0)
    torch.manual_seed(0)
    assert torch.equal(plain, torch.randint(0, 1000, (1000,)))  # t₀ = 0: what training drew before the flag
    with pytest.raises(ValueError, match="sensitive_min_timestep"):
        sample_timesteps(1000, is_sensitive, 1000)


def test_timestep_banded_risk_is_plain_diffusion_below_t0_and_the_pu_risk_above():
    # U rows: ℓ 8 (t 100), 2 (t 600), 4 (t 700); S rows: ℓ 30 (t 500), 10 (t 900); t₀ = 300.
    loss = torch.tensor([8.0, 2.0, 4.0, 30.0, 10.0], requires_grad=True)
    is_sensitive = torch.tensor([False, False, False, True, True])
    timesteps = torch.tensor([100, 600, 700, 500, 900])
    terms = timestep_banded_pu_risk(loss, is_sensitive, timesteps, 300, method="pu", beta=0.1, estimator="abs")
    band = pu_risk(loss[1:].detach(), is_sensitive[1:], "pu", beta=0.1, estimator="abs")
    # (1/3) · 8 + (2/3) · (β L_S⁺ + |3 − 0.1 · 20|)
    assert band.negative_risk.item() == pytest.approx(1.0)
    assert terms.objective.item() == pytest.approx(8 / 3 + 2 / 3 * band.objective.item())
    assert terms.L_U_neg.item() == pytest.approx(14 / 3) and terms.L_S_neg.item() == pytest.approx(20.0)
    assert terms.log_dict()["L_U-_band"] == pytest.approx(3.0)
    terms.objective.backward()
    assert loss.grad[0].item() == pytest.approx(1 / 3)  # low-noise U row: plain diffusion, weight n_low / n_U
    assert loss.grad[1].item() == pytest.approx(2 / 3 * 1 / 2)  # band U rows: the PU risk's 1/|U_band|, weighted
    assert loss.grad[3].item() < 0 and loss.grad[4].item() < 0  # S rows in the band are pushed up
    # An S row below t₀ is left out; t₀ = 0 is the paper's risk.
    below = timestep_banded_pu_risk(
        loss.detach(), is_sensitive, torch.tensor([100, 600, 700, 200, 900]), 300, method="pu", beta=0.1
    )
    assert below.L_S_neg.item() == pytest.approx(10.0)
    everywhere = timestep_banded_pu_risk(loss.detach(), is_sensitive, timesteps, 0, method="pu", beta=0.1)
    assert everywhere.objective.item() == pytest.approx(pu_risk(loss.detach(), is_sensitive, "pu").objective.item())
    # No U row in the band: the batch trains U only (nothing left to correct S against).
    only_low = timestep_banded_pu_risk(
        loss.detach(), is_sensitive, torch.tensor([100, 200, 250, 500, 900]), 300, method="pu", beta=0.1
    )
    assert only_low.objective.item() == pytest.approx(14 / 3)


def test_pu_risk_object_is_the_risk_fixed_once_from_the_flags():
    from pu_diffusion.losses import PURisk, pu_risk, timestep_banded_pu_risk

    loss = torch.tensor([3.0, 1.0, 2.0, 0.5, 4.0])
    is_sensitive = torch.tensor([False, False, True, False, True])
    timesteps = torch.tensor([10, 600, 700, 900, 20])
    options = {"method": "pu", "beta": 0.2, "estimator": "nn", "temperature": 2.0, "sensitive_cap": 3.0}
    risk = PURisk(**options)
    assert risk(loss, is_sensitive, timesteps).log_dict() == pu_risk(loss, is_sensitive, **options).log_dict()
    banded = PURisk(**options, min_timestep=500)
    expected = timestep_banded_pu_risk(loss, is_sensitive, timesteps, 500, **options)
    assert banded(loss, is_sensitive, timesteps).log_dict() == expected.log_dict()
    for unresolved in ("auto", 1.0, -0.1):
        with pytest.raises(ValueError, match="resolved β"):
            PURisk(method="pu", beta=unresolved)


def test_sensitive_term_by_band_measures_how_live_l_plus_is_per_timestep_band():
    from pu_diffusion.losses import PURisk, sensitive_term_by_band

    loss = torch.tensor([0.1, 30.0, 0.5, 2.0, 0.2])
    is_sensitive = torch.tensor([True, True, True, True, False])  # the U row (ℓ 0.2) never counts
    timesteps = torch.tensor([900, 100, 800, 760, 950])
    stats = sensitive_term_by_band(loss, is_sensitive, timesteps, num_train_timesteps=1000)
    assert [key for key in stats if key.startswith("S n t")] == [
        "S n t0-249",
        "S n t250-499",
        "S n t500-749",
        "S n t750-999",
    ]
    assert stats["S n t750-999"] == 3 and stats["S n<ln2 t750-999"] == 2 and stats["S n t0-249"] == 1
    pulls = [1 / math.expm1(value) for value in (0.1, 0.5, 2.0)]  # |dℓ⁺/dℓ| = 1/(e^ℓ − 1)
    assert stats["S sum dl+ t750-999"] == pytest.approx(sum(pulls), rel=1e-5)
    assert stats["S max dl+ t750-999"] == pytest.approx(pulls[0], rel=1e-5)  # ≈ 9.5: ℓ⁺ outweighs the push
    assert stats["S max dl+ t0-249"] < 1e-12  # ℓ = 30: inert
    assert stats["S n t250-499"] == 0 and stats["S max dl+ t250-499"] == 0
    plus = sum(-math.log(1 - math.exp(-value)) for value in (0.1, 0.5, 2.0))
    assert stats["S sum l+ t750-999"] == pytest.approx(plus, rel=1e-5)
    # the temperature divides ℓ first, as in the risk
    cooled = sensitive_term_by_band(loss, is_sensitive, timesteps, 1000, temperature=10.0)
    assert cooled["S n<ln2 t0-249"] == 0 and cooled["S n<ln2 t750-999"] == 3
    # logging it changes nothing in the risk
    plain = PURisk(method="pu", beta=0.1)(loss, is_sensitive, timesteps)
    logged = PURisk(method="pu", beta=0.1, num_train_timesteps=1000)(loss, is_sensitive, timesteps)
    assert logged.objective.item() == plain.objective.item() and "S n t750-999" in logged.log_dict()
    assert (
        "S n t750-999"
        not in PURisk(method="unsupervised", beta=0.1, num_train_timesteps=1000)(
            loss, is_sensitive, timesteps
        ).log_dict()
    )


def test_sensitive_band_summary_adds_steps_up():
    from pu_diffusion.tracking import sensitive_band_summary

    assert sensitive_band_summary([{"risk": 1.0}]) is None
    records = [
        {"S n t0-499": 2.0, "S n<ln2 t0-499": 0.0, "S sum l+ t0-499": 0.2, "S sum dl+ t0-499": 0.4, "S max dl+ t0-499": 0.3,
         "S n t500-999": 1.0, "S n<ln2 t500-999": 1.0, "S sum l+ t500-999": 1.0, "S sum dl+ t500-999": 6.0, "S max dl+ t500-999": 6.0},
        {"S n t0-499": 2.0, "S n<ln2 t0-499": 0.0, "S sum l+ t0-499": 0.0, "S sum dl+ t0-499": 0.0, "S max dl+ t0-499": 0.0,
         "S n t500-999": 0.0, "S n<ln2 t500-999": 0.0, "S sum l+ t500-999": 0.0, "S sum dl+ t500-999": 0.0, "S max dl+ t500-999": 0.0},
    ]  # fmt: skip
    low, high = sensitive_band_summary(records)
    assert low["timesteps"] == "0-499" and low["samples"] == 4 and low["mean_dl+/dl"] == pytest.approx(0.1)
    assert low["share_loss_below_ln2"] == 0 and low["max_dl+/dl"] == pytest.approx(0.3)
    assert high["samples"] == 1 and high["share_loss_below_ln2"] == 1 and high["mean_dl+/dl"] == pytest.approx(6.0)
    assert high["mean_L_S+"] == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_noising_is_the_schedulers_own(shift):
    """x_t, the model's timestep and the target match diffusers' FlowMatchEulerDiscreteScheduler (scale_noise, its
    training grid) for timestep indices t ∈ [0, T) with index 0 the least noise; the DDPM path is add_noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pu_diffusion.losses import flow_matching_sigmas, is_flow_matching, noisy_input_and_target

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    assert is_flow_matching(scheduler) and not is_flow_matching(DDPMScheduler())
    every = torch.arange(1000)
    torch.testing.assert_close(flow_matching_sigmas(scheduler, every), scheduler.sigmas.flip(0)[:1000].float())
    sample, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    timesteps = torch.tensor([0, 500, 999])
    noisy, model_timesteps, target = noisy_input_and_target(scheduler, sample, noise, timesteps)
    grid = scheduler.timesteps.flip(0)  # the scheduler's timestep values, least noise first
    torch.testing.assert_close(model_timesteps, grid[timesteps].float())
    for row, index in enumerate(timesteps.tolist()):
        expected = scheduler.scale_noise(sample[row : row + 1], grid[index : index + 1], noise[row : row + 1])
        torch.testing.assert_close(noisy[row : row + 1], expected)
    assert torch.equal(target, noise - sample)
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    noisy, model_timesteps, target = noisy_input_and_target(ddpm, sample, noise, timesteps)
    assert torch.equal(noisy, ddpm.add_noise(sample, noise, timesteps)) and model_timesteps is timesteps
    assert torch.equal(target, noise)
