"""Tests for rlkit.algos.kl: KL estimators, controllers and the in-reward KL penalty."""
import math

import pytest
import torch

from rlkit.algos import (
    KL_PENALTIES,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    get_kl_controller,
    kl_penalty,
)

LN2 = math.log(2.0)

# token 0: pi = 0.5, pi_ref = 0.25 ; token 1: pi = 0.25, pi_ref = 0.5
LOGP = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
REF = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)


@pytest.mark.parametrize(
    "names, expected",
    [
        # k1 = logp - ref = [ln2, -ln2]
        (("kl", "k1"), [LN2, -LN2]),
        # |logp - ref| = [ln2, ln2]
        (("abs",), [LN2, LN2]),
        # k2 = 0.5 (logp - ref)^2 = [0.5 ln2^2] * 2 = 0.2402
        (("mse", "k2"), [0.5 * LN2**2, 0.5 * LN2**2]),
        # k3 with x = ref - logp: token 0 x = -ln2 -> e^x - x - 1 = 0.5 + ln2 - 1 = 0.1931
        #                         token 1 x = +ln2 -> 2 - ln2 - 1 = 0.3069
        (("low_var_kl", "k3"), [LN2 - 0.5, 1 - LN2]),
    ],
)
def test_kl_estimators_by_hand(names, expected):
    for name in names:
        out = kl_penalty(LOGP, REF, name)
        assert out.shape == (1, 2)
        assert out[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_kl_default_is_k1():
    assert torch.equal(kl_penalty(LOGP, REF), LOGP - REF)


def test_low_var_kl_clamps():
    logp = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[30.0, -30.0, 2.0]], dtype=torch.float64)
    out = kl_penalty(logp, ref, "low_var_kl")
    # x = 30 -> clamp 20 -> e^20 - 21 (huge) -> clamp 10
    # x = -30 -> clamp -20 -> e^-20 + 20 - 1 = 19.000000002 -> clamp 10
    # x = 2 -> e^2 - 3 = 4.389 (inside the range)
    assert out[0].tolist() == pytest.approx([10.0, 10.0, math.exp(2) - 3], rel=1e-12)


def test_kl_estimators_properties_random():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 7, generator=gen, dtype=torch.float64) - 2
    ref = logp + torch.randn(4, 7, generator=gen, dtype=torch.float64) * 0.5
    d = logp - ref
    assert torch.allclose(kl_penalty(logp, ref, "abs"), d.abs())
    assert torch.allclose(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    k3 = kl_penalty(logp, ref, "k3")
    assert (k3 >= 0).all()  # e^x - x - 1 >= 0
    assert torch.allclose(k3, torch.exp(-d) + d - 1)


def test_kl_unknown_lists_names():
    with pytest.raises(ValueError) as err:
        kl_penalty(LOGP, REF, "full")
    msg = str(err.value)
    assert "unknown kl_penalty 'full'" in msg
    for name in KL_PENALTIES:
        assert name in msg
    base = {"kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"}
    assert set(KL_PENALTIES) == base | {name + "+" for name in base}


# ----------------------------------------------------------------------------- "+": k2's gradient (straight-through)
# token 0: d = logp - ref = ln2, token 1: d = -ln2. d k2 / d logp = d = [ln2, -ln2] whatever the estimator's value.

def _value_and_grad(name):
    logp = LOGP.clone().requires_grad_(True)
    kl = kl_penalty(logp, REF, name)
    kl.sum().backward()
    return kl.detach()[0].tolist(), logp.grad[0].tolist()


@pytest.mark.parametrize("name, value", [
    ("k3+", [0.5 + LN2 - 1, 2 + -LN2 - 1]),  # k3 = exp(x) - x - 1, x = ref - logp = [-ln2, ln2]: [0.1931, 0.3069]
    ("low_var_kl+", [0.5 + LN2 - 1, 2 + -LN2 - 1]),
    ("k1+", [LN2, -LN2]),  # k1 = d
    ("kl+", [LN2, -LN2]),
    ("abs+", [LN2, LN2]),  # |d|
    ("k2+", [0.5 * LN2 ** 2, 0.5 * LN2 ** 2]),  # k2 itself: the trick changes nothing
    ("mse+", [0.5 * LN2 ** 2, 0.5 * LN2 ** 2]),
])
def test_plus_keeps_the_value_and_takes_k2s_gradient(name, value):
    got_value, got_grad = _value_and_grad(name)
    assert got_value == pytest.approx(value, abs=1e-12)
    assert got_grad == pytest.approx([LN2, -LN2], abs=1e-12)


def test_without_plus_the_gradient_is_the_estimators_own():
    # k3 = exp(ref - logp) - (ref - logp) - 1: d/d logp = -exp(ref - logp) + 1 = [1 - 1/2, 1 - 2] = [0.5, -1]
    assert _value_and_grad("k3")[1] == pytest.approx([0.5, -1.0], abs=1e-12)
    assert _value_and_grad("k1")[1] == pytest.approx([1.0, 1.0], abs=1e-12)  # d/d logp of logp - ref


def test_plus_in_apply_kl_penalty_is_the_value():
    # KL in the reward has no gradient: k3+ subtracts the k3 value, beta = 0.5
    scores = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2)
    plain, kl_plain = apply_kl_penalty(scores, LOGP, REF, mask, 0.5, "k3")
    plus, kl_plus = apply_kl_penalty(scores, LOGP, REF, mask, 0.5, "k3+")
    assert torch.equal(plain, plus) and kl_plain == kl_plus
    assert plus[0].tolist() == pytest.approx([-0.5 * (LN2 - 0.5), -0.5 * (1 - LN2)], abs=1e-12)


# ----------------------------------------------------------------------------- controllers


def test_fixed_controller():
    ctrl = FixedKLController(0.05)
    ctrl.update(current_kl=10.0, n_steps=256)
    assert ctrl.value == 0.05
    ctrl2 = FixedKLController(1.0)
    ctrl2.load_state_dict(ctrl.state_dict())
    assert ctrl2.value == 0.05


def test_adaptive_controller_by_hand():
    ctrl = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.1, horizon=100)
    # kl = 0.2 > target: error = clip(0.2/0.1 - 1, -0.2, 0.2) = 0.2, mult = 1 + 0.2*10/100 = 1.02
    ctrl.update(current_kl=0.2, n_steps=10)
    assert ctrl.value == pytest.approx(0.1 * 1.02, rel=1e-12)
    # kl = 0.11: error = 0.1 (unclipped), mult = 1 + 0.1*10/100 = 1.01
    ctrl.update(current_kl=0.11, n_steps=10)
    assert ctrl.value == pytest.approx(0.1 * 1.02 * 1.01, rel=1e-12)
    # kl = 0.05 < target: error = clip(-0.5) = -0.2, mult = 1 - 0.2*10/100 = 0.98
    ctrl.update(current_kl=0.05, n_steps=10)
    assert ctrl.value == pytest.approx(0.1 * 1.02 * 1.01 * 0.98, rel=1e-12)
    # kl exactly on target: no change
    before = ctrl.value
    ctrl.update(current_kl=0.1, n_steps=10)
    assert ctrl.value == pytest.approx(before, rel=1e-12)


def test_adaptive_controller_direction_and_tensor_kl():
    up = AdaptiveKLController(0.2, target_kl=0.05, horizon=1000)
    down = AdaptiveKLController(0.2, target_kl=0.05, horizon=1000)
    for _ in range(5):
        up.update(torch.tensor(0.5), n_steps=64)  # kl above target -> coef increases
        down.update(0.0, n_steps=64)  # kl below target -> coef decreases
    assert up.value == pytest.approx(0.2 * (1 + 0.2 * 64 / 1000) ** 5, rel=1e-12)
    assert down.value == pytest.approx(0.2 * (1 - 0.2 * 64 / 1000) ** 5, rel=1e-12)
    assert up.value > 0.2 > down.value


def test_adaptive_controller_state_dict_roundtrip():
    ctrl = AdaptiveKLController(0.1, 0.02, 500)
    ctrl.update(0.5, 32)
    state = ctrl.state_dict()
    restored = AdaptiveKLController(0.7, 0.3, 7)
    restored.load_state_dict(state)
    assert (restored.value, restored.target, restored.horizon) == (ctrl.value, 0.02, 500)
    ctrl.update(0.5, 32)
    restored.update(0.5, 32)
    assert restored.value == ctrl.value


def test_get_kl_controller():
    fixed = get_kl_controller("fixed", 0.01)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.01
    ada = get_kl_controller("adaptive", 0.01, target_kl=0.2, horizon=50)
    assert isinstance(ada, AdaptiveKLController)
    assert (ada.value, ada.target, ada.horizon) == (0.01, 0.2, 50)
    with pytest.raises(ValueError, match="valid: fixed, adaptive"):
        get_kl_controller("pid", 0.01)
    with pytest.raises(ValueError, match="target_kl"):
        get_kl_controller("adaptive", 0.01, target_kl=0.0)
    with pytest.raises(ValueError, match="horizon"):
        get_kl_controller("adaptive", 0.01, horizon=0)


# ----------------------------------------------------------------------------- apply_kl_penalty


def test_apply_kl_penalty_by_hand():
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.5, -1.2], [-2.4, -2.0, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    # k1 = logp - ref: row 0 [0.5, -0.5, 0.2], row 1 [0.4, 0.0, (7.0 padding -> 0)]
    rewards, current_kl = apply_kl_penalty(scores, logp, ref, mask, kl_coef=0.5, kl_penalty="kl")
    # rewards = scores - 0.5 * kl * mask
    assert rewards[0].tolist() == pytest.approx([-0.25, 0.25, 0.9])
    assert rewards[1].tolist() == pytest.approx([-0.2, 1.0, 0.0])
    # per-seq mean kl: row 0 (0.5 - 0.5 + 0.2) / 3 = 0.0667, row 1 (0.4 + 0) / 2 = 0.2 ; mean = 0.1333
    assert isinstance(current_kl, float)
    assert current_kl == pytest.approx((0.2 / 3 + 0.2) / 2, rel=1e-7)


def test_apply_kl_penalty_k3_and_zero_coef():
    scores = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    rewards, kl = apply_kl_penalty(scores, LOGP, REF, torch.ones(1, 2), kl_coef=2.0, kl_penalty="low_var_kl")
    # k3 = [ln2 - 0.5, 1 - ln2] -> rewards = scores - 2 * k3
    assert rewards[0].tolist() == pytest.approx([-2 * (LN2 - 0.5), 1 - 2 * (1 - LN2)], rel=1e-9)
    assert kl == pytest.approx(((LN2 - 0.5) + (1 - LN2)) / 2, rel=1e-7)  # = 0.25
    rewards0, _ = apply_kl_penalty(scores, LOGP, REF, torch.ones(1, 2), kl_coef=0.0)
    assert torch.equal(rewards0, scores)


def _ref_apply(scores, logp, ref, mask, coef):
    rewards, seq_kls = [], []
    for s_r, l_r, r_r, m_r in zip(scores, logp, ref, mask):
        kls = [(l - r) if m else 0.0 for l, r, m in zip(l_r, r_r, m_r)]
        rewards.append([s - coef * k for s, k in zip(s_r, kls)])
        n = sum(m_r)
        seq_kls.append(sum(kls) / n if n else 0.0)
    return rewards, sum(seq_kls) / len(seq_kls)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 4), (10, 17)])
def test_apply_kl_penalty_vs_loop_reference(seed, shape):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, shape[1] + 1, (shape[0],), generator=gen)  # empty rows allowed
    mask = (torch.arange(shape[1])[None, :] < lengths[:, None]).to(torch.float64)
    scores = torch.randn(*shape, generator=gen, dtype=torch.float64) * mask
    logp = torch.randn(*shape, generator=gen, dtype=torch.float64) - 2
    ref = torch.randn(*shape, generator=gen, dtype=torch.float64) - 2
    rewards, kl = apply_kl_penalty(scores, logp, ref, mask, kl_coef=0.3)
    ref_rewards, ref_kl = _ref_apply(scores.tolist(), logp.tolist(), ref.tolist(), mask.tolist(), 0.3)
    assert torch.allclose(rewards, torch.tensor(ref_rewards, dtype=torch.float64), atol=1e-12)
    assert kl == pytest.approx(ref_kl, rel=1e-7, abs=1e-9)
