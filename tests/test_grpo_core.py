"""GRPO core (harness/grpo.py): hand-worked examples and property tests.

Every expected number below is computed by hand in the comments, never by calling the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.harness.grpo import (
    OnPolicyError,
    PerPromptStatTracker,
    aggregate_loss,
    clip_advantages,
    clipped_surrogate,
    compute_group_advantages,
    group_advantages,
    grpo_loss,
    kl_gaussian,
    kl_k3,
    ratio_self_test,
    reward_diagnostics,
)

NAN = float("nan")
LN2 = math.log(2.0)
T64 = torch.float64
FAST = settings(max_examples=40, deadline=None)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=T64)


# ------------------------------------------------------------------------------------ group advantages


def test_group_std_by_hand_unbiased_and_biased():
    # group a = [1, 3]: mean 2, unbiased std sqrt(2), biased std 1; group b = [2, 6]: mean 4, std x2.
    r = t([1.0, 3.0, 2.0, 6.0])
    adv = group_advantages(r, ["a", "a", "b", "b"])
    a = 1 / (math.sqrt(2) + 1e-4)  # 0.707057...
    b = 2 / (2 * math.sqrt(2) + 1e-4)  # 0.707089...
    torch.testing.assert_close(adv, t([-a, a, -b, b]), rtol=0, atol=1e-12)
    adv_b = group_advantages(r, ["a", "a", "b", "b"], unbiased=False)
    expected_b = t([-1 / 1.0001, 1 / 1.0001, -2 / 2.0001, 2 / 2.0001])
    torch.testing.assert_close(adv_b, expected_b, rtol=0, atol=1e-12)


def test_global_std_and_none_by_hand():
    # groups [1, 3] and [5, 5]. Group means 2 and 5.
    # Global unbiased std of [1, 3, 5, 5]: mean 3.5, squared devs 6.25 + .25 + 2.25 + 2.25 = 11,
    # /3 → sqrt = 1.914854
    r = t([1.0, 3.0, 5.0, 5.0])
    g = torch.tensor([7, 7, 9, 9])
    s = math.sqrt(11 / 3) + 1e-4
    adv = group_advantages(r, g, "global_std")
    torch.testing.assert_close(adv, t([-1 / s, 1 / s, 0, 0]), rtol=0, atol=1e-12)
    # "none": just r − group mean.
    torch.testing.assert_close(group_advantages(r, g, "none"), t([-1.0, 1.0, 0.0, 0.0]), rtol=0, atol=0)


def test_nan_rewards_are_excluded_not_zero():
    # group [1, NaN, 3]: stats over {1, 3} → mean 2, unbiased std sqrt 2; the NaN sample gets exactly 0.
    # If NaN were read as reward 0 the mean would be 4/3 and A_0 = (1 − 4/3)/1.527 = −0.218, not −0.707.
    r = t([1.0, NAN, 3.0, NAN, NAN])
    res = compute_group_advantages(r, ["p", "p", "p", "q", "q"])
    a = 1 / (math.sqrt(2) + 1e-4)
    torch.testing.assert_close(res.advantages, t([-a, 0.0, a, 0.0, 0.0]), rtol=0, atol=1e-12)
    assert res.valid.tolist() == [True, False, True, False, False]
    assert res.group_count.tolist() == [2, 0]
    assert res.groups == ["p", "q"]
    assert res.zero_std_mask.tolist() == [False, True]  # an all-NaN group carries no signal
    assert math.isnan(float(res.group_mean[1]))
    assert not torch.isnan(res.advantages).any()


def test_zero_std_groups_and_singletons():
    # [0.1, 0.1, 0.1] (all equal) and a group with one valid reward carry no signal; A is exactly 0.
    r = t([0.1, 0.1, 0.1, 4.0, NAN, 1.0, 2.0])
    res = compute_group_advantages(r, [0, 0, 0, 1, 1, 2, 2])
    assert res.zero_std_mask.tolist() == [True, True, False]
    assert res.advantages[:5].tolist() == [0.0] * 5
    assert float(res.zero_std_fraction) == pytest.approx(2 / 3)
    # global mode also zeroes a zero-std group (its deviations are 0 anyway) but uses the batch std elsewhere
    assert group_advantages(r, [0, 0, 0, 1, 1, 2, 2], "global_std")[:5].tolist() == [0.0] * 5


def test_group_ids_tensor_rows_sorted_and_dtype_kept():
    res = compute_group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([5, 5, 2, 2]))
    assert res.groups == [2, 5]
    assert res.group_index.tolist() == [1, 1, 0, 0]
    assert res.advantages.dtype == torch.float32
    with pytest.raises(ConfigError):
        group_advantages(torch.zeros(3), [0, 0])
    with pytest.raises(ConfigError):
        group_advantages(torch.zeros(2), [0, 0], mode="batch")  # type: ignore[arg-type]


@st.composite
def grouped_rewards(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    reward = st.one_of(st.floats(-10, 10, allow_nan=False), st.just(NAN), st.sampled_from([0.0, 1.0]))
    rewards = [draw(reward) for _ in range(sum(sizes))]
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    perm = draw(st.permutations(list(range(len(groups)))))
    return t([rewards[i] for i in perm]), [groups[i] for i in perm]


@FAST
@given(grouped_rewards(), st.sampled_from(["group_std", "none", "global_std"]), st.booleans())
def test_property_advantages_sum_to_zero_per_group(data, mode, unbiased):
    rewards, groups = data
    res = compute_group_advantages(rewards, groups, mode, unbiased=unbiased)
    adv = res.advantages
    assert torch.isfinite(adv).all()
    assert (adv[torch.isnan(rewards)] == 0).all()
    for g in set(groups):
        sel = torch.tensor([x == g for x in groups])
        # the divisor is constant within a group in every mode, so the centred values still sum to 0
        assert abs(float(adv[sel].sum())) < 1e-6 * (1 + float(adv[sel].abs().sum()))
        if res.zero_std_mask[res.groups.index(g)]:
            assert (adv[sel] == 0).all()
    if mode == "group_std":
        # within a group of n ≤ 5, |A| ≤ sqrt(n − 1) = 2 (biased std; (n − 1)/sqrt(n) unbiased)
        assert float(adv.abs().max()) <= 2.0 + 1e-6


@FAST
@given(grouped_rewards(), st.randoms(use_true_random=False))
def test_property_permutation_equivariant(data, rnd):
    rewards, groups = data
    perm = list(range(len(groups)))
    rnd.shuffle(perm)
    a = group_advantages(rewards, groups)
    b = group_advantages(rewards[perm], [groups[i] for i in perm])
    torch.testing.assert_close(b, a[perm], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ clipping


@FAST
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), st.floats(0.01, 10))
def test_property_clip_advantages_bounds(values, max_abs):
    adv = t(values)
    out = clip_advantages(adv, max_abs)
    assert (out.abs() <= max_abs).all()
    inside = adv.abs() <= max_abs
    assert torch.equal(out[inside], adv[inside])


def test_clip_advantages_flowgrpo_value_and_bad_bound():
    assert clip_advantages(t([-7.0, 3.0, 5.5]), 5).tolist() == [-5.0, 3.0, 5.0]
    with pytest.raises(ConfigError):
        clip_advantages(t([1.0]), 0)


# ------------------------------------------------------------------------------------------------ KL


@FAST
@given(st.lists(st.tuples(st.floats(-30, 0), st.floats(-30, 0)), min_size=1, max_size=30))
def test_property_k3_nonnegative_and_zero_at_equality(pairs):
    logp = t([p for p, _ in pairs])
    ref = t([q for _, q in pairs])
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()
    assert (kl_k3(logp.float(), ref.float()) >= 0).all()


def test_k3_hand_values():
    # d = ref − logp = ln 2 → 2 − ln 2 − 1 = 0.306853; d = −ln 2 → 0.5 + ln 2 − 1 = 0.193147
    out = kl_k3(t([-1.0, -1.0]), t([-1.0 + LN2, -1.0 - LN2]))
    torch.testing.assert_close(out, t([1 - LN2, LN2 - 0.5]), rtol=0, atol=1e-12)


def test_gaussian_kl_hand_value_and_zero():
    # sample 0: diff 1 everywhere, σ 0.5 → 1 / (2·0.25) = 2 per element → mean 2
    # sample 1: diff [[2, 0], [0, 0]], σ 1 → [2, 0, 0, 0] → mean 0.5
    mean = torch.zeros(2, 1, 2, 2)
    ref = torch.zeros(2, 1, 2, 2)
    mean[0] += 1.0
    mean[1, 0, 0, 0] = 2.0
    std = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(kl_gaussian(mean, ref, std), torch.tensor([2.0, 0.5]))
    # a scalar σ, as a float: sample 1 with σ 0.5 → [8, 0, 0, 0] → 2
    torch.testing.assert_close(kl_gaussian(mean, ref, 0.5), torch.tensor([2.0, 2.0]))
    assert kl_gaussian(mean, mean.clone(), std).tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------- surrogate


@FAST
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=10), st.floats(0.0, 0.5))
def test_property_ratio_one_surrogate_is_minus_advantage(adv, eps):
    a = t(adv)
    logp = torch.full((len(adv), 4), -2.5, dtype=T64)
    loss, clip = clipped_surrogate(logp, logp.clone(), a, eps)
    torch.testing.assert_close(loss, -a[:, None].expand(-1, 4), rtol=0, atol=0)
    assert not clip.any()


def _hand_batch():
    """2 groups × 2 samples × 3 tokens, from ratios ρ and KL offsets d = ref − logp_new chosen by hand."""
    rho = t(
        [
            [1.0, 1.5, 0.5],  # A = +1
            [0.5, 1.1, 2.0],  # A = −1
            [1.25, 1.0, 1.0],  # A = +0.5
            [0.9, 0.7, 1.3],  # A = −0.5
        ]
    )
    d = t([[LN2, 0, 0], [0, -LN2, LN2], [0, 0, 0], [0, 0, LN2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    logp_old = torch.full((4, 3), -1.0, dtype=T64)
    logp_new = logp_old + rho.log()
    return logp_new, logp_old, logp_new + d, t([1.0, -1.0, 0.5, -0.5]), mask


def test_clipped_surrogate_by_hand():
    # ε = 0.2, loss = −min(ρA, clip(ρ, 0.8, 1.2)A):
    # s0 A=+1:  ρ=1 → −1;  ρ=1.5 → min(1.5, 1.2) → −1.2 (clipped);  ρ=.5 → min(.5, .8) → −0.5 (not clipped)
    # s1 A=−1:  ρ=.5 → min(−.5, −.8) → 0.8 (clipped);  ρ=1.1 → 1.1;  ρ=2 → min(−2, −1.2) → 2.0 (not clipped)
    # s2 A=.5:  ρ=1.25 → min(.625, .6) → −0.6 (clipped);  ρ=1 → −0.5;  −0.5
    # s3 A=−.5: ρ=.9 → 0.45;  ρ=.7 → min(−.35, −.4) → 0.4 (clipped);
    #           ρ=1.3 → min(−.65, −.6) → 0.65 (not clipped)
    logp_new, logp_old, _, adv, _ = _hand_batch()
    loss, clip = clipped_surrogate(logp_new, logp_old, adv, 0.2)
    expected = t([[-1.0, -1.2, -0.5], [0.8, 1.1, 2.0], [-0.6, -0.5, -0.5], [0.45, 0.4, 0.65]])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    assert clip.tolist() == [
        [False, True, False],
        [True, False, False],
        [True, False, False],
        [False, True, False],
    ]
    # the clipped elements are exactly those with zero gradient
    lp = logp_new.clone().requires_grad_(True)
    clipped_surrogate(lp, logp_old, adv, 0.2)[0].sum().backward()
    assert torch.equal(lp.grad == 0, clip)
    # clip-higher: ε_high = 0.6 lets s0's ρ=1.5 through (−1.5) and clips s3's ρ=1.3 nowhere (A<0)
    loss_h, clip_h = clipped_surrogate(logp_new, logp_old, adv, 0.2, clip_eps_high=0.6)
    assert float(loss_h[0, 1]) == pytest.approx(-1.5)
    assert not bool(clip_h[0, 1])


def test_aggregations_by_hand():
    # per-token [[1, 2, 3], [4, 9, 9]], mask [[1, 1, 1], [1, 0, 0]] → masked values 1, 2, 3 | 4
    x = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(aggregate_loss(x, m, "token_mean")) == pytest.approx(10 / 4)  # 2.5
    assert float(aggregate_loss(x, m, "sequence_mean")) == pytest.approx((6 / 3 + 4 / 1) / 2)  # 3.0
    assert float(aggregate_loss(x, m, "sequence_sum_norm")) == pytest.approx(10 / (2 * 3))  # 1.6667
    assert float(aggregate_loss(x, m, "sequence_sum_norm", max_len=5)) == pytest.approx(10 / (2 * 5))  # 1.0
    # float 0/1 mask behaves like the bool mask; no mask = all tokens (sum 28 over 6)
    assert float(aggregate_loss(x, m.double(), "token_mean")) == pytest.approx(2.5)
    assert float(aggregate_loss(x, None, "token_mean")) == pytest.approx(28 / 6)
    # one value per sample (Flow-GRPO): every mode is the batch mean
    for mode in ("token_mean", "sequence_mean", "sequence_sum_norm"):
        assert float(aggregate_loss(t([1.0, 2.0, 6.0]), None, mode)) == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        aggregate_loss(x, m, "dapo")  # type: ignore[arg-type]


def test_grpo_loss_by_hand():
    # Per-token loss = surrogate (see test_clipped_surrogate_by_hand) + β·k3, β = 0.04.
    # k3 non-zero at s0t0 (d=ln2: 0.306853), s1t1 (d=−ln2: 0.193147), s3t2 (d=ln2: 0.306853); s1t2 is masked.
    # β·k3 = 0.0122741, 0.0077259, 0.0122741.
    # masked row sums: s0 −1 −1.2 −0.5 + .0122741 = −2.6877259 (3 tokens)
    #                  s1 0.8 + 1.1 + .0077259 = 1.9077259 (2 tokens)
    #                  s2 −0.6 (1 token)
    #                  s3 .45 + .4 + .65 + .0122741 = 1.5122741 (3 tokens)
    # total = 0.1 + 0.0322741 = 0.1322741 over 9 tokens
    logp_new, logp_old, ref, adv, mask = _hand_batch()
    kl_b = 0.04 * np.array([1 - LN2, LN2 - 0.5, 1 - LN2])
    rows = [-2.7 + kl_b[0], 1.9 + kl_b[1], -0.6, 1.5 + kl_b[2]]
    expected = {
        "token_mean": sum(rows) / 9,  # 0.0146971
        "sequence_mean": (rows[0] / 3 + rows[1] / 2 + rows[2] / 1 + rows[3] / 3) / 4,  # −0.0094886
        "sequence_sum_norm": sum(rows) / (4 * 3),  # 0.0110228
    }
    assert expected["token_mean"] == pytest.approx(0.0146971, abs=1e-7)
    assert expected["sequence_mean"] == pytest.approx(-0.0094886, abs=1e-7)
    for mode, value in expected.items():
        loss, stats = grpo_loss(logp_new, logp_old, ref, adv, mask, clip_eps=0.2, beta=0.04, aggregation=mode)
        assert float(loss) == pytest.approx(value, abs=1e-12), mode
    loss, stats = grpo_loss(logp_new, logp_old, ref, adv, mask, 0.2, 0.04, "token_mean")
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in stats.values())
    assert float(stats["policy_loss"]) == pytest.approx(0.1 / 9)  # surrogate only
    assert float(stats["clip_fraction"]) == pytest.approx(4 / 9)  # s0t1 s1t0 s2t0 s3t1
    assert float(stats["kl_mean"]) == pytest.approx((2 * (1 - LN2) + LN2 - 0.5) / 9)  # 0.0896503
    # ratios over masked tokens: 1 1.5 .5 | .5 1.1 | 1.25 | .9 .7 1.3 → sum 8.75; the masked ρ=2 is excluded
    assert float(stats["ratio_mean"]) == pytest.approx(8.75 / 9)
    assert float(stats["ratio_min"]) == pytest.approx(0.5)
    assert float(stats["ratio_max"]) == pytest.approx(1.5)


def test_grpo_loss_without_reference_and_gradients():
    logp_new, logp_old, _, adv, mask = _hand_batch()
    lp = logp_new.clone().requires_grad_(True)
    loss, stats = grpo_loss(lp, logp_old, None, adv, mask, 0.2, 0.0)
    assert float(loss.detach()) == pytest.approx(0.1 / 9)
    assert float(stats["kl_mean"]) == 0.0
    loss.backward()
    assert (lp.grad[~mask] == 0).all()  # padding gets no gradient
    with pytest.raises(ConfigError, match="ref_logp"):
        grpo_loss(logp_new, logp_old, None, adv, mask, 0.2, beta=0.04)


# -------------------------------------------------------------------------------------- stat tracker


def test_stat_tracker_two_steps_by_hand():
    tr = PerPromptStatTracker()  # biased std, eps 1e-4, as Flow-GRPO
    # step 1: a = [1, 3]: mean 2, std 1 → ∓1/1.0001;  b = [2, 2]: std 0 → 0
    a1 = tr.update(["a", "a", "b", "b"], [1.0, 3.0, 2.0, 2.0])
    torch.testing.assert_close(a1, torch.tensor([-1 / 1.0001, 1 / 1.0001, 0.0, 0.0]))
    state = json.loads(json.dumps(tr.state_dict()))  # JSON-safe, for atomic_write_json
    # step 2 (no clear): a buffer [1, 3, 5, 7]: mean 4, biased std sqrt((9+1+1+9)/4) = sqrt 5
    #                    b buffer [2, 2, 2, 4]: mean 2.5, std sqrt((3·0.25 + 2.25)/4) = sqrt 0.75
    a2 = tr.update(["a", "b", "a", "b"], [5.0, 2.0, 7.0, 4.0])
    sa, sb = math.sqrt(5) + 1e-4, math.sqrt(0.75) + 1e-4
    torch.testing.assert_close(a2, torch.tensor([1 / sa, -0.5 / sb, 3 / sa, 1.5 / sb]))
    assert tr.stats() == (4.0, 2)
    # exact resume: a fresh tracker loaded from step 1's state gives bit-identical step 2
    tr2 = PerPromptStatTracker(global_std=True)
    tr2.load_state_dict(state)
    assert torch.equal(tr2.update(["a", "b", "a", "b"], [5.0, 2.0, 7.0, 4.0]), a2)
    assert tr2.state_dict() == tr.state_dict()


def test_stat_tracker_clear_global_std_history_and_nan():
    # Flow-GRPO's usage: clear after every update, so step 2 sees only its own rewards.
    tr = PerPromptStatTracker()
    tr.update(["a", "a"], [1.0, 3.0])
    tr.clear()
    torch.testing.assert_close(tr.update(["a", "a"], [5.0, 7.0]), torch.tensor([-1 / 1.0001, 1 / 1.0001]))
    assert tr.stats() == (2.0, 1)
    # global std: per-prompt mean, std of this call's rewards [1, 3, 10, 12] (biased: mean 6.5,
    # squared devs 30.25 + 12.25 + 12.25 + 30.25 = 85 → sqrt(21.25))
    g = PerPromptStatTracker(global_std=True)
    s = math.sqrt(21.25) + 1e-4
    got = g.update(["a", "a", "b", "b"], [1.0, 3.0, 10.0, 12.0])
    torch.testing.assert_close(got, torch.tensor([-1.0, 1.0, -1.0, 1.0]) / s)
    # max_history 2 keeps [5, 7] of [1, 3, 5, 7]: mean 6, std 1
    h = PerPromptStatTracker(max_history=2)
    h.update(["a", "a"], [1.0, 3.0])
    torch.testing.assert_close(h.update(["a", "a"], [5.0, 7.0]), torch.tensor([-1 / 1.0001, 1 / 1.0001]))
    # NaN: not buffered, advantage 0
    n = PerPromptStatTracker()
    got = n.update(["a", "a", "a"], [1.0, NAN, 3.0])
    torch.testing.assert_close(got, torch.tensor([-1 / 1.0001, 0, 1 / 1.0001]))
    assert n.state_dict()["buffers"] == {"a": [1.0, 3.0]}


def _flowgrpo_reference(prompts: list[str], rewards: list[float]) -> np.ndarray:
    """Flow-GRPO's per-call semantics written independently with numpy (np.std is biased)."""
    p, r = np.array(prompts), np.array(rewards, dtype=np.float64)
    out = np.zeros_like(r)
    for q in np.unique(p):
        sel = p == q
        out[sel] = (r[sel] - r[sel].mean()) / (r[sel].std() + 1e-4)
    return out


@FAST
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(-5, 5)), min_size=1, max_size=12))
def test_property_stat_tracker_matches_flowgrpo_per_call(items):
    prompts, rewards = [p for p, _ in items], [r for _, r in items]
    tr = PerPromptStatTracker()
    got = tr.update(prompts, rewards)
    expected = _flowgrpo_reference(prompts, rewards).astype(np.float32)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


# --------------------------------------------------------------------------------- self-test, logging


def test_ratio_self_test_passes_and_raises_with_causes():
    logp = torch.full((2, 4), -1.5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ratio_self_test(logp, logp.clone(), mask)  # exactly on-policy
    drifted = logp.clone()
    drifted[0, 3] = 5.0  # padding: masked out, ignored
    ratio_self_test(drifted, logp, mask)
    drifted[1, 1] += 2e-3
    with pytest.raises(OnPolicyError) as info:
        ratio_self_test(drifted, logp, mask)
    msg = str(info.value)
    assert isinstance(info.value, EvalsuiteError)
    for needle in ("0.002", "(1, 1)", "dtype", "padding", "dropout", "temperature", "batch composition"):
        assert needle in msg, needle
    nan = logp.clone()
    nan[0, 0] = NAN
    with pytest.raises(OnPolicyError, match="inf"):
        ratio_self_test(nan, logp, mask)
    ratio_self_test(drifted, logp, mask, tol=1e-2)  # a looser tolerance accepts it
    with pytest.raises(OnPolicyError, match=r"^step 3, rank 1: on-policy ratio self-test failed"):
        ratio_self_test(drifted, logp, mask, context="step 3, rank 1")  # a trainer says where it failed


def test_reward_diagnostics_by_hand():
    # valid rewards 1, 3, 2, 2, 5: mean 13/5 = 2.6; squared devs 2.56 + .16 + .36 + .36 + 5.76 = 9.2,
    # unbiased variance 9.2/4 = 2.3
    # groups: [1, 3] signal; [2, 2] equal; [NaN, 5] one valid → 2 of 3 groups without signal
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, NAN, 5.0])
    comps = {
        "format": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
        "image": torch.tensor([0.5, NAN, 1.5, 1.0, 1.0, 1.0]),
    }
    d = reward_diagnostics(r, [0, 0, 1, 1, 2, 2], comps)
    assert d["reward/mean"] == pytest.approx(2.6)
    assert d["reward/std"] == pytest.approx(math.sqrt(2.3))
    assert d["reward/nan_fraction"] == pytest.approx(1 / 6)
    assert d["groups/count"] == 3.0
    assert d["groups/zero_std_fraction"] == pytest.approx(2 / 3)
    assert d["reward/format/mean"] == pytest.approx(4 / 6)
    assert d["reward/image/mean"] == pytest.approx(5 / 5)  # NaN excluded: (0.5 + 1.5 + 1 + 1 + 1) / 5
    assert all(isinstance(v, float) for v in d.values())
