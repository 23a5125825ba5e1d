"""Tests for rlkit.algos.advantages: GAE, GRPO, RLOO, REINFORCE++ and the registry."""
import math
import statistics
from collections import defaultdict

import numpy as np
import pytest
import torch

from rlkit.algos import (
    ADV_ESTIMATORS,
    compute_advantage,
    compute_gae,
    compute_grpo_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_rloo_outcome_advantage,
    estimator_needs_critic,
    get_adv_estimator,
    register_adv_estimator,
)
from rlkit.algos.advantages import discounted_reverse_sum


def ragged_mask(bs, length, gen, min_len=1):
    """Right-padded (bs, length) float64 mask with random lengths in [min_len, length]."""
    lengths = torch.randint(min_len, length + 1, (bs,), generator=gen)
    lengths[0] = length  # at least 2 valid tokens overall (whitening needs them)
    return (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)


def whiten_list(vals):
    """Hand whitening of a flat list: (v - mean) / sqrt(unbiased var + 1e-8)."""
    mu, var = statistics.fmean(vals), statistics.variance(vals)
    return [(v - mu) / math.sqrt(var + 1e-8) for v in vals]


# ----------------------------------------------------------------------------- GAE


def test_gae_by_hand():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)  # row 1: last token is padding
    # row 0 (backwards, V after the end = 0):
    #   t=2: delta = 1 + 0.9*0   - 0.7 = 0.3    A = 0.3
    #   t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03   A = 0.03 + 0.72*0.3   = 0.246
    #   t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04   A = 0.04 + 0.72*0.246 = 0.21712
    # row 1 (the padded reward 9 and value 5 are ignored):
    #   t=1: delta = 1 + 0.9*0   - 0.4 = 0.6    A = 0.6
    #   t=0: delta = 0 + 0.9*0.4 - 0.2 = 0.16   A = 0.16 + 0.72*0.6 = 0.592
    raw = [0.21712, 0.246, 0.3, 0.592, 0.6]
    adv, ret = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    # returns = raw A + V
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0], rel=1e-9)
    assert ret[1].tolist() == pytest.approx([0.792, 1.0, 0.0], rel=1e-9)
    # advantages = raw A whitened over the 5 valid tokens, 0 on padding
    w = whiten_list(raw)
    assert adv[0].tolist() == pytest.approx(w[:3], rel=1e-7)
    assert adv[1].tolist() == pytest.approx(w[3:] + [0.0], rel=1e-7)


def test_gae_gamma_lam_one_is_monte_carlo_minus_value():
    # gamma = lam = 1: raw A_t = sum_{k>=t} r_k - V_t, returns = sum_{k>=t} r_k
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[0.5, -1.0, 2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert ret[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])
    assert adv[0].tolist() == pytest.approx(whiten_list([5.5, 6.0, 1.0]) + [0.0], rel=1e-5)


def _ref_gae(rewards, values, mask, gamma, lam):
    """Loop reference: backward recursion over the valid positions of each row only."""
    raw = [[0.0] * len(r) for r in rewards]
    for i in range(len(rewards)):
        next_v, last = 0.0, 0.0
        for t in reversed(range(len(rewards[i]))):
            if not mask[i][t]:
                raw[i][t] = last  # carried through (not visible: zeroed below)
                continue
            delta = rewards[i][t] + gamma * next_v - values[i][t]
            last = delta + gamma * lam * last
            next_v = values[i][t]
            raw[i][t] = last
    valid = [raw[i][t] for i in range(len(raw)) for t in range(len(raw[i])) if mask[i][t]]
    mu, var = statistics.fmean(valid), statistics.variance(valid)
    adv = [[(a - mu) / math.sqrt(var + 1e-8) if k else 0.0 for a, k in zip(ar, mr)] for ar, mr in zip(raw, mask)]
    ret = [[a + v if k else 0.0 for a, v, k in zip(ar, vr, mr)] for ar, vr, mr in zip(raw, values, mask)]
    return adv, ret


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 3), (6, 11), (16, 32)])
@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.9, 0.8), (0.99, 0.95)])
def test_gae_vs_loop_reference(seed, shape, gamma, lam):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(*shape, generator=gen, dtype=torch.float64)
    values = torch.randn(*shape, generator=gen, dtype=torch.float64)
    mask = ragged_mask(*shape, gen)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _ref_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("length", [63, 64, 65, 200])
def test_gae_vs_loop_reference_across_blocks(length):
    """Rows longer than one block of the discounted sum (64 tokens), with holes and ragged ends."""
    gen = torch.Generator().manual_seed(length)
    rewards = torch.randn(4, length, generator=gen, dtype=torch.float64)
    values = torch.randn(4, length, generator=gen, dtype=torch.float64)
    mask = ragged_mask(4, length, gen) * (torch.rand(4, length, generator=gen) > 0.2).to(torch.float64)
    mask[0, :2] = 1.0
    adv, ret = compute_gae(rewards, values, mask, 0.99, 0.95)
    ref_adv, ref_ret = _ref_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.99, 0.95)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("discount", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("length, block", [(1, 4), (7, 4), (8, 4), (9, 4), (130, 64)])
def test_discounted_reverse_sum_vs_loop(discount, length, block):
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, generator=gen, dtype=torch.float64)
    want = torch.zeros_like(x)
    running = torch.zeros(3, dtype=torch.float64)
    for t in reversed(range(length)):  # y_t = x_t + discount * y_{t+1}
        running = x[:, t] + discount * running
        want[:, t] = running
    got = discounted_reverse_sum(x, discount, block=block)
    assert got.shape == x.shape and torch.allclose(got, want, atol=1e-12)


def test_gae_float32_long_rows_stay_accurate():
    """4,096 tokens in float32 (the sum runs in float64): the raw GAE matches a float64 loop to float32 precision."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.zeros(2, 4096, dtype=torch.float64)
    rewards[:, -1] = 1.0
    values = torch.rand(2, 4096, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 4096, dtype=torch.float64)
    _, ret32 = compute_gae(rewards.float(), values.float(), mask.float(), 1.0, 1.0)
    _, ret64 = compute_gae(rewards, values, mask, 1.0, 1.0)
    assert ret32.dtype == torch.float32
    assert torch.allclose(ret32.double(), ret64, atol=1e-5) and torch.allclose(ret64, torch.ones_like(ret64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_non_contiguous_mask_skips_masked_tokens(seed):
    # multi-turn style mask with holes: masked-out tokens are skipped by the recursion
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    values = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 9, generator=gen) > 0.35).to(torch.float64)
    mask[0, :3] = 1.0
    adv, ret = compute_gae(rewards, values, mask, 0.95, 0.9)
    ref_adv, ref_ret = _ref_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.95, 0.9)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-10)


def test_gae_float32_and_no_grad():
    values = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    adv, ret = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3), 1.0, 0.95)
    assert adv.dtype == torch.float32 and not adv.requires_grad and not ret.requires_grad


# ----------------------------------------------------------------------------- GRPO

# Interleaved uids: group a = rows 0, 2, 4 ; b = rows 1, 3 ; c = row 5 (singleton).
UIDS = ["a", "b", "a", "b", "a", "c"]
SCORES = [1.0, 0.5, 0.0, 1.5, 1.0, 2.0]
LENGTHS = [3, 1, 4, 2, 3, 4]


def outcome_batch(scores=SCORES, lengths=LENGTHS, length=4):
    """Outcome reward on the last valid token of each right-padded row."""
    rewards = torch.zeros(len(scores), length, dtype=torch.float64)
    mask = torch.zeros(len(scores), length, dtype=torch.float64)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1.0
        rewards[i, n - 1] = s
    return rewards, mask


def test_grpo_by_hand_interleaved_uids():
    rewards, mask = outcome_batch()
    adv, ret = compute_grpo_outcome_advantage(rewards, mask, UIDS)
    eps = 1e-6
    # a: scores [1, 0, 1], mean 2/3, unbiased std sqrt((1/9 + 4/9 + 1/9) / 2) = sqrt(1/3) = 0.57735
    sa = math.sqrt(1 / 3)
    # b: scores [0.5, 1.5], mean 1, std sqrt((0.25 + 0.25) / 1) = sqrt(0.5)
    sb = math.sqrt(0.5)
    # c: singleton -> mean 0, std 1 -> 2 / (1 + eps)
    expected = [
        (1 - 2 / 3) / (sa + eps),
        (0.5 - 1) / (sb + eps),
        (0 - 2 / 3) / (sa + eps),
        (1.5 - 1) / (sb + eps),
        (1 - 2 / 3) / (sa + eps),
        2 / (1 + eps),
    ]
    for i, n in enumerate(LENGTHS):
        assert adv[i, :n].tolist() == pytest.approx([expected[i]] * n, rel=1e-9)
        assert (adv[i, n:] == 0).all()
    assert torch.equal(adv, ret)


def test_grpo_without_std_norm():
    rewards, mask = outcome_batch()
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, UIDS, norm_adv_by_std_in_grpo=False)
    # s - group mean: a mean 2/3, b mean 1, c singleton mean 0
    expected = [1 / 3, -0.5, -2 / 3, 0.5, 1 / 3, 2.0]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-9)


def test_grpo_equal_scores_give_zero():
    rewards, mask = outcome_batch([1.0, 1.0, 1.0], [2, 3, 1])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, ["u", "u", "u"])
    assert (adv == 0).all()  # (1 - 1) / (0 + eps) = 0


@pytest.mark.parametrize(
    "index",
    [
        UIDS,
        tuple(UIDS),
        np.array(UIDS, dtype=object),
        np.array(UIDS),
        torch.tensor([7, 3, 7, 3, 7, 11]),
        [10, 20, 10, 20, 10, 30],
    ],
)
def test_grpo_index_types(index):
    rewards, mask = outcome_batch()
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    ref, _ = compute_grpo_outcome_advantage(rewards, mask, UIDS)
    assert torch.equal(adv, ref)


def test_grpo_index_length_mismatch():
    rewards, mask = outcome_batch()
    with pytest.raises(ValueError, match="6 sequences"):
        compute_grpo_outcome_advantage(rewards, mask, UIDS[:4])


def _ref_grpo(rewards, mask, index, norm, eps=1e-6):
    scores = [sum(r) for r in rewards]
    groups = defaultdict(list)
    for s, u in zip(scores, index):
        groups[u].append(s)
    out = []
    for s, u, m in zip(scores, index, mask):
        g = groups[u]
        mu, sd = (0.0, 1.0) if len(g) == 1 else (statistics.fmean(g), statistics.stdev(g))
        a = (s - mu) / (sd + eps) if norm else s - mu
        out.append([a if k else 0.0 for k in m])
    return out


def _ref_rloo(rewards, mask, index):
    scores = [sum(r) for r in rewards]
    groups = defaultdict(list)
    for s, u in zip(scores, index):
        groups[u].append(s)
    out = []
    for s, u, m in zip(scores, index, mask):
        g = groups[u]
        a = s - (sum(g) - s) / (len(g) - 1) if len(g) > 1 else s  # s minus mean of the others
        out.append([a if k else 0.0 for k in m])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("bs, length, n_groups", [(8, 5, 2), (12, 7, 5), (24, 16, 24), (5, 3, 1)])
@pytest.mark.parametrize("norm", [True, False])
def test_grpo_vs_loop_reference(seed, bs, length, n_groups, norm):
    gen = torch.Generator().manual_seed(seed)
    mask = ragged_mask(bs, length, gen)
    rewards = torch.randn(bs, length, generator=gen, dtype=torch.float64) * mask
    index = [f"uid{int(u)}" for u in torch.randint(0, n_groups, (bs,), generator=gen)]
    adv, ret = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    ref = torch.tensor(_ref_grpo(rewards.tolist(), mask.tolist(), index, norm), dtype=torch.float64)
    assert torch.allclose(adv, ref, atol=1e-9)
    assert torch.equal(adv, ret)


# ----------------------------------------------------------------------------- RLOO


def test_rloo_by_hand():
    rewards, mask = outcome_batch()
    adv, ret = compute_rloo_outcome_advantage(rewards, mask, UIDS)
    # a = [1, 0, 1]: 1 - (0+1)/2 = 0.5 ; 0 - (1+1)/2 = -1 ; 1 - (1+0)/2 = 0.5
    #   (same as s*n/(n-1) - mean*n/(n-1): 1*1.5 - (2/3)*1.5 = 0.5)
    # b = [0.5, 1.5]: 0.5 - 1.5 = -1 ; 1.5 - 0.5 = 1
    # c = [2] singleton: unchanged 2
    expected = [0.5, -1.0, -1.0, 1.0, 0.5, 2.0]
    for i, n in enumerate(LENGTHS):
        assert adv[i, :n].tolist() == pytest.approx([expected[i]] * n, rel=1e-9, abs=1e-12)
        assert (adv[i, n:] == 0).all()
    assert torch.equal(adv, ret)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("bs, length, n_groups", [(8, 5, 2), (12, 7, 5), (10, 4, 10)])
def test_rloo_vs_loop_reference(seed, bs, length, n_groups):
    gen = torch.Generator().manual_seed(seed)
    mask = ragged_mask(bs, length, gen)
    rewards = torch.randn(bs, length, generator=gen, dtype=torch.float64) * mask
    index = torch.randint(0, n_groups, (bs,), generator=gen)
    adv, _ = compute_rloo_outcome_advantage(rewards, mask, index)
    ref = torch.tensor(_ref_rloo(rewards.tolist(), mask.tolist(), index.tolist()), dtype=torch.float64)
    assert torch.allclose(adv, ref, atol=1e-9)


# ----------------------------------------------------------------------------- REINFORCE++


def test_reinforce_plus_plus_by_hand():
    gamma = 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]], dtype=torch.float64)  # the 5 is padding
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    # row 0: G2 = 1, G1 = 0 + 0.5*1 = 0.5, G0 = 0 + 0.5*0.5 = 0.25
    # row 1: the running return is reset at the padded token, so G1 = 1, G0 = 0.5
    adv, ret = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma)
    assert ret.tolist()[0] == pytest.approx([0.25, 0.5, 1.0])
    assert ret.tolist()[1] == pytest.approx([0.5, 1.0, 0.0])
    w = whiten_list([0.25, 0.5, 1.0, 0.5, 1.0])  # mean 0.65, whitened over the 5 valid tokens
    assert adv[0].tolist() == pytest.approx(w[:3], rel=1e-7)
    assert adv[1].tolist() == pytest.approx(w[3:] + [0.0], rel=1e-7)


def _ref_rpp(rewards, mask, gamma):
    ret = [[0.0] * len(r) for r in rewards]
    for i in range(len(rewards)):
        running = 0.0
        for t in reversed(range(len(rewards[i]))):
            running = rewards[i][t] + gamma * running
            ret[i][t] = running if mask[i][t] else 0.0
            if not mask[i][t]:
                running = 0.0
    valid = [ret[i][t] for i in range(len(ret)) for t in range(len(ret[i])) if mask[i][t]]
    mu, var = statistics.fmean(valid), statistics.variance(valid)
    adv = [[(g - mu) / math.sqrt(var + 1e-8) if k else 0.0 for g, k in zip(gr, mr)] for gr, mr in zip(ret, mask)]
    return adv, ret


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 4), (8, 20)])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_plus_plus_vs_loop_reference(seed, shape, gamma):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(*shape, generator=gen, dtype=torch.float64)  # rewards on padding too
    mask = ragged_mask(*shape, gen)
    adv, ret = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma)
    ref_adv, ref_ret = _ref_rpp(rewards.tolist(), mask.tolist(), gamma)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-8)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_critic_flag():
    assert {"gae", "grpo", "rloo", "reinforce_plus_plus"} <= set(ADV_ESTIMATORS)
    assert estimator_needs_critic("gae") is True
    for name in ("grpo", "rloo", "reinforce_plus_plus"):
        assert estimator_needs_critic(name) is False


def test_registry_unknown_name_lists_valid():
    for fn in (get_adv_estimator, estimator_needs_critic):
        with pytest.raises(ValueError) as err:
            fn("foo")
        msg = str(err.value)
        assert "unknown adv_estimator 'foo'" in msg
        for name in ("gae", "grpo", "rloo", "reinforce_plus_plus"):
            assert name in msg
    with pytest.raises(ValueError, match="valid: gae"):
        compute_advantage("ppo", torch.zeros(1, 2), torch.ones(1, 2))


def test_registry_missing_inputs():
    rewards, mask = outcome_batch()
    with pytest.raises(ValueError, match="values"):
        compute_advantage("gae", rewards, mask)
    for name in ("grpo", "rloo"):
        with pytest.raises(ValueError, match="index"):
            compute_advantage(name, rewards, mask)


def test_registry_dispatch_matches_direct_calls():
    rewards, mask = outcome_batch()
    values = torch.linspace(-1, 1, rewards.numel(), dtype=torch.float64).reshape(rewards.shape)
    a, r = compute_advantage("gae", rewards, mask, values=values, gamma=0.9, lam=0.8)
    a2, r2 = compute_gae(rewards, values, mask, 0.9, 0.8)
    assert torch.equal(a, a2) and torch.equal(r, r2)
    a, _ = compute_advantage("grpo", rewards, mask, index=UIDS, norm_adv_by_std_in_grpo=False)
    assert torch.equal(a, compute_grpo_outcome_advantage(rewards, mask, UIDS, norm_adv_by_std_in_grpo=False)[0])
    a, _ = compute_advantage("rloo", rewards, mask, index=UIDS)
    assert torch.equal(a, compute_rloo_outcome_advantage(rewards, mask, UIDS)[0])
    a, r = compute_advantage("reinforce_plus_plus", rewards, mask, gamma=0.7)
    a2, r2 = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, 0.7)
    assert torch.equal(a, a2) and torch.equal(r, r2)
    # every estimator accepts the full uniform keyword set
    for name, fn in ADV_ESTIMATORS.items():
        adv, ret = fn(rewards, mask, values=values, index=UIDS, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True)
        assert adv.shape == ret.shape == rewards.shape
        assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_register_custom_estimator():
    @register_adv_estimator("test_constant")
    def _constant(token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0,
                  norm_adv_by_std_in_grpo=True):
        adv = response_mask * 2.0
        return adv, adv

    try:
        assert get_adv_estimator("test_constant") is _constant
        assert estimator_needs_critic("test_constant") is False
        adv, _ = compute_advantage("test_constant", torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
        assert adv.tolist() == [[2.0, 0.0]]
        # registering the same function again is fine, a different one is refused
        register_adv_estimator("test_constant")(_constant)
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("test_constant")(lambda *a, **k: None)
        with pytest.raises(ValueError, match="already registered"):
            register_adv_estimator("gae")(_constant)
    finally:
        ADV_ESTIMATORS.pop("test_constant", None)
    assert "test_constant" not in ADV_ESTIMATORS
