"""The Flow-GRPO SDE step: reduces to Euler, its log-prob is the Gaussian density, fp32, both variants."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from evalsuite.harness.grpo import kl_gaussian
from evalsuite.harness.sde import euler_step, gaussian_log_prob, predicted_x0, sde_step_with_logprob, step_std


def _inputs(dtype=torch.float32, b=3):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(b, 16, 8, generator=g).to(dtype)
    x = torch.randn(b, 16, 8, generator=g).to(dtype)
    return v, x


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_noise_level_to_zero_is_the_euler_step(sde_type):
    v, x = _inputs()
    euler = euler_step(v, x, 0.6, 0.45)
    exact = sde_step_with_logprob(v, x, 0.6, 0.45, noise_level=0.0, sde_type=sde_type)
    torch.testing.assert_close(exact.prev_sample, euler, rtol=0, atol=1e-6)
    assert torch.isnan(exact.log_prob).all()  # a deterministic step has no density
    near = sde_step_with_logprob(
        v, x, 0.6, 0.45, noise_level=1e-4, sde_type=sde_type, noise=torch.randn_like(x)
    )
    assert (near.prev_sample - euler).abs().max() < 1e-3


def test_sde_mean_and_std_match_the_written_formula():
    v, x = _inputs()
    sigma, sigma_next, a = 0.8, 0.7, 0.7
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    mean = x * (1 + std_t**2 * dt / (2 * sigma)) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    eps = torch.randn_like(x)
    out = sde_step_with_logprob(v, x, sigma, sigma_next, noise_level=a, noise=eps)
    torch.testing.assert_close(out.mean, mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), std_t * math.sqrt(-dt)), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.prev_sample, mean + std_t * math.sqrt(-dt) * eps, rtol=1e-6, atol=1e-6)


def test_sigma_one_uses_the_next_sigma_in_the_denominator():
    v, x = _inputs()
    out = sde_step_with_logprob(v, x, 1.0, 0.9, noise_level=0.7, noise=torch.zeros_like(x))
    std_t = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), std_t * math.sqrt(0.1)), rtol=1e-6, atol=0)
    other = sde_step_with_logprob(v, x, 1.0, 0.9, noise_level=0.7, noise=torch.zeros_like(x), sigma_max=0.95)
    assert not torch.allclose(other.std, out.std)


@pytest.mark.parametrize("sde_type", ["sde", "cps_gaussian"])
def test_log_prob_is_the_gaussian_density_averaged_over_elements(sde_type):
    v, x = _inputs()
    out = sde_step_with_logprob(
        v, x, 0.5, 0.3, noise_level=0.9, sde_type=sde_type, generator=torch.Generator()
    )
    for i in range(3):
        normal = torch.distributions.Normal(out.mean[i].double(), out.std[i].double())
        expected = normal.log_prob(out.prev_sample[i].double()).mean()
        assert abs(float(out.log_prob[i]) - float(expected)) < 1e-5


@pytest.mark.parametrize("sde_type", ["sde", "cps", "cps_gaussian"])
def test_recomputing_a_drawn_step_gives_the_recorded_log_prob(sde_type):
    v, x = _inputs()
    out = sde_step_with_logprob(
        v, x, 0.5, 0.3, noise_level=0.9, sde_type=sde_type, generator=torch.Generator()
    )
    again = sde_step_with_logprob(
        v, x, 0.5, 0.3, noise_level=0.9, sde_type=sde_type, prev_sample=out.prev_sample
    )
    torch.testing.assert_close(again.log_prob, out.log_prob, rtol=0, atol=0)  # ratio exactly 1
    # a different velocity moves the mean and lowers the log-prob of the drawn x'
    moved = sde_step_with_logprob(
        v + 0.5, x, 0.5, 0.3, noise_level=0.9, sde_type=sde_type, prev_sample=out.prev_sample
    )
    assert (moved.log_prob < out.log_prob).all()


def test_cps_std_and_mean():
    v, x = _inputs()
    s, s_next, a = 0.6, 0.4, 0.5
    std = s_next * math.sin(a * math.pi / 2)
    x0, eps_hat = x - s * v, x + (1 - s) * v
    out = sde_step_with_logprob(v, x, s, s_next, noise_level=a, sde_type="cps", noise=torch.zeros_like(x))
    torch.testing.assert_close(out.mean, x0 * (1 - s_next) + eps_hat * math.sqrt(s_next**2 - std**2))
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), std))


def _cps_by_hand(v, x, s, s_next, a):
    """Flow-GRPO's cps step written out in float64: (mean, std)."""
    v, x = v.double(), x.double()
    std = s_next * math.sin(a * math.pi / 2)
    return (x - s * v) * (1 - s_next) + (x + (1 - s) * v) * math.sqrt(s_next**2 - std**2), std


def _flow_grpo_cps_log_prob(x_next, mean):
    """Flow-GRPO: log_prob = -((prev_sample - prev_sample_mean) ** 2), then the mean over non-batch dims."""
    return -((x_next.double() - mean) ** 2).mean(dim=tuple(range(1, mean.dim())))


def test_cps_log_prob_is_flow_grpos_negative_squared_error():
    v, x = _inputs()
    s, s_next, a = 0.7, 0.5, 0.8
    mean, std = _cps_by_hand(v, x, s, s_next, a)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    drawn = sde_step_with_logprob(v, x, s, s_next, noise_level=a, sde_type="cps", noise=eps)
    assert drawn.log_prob.dtype == torch.float32
    torch.testing.assert_close(drawn.log_prob.double(), _flow_grpo_cps_log_prob(mean + std * eps, mean))
    # any given x' (the train-time recompute), not only the one drawn
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    given = sde_step_with_logprob(v, x, s, s_next, noise_level=a, sde_type="cps", prev_sample=other)
    torch.testing.assert_close(given.log_prob.double(), _flow_grpo_cps_log_prob(other, mean))


def test_cps_log_ratio_of_two_policies_is_flow_grpos_not_the_gaussians():
    v_old, x = _inputs()
    v_new = v_old + 2.0 * torch.randn(v_old.shape, generator=torch.Generator().manual_seed(7))
    s, s_next, a = 0.4, 0.2, 0.7
    old = sde_step_with_logprob(
        v_old, x, s, s_next, noise_level=a, sde_type="cps", generator=torch.Generator().manual_seed(8)
    )
    x_next = old.prev_sample

    def log_ratio(sde_type):
        def log_prob(v):
            return sde_step_with_logprob(
                v, x, s, s_next, noise_level=a, sde_type=sde_type, prev_sample=x_next
            ).log_prob.double()

        return log_prob(v_new) - log_prob(v_old)

    mean_old, std = _cps_by_hand(v_old, x, s, s_next, a)
    mean_new, _ = _cps_by_hand(v_new, x, s, s_next, a)
    flow_grpo = _flow_grpo_cps_log_prob(x_next, mean_new) - _flow_grpo_cps_log_prob(x_next, mean_old)
    gaussian = flow_grpo / (2 * std**2)  # log N(x'; μ_new, std²) − log N(x'; μ_old, std²): constants cancel
    torch.testing.assert_close(log_ratio("cps"), flow_grpo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_ratio("cps_gaussian"), gaussian, rtol=1e-5, atol=1e-6)
    assert (flow_grpo - gaussian).abs().min() > 1.0  # nats: the 1/(2·std²) does not cancel in the ratio


def test_cps_kl_is_flow_grpos_mean_difference_over_twice_its_std_squared():
    v, x = _inputs()
    s, s_next, a = 0.6, 0.3, 0.7
    zero = torch.zeros_like(x)
    policy = sde_step_with_logprob(v, x, s, s_next, noise_level=a, sde_type="cps", noise=zero)
    ref = sde_step_with_logprob(v * 0.8, x, s, s_next, noise_level=a, sde_type="cps", noise=zero)
    mean, std_dev_t = _cps_by_hand(v, x, s, s_next, a)
    mean_ref, _ = _cps_by_hand(v * 0.8, x, s, s_next, a)
    # Flow-GRPO: ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(dims) / (2 * std_dev_t ** 2), with the
    # std_dev_t its cps step returns (σ'·sin(a·π/2)), which is the step's kl_std (and its std)
    hand = ((mean - mean_ref) ** 2).mean(dim=(1, 2)) / (2 * std_dev_t**2)
    torch.testing.assert_close(kl_gaussian(policy.mean, ref.mean, policy.kl_std).double(), hand)


def test_sde_kl_divides_by_flow_grpos_std_dev_t_not_the_step_std():
    """Flow-GRPO's KL for "sde" divides by std_dev_t = a·sqrt(σ/(1−σ)), not by the step's std_dev_t·sqrt(−dt):
    the trainer uses that scale so a recipe's β means what it means in Flow-GRPO's configs."""
    v, x = _inputs()
    s, s_next, a = 0.6, 0.45, 0.7
    zero = torch.zeros_like(x)
    policy = sde_step_with_logprob(v, x, s, s_next, noise_level=a, sde_type="sde", noise=zero)
    ref = sde_step_with_logprob(v * 0.8, x, s, s_next, noise_level=a, sde_type="sde", noise=zero)
    std_dev_t = a * (s / (1 - s)) ** 0.5
    hand = ((policy.mean.double() - ref.mean.double()) ** 2).mean(dim=(1, 2)) / (2 * std_dev_t**2)
    torch.testing.assert_close(kl_gaussian(policy.mean, ref.mean, policy.kl_std).double(), hand)
    step_kl = kl_gaussian(policy.mean, ref.mean, policy.std).double()  # the exact KL of the two steps
    torch.testing.assert_close(step_kl, hand / (s - s_next))


@pytest.mark.parametrize("sde_type", ["cps", "cps_gaussian"])
def test_cps_math_is_fp32_for_bf16_inputs(sde_type):
    v, x = _inputs(torch.bfloat16)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    low = sde_step_with_logprob(v, x, 0.9, 0.7, noise_level=0.7, sde_type=sde_type, noise=eps)
    ref = sde_step_with_logprob(v.float(), x.float(), 0.9, 0.7, noise_level=0.7, sde_type=sde_type, noise=eps)
    assert low.prev_sample.dtype == low.mean.dtype == low.log_prob.dtype == torch.float32
    torch.testing.assert_close(low.log_prob, ref.log_prob, rtol=0, atol=0)
    again = sde_step_with_logprob(
        v, x, 0.9, 0.7, noise_level=0.7, sde_type=sde_type, prev_sample=low.prev_sample.bfloat16()
    )
    assert again.log_prob.dtype == torch.float32


def test_math_is_fp32_for_bf16_inputs_and_matches_fp32():
    v, x = _inputs(torch.bfloat16)
    eps = torch.randn(x.shape)
    low = sde_step_with_logprob(v, x, 0.99, 0.98, noise_level=0.7, noise=eps)
    ref = sde_step_with_logprob(v.float(), x.float(), 0.99, 0.98, noise_level=0.7, noise=eps)
    assert low.prev_sample.dtype == torch.float32 and low.log_prob.dtype == torch.float32
    torch.testing.assert_close(low.log_prob, ref.log_prob, rtol=0, atol=0)


def test_per_sample_sigmas_and_generators_are_row_independent():
    v, x = _inputs()
    sig, nxt = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.4, 0.0])
    gens = [torch.Generator().manual_seed(k) for k in (1, 2, 3)]
    batch = sde_step_with_logprob(v, x, sig, nxt, generator=gens)
    for i in range(3):
        alone = sde_step_with_logprob(
            v[i : i + 1],
            x[i : i + 1],
            float(sig[i]),
            float(nxt[i]),
            generator=[torch.Generator().manual_seed(i + 1)],
        )
        torch.testing.assert_close(alone.prev_sample[0], batch.prev_sample[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(alone.log_prob[0], batch.log_prob[i], rtol=0, atol=1e-6)


def test_bad_arguments_are_rejected():
    v, x = _inputs()
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step_with_logprob(v, x, 0.3, 0.5)
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(v, x, 0.5, 0.3, sde_type="ddim")
    with pytest.raises(ValueError, match="noise_level"):
        sde_step_with_logprob(v, x, 0.5, 0.3, noise_level=-1)


def test_closed_form_kl_between_two_steps():
    v, x = _inputs()
    a = sde_step_with_logprob(v, x, 0.5, 0.3, noise=torch.zeros_like(x))
    b = sde_step_with_logprob(v * 0.9, x, 0.5, 0.3, noise=torch.zeros_like(x))
    std = step_std(0.5, 0.3, 0.7, x)
    kl = kl_gaussian(a.mean, b.mean, std)
    hand = ((a.mean - b.mean) ** 2).reshape(3, -1).mean(1) / (2 * float(std.flatten()[0]) ** 2)
    torch.testing.assert_close(kl, hand)
    assert (kl > 0).all() and (kl_gaussian(a.mean, a.mean, std) == 0).all()


def test_predicted_x0_inverts_the_interpolation():
    x0, eps = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    sigma = 0.3
    x = (1 - sigma) * x0 + sigma * eps
    torch.testing.assert_close(predicted_x0(eps - x0, x, sigma), x0, rtol=1e-5, atol=1e-5)
    assert torch.isnan(gaussian_log_prob(x, x, torch.zeros(2, 1, 1))).all()


def test_a_tiny_cps_flow_run_keeps_ratio_one_and_records_flow_grpos_log_prob(tiny_dir, tmp_path):
    from evalsuite.harness import flow_train
    from evalsuite.harness.flow_policy import FlowPolicy
    from tests.test_flow_train import make_config

    torch.set_num_threads(1)
    base = make_config(tmp_path / "cps", tiny_dir, steps=2, log_images_every=1000)
    config = replace(
        base,
        flow=replace(base.flow, sde_type="cps", sample_batch_size=8, train_batch_size=8),
        grpo=replace(base.grpo, beta=0.04, prompts_per_step=1),
    )
    metrics = flow_train.train(config).metrics  # ratio_self_test raises on the first inner step if ρ != 1
    assert [m["flow/ratio_mean"] for m in metrics] == pytest.approx([1.0, 1.0])
    assert all(m["selftest/max_abs_logp_diff"] <= config.grpo.ratio_tol for m in metrics)
    assert metrics[0]["flow/kl"] == 0.0 and metrics[1]["flow/kl"] > 0.0  # the LoRA moved after step 1
    # what the sampler recorded is −(x' − mean)² averaged, the mean being the one the trainer recomputes
    policy = FlowPolicy.from_pretrained(config.flow, seed=0)
    cond, h, w = policy.encode(["a cat", "a dog"])
    traj = policy.sample(cond, [1, 2], height=h, width=w, decode=False)
    rows = torch.arange(2).repeat_interleave(len(traj.sde_steps))
    cols = torch.tensor(traj.sde_steps).repeat(2)
    with torch.no_grad():
        mean = policy.step_log_prob(policy.transformer, traj, rows, cols).mean.double()
    expected = _flow_grpo_cps_log_prob(traj.latents[rows, cols + 1], mean)
    torch.testing.assert_close(traj.log_probs[rows, cols].double(), expected, rtol=1e-5, atol=1e-7)
