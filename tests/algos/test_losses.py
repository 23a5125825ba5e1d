"""Tests for rlkit.algos.losses: PPO policy loss (dual clip), value loss, entropy loss."""
import math

import pytest
import torch

from tiny import agg_loss_loop
from rlkit.algos import LOSS_AGG_MODES, compute_entropy_loss, compute_policy_loss, compute_value_loss


def ragged_mask(bs, length, gen, min_len=1):
    """Right-padded (bs, length) float64 mask with random lengths in [min_len, length]."""
    lengths = torch.randint(min_len, length + 1, (bs,), generator=gen)
    return (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)


# Note: masked means divide by (count + 1e-8) like verl, so exact hand values match to ~1e-8 relative.
# ----------------------------------------------------------------------------- policy loss

# Five valid tokens + one padded token (ratio 100, A = -50: would dominate if not masked).
RATIOS = [1.5, 0.5, 0.5, 1.1, 5.0, 100.0]
ADVS = [1.0, 1.0, -1.0, -1.0, -1.0, -50.0]
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)


def policy_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0, -2.0]], dtype=torch.float64)
    logp = (old + torch.log(torch.tensor([RATIOS], dtype=torch.float64))).requires_grad_(True)
    return old, logp, torch.tensor([ADVS], dtype=torch.float64)


def test_policy_loss_dual_clip_by_hand():
    old, logp, adv = policy_inputs()
    loss, metrics = compute_policy_loss(old, logp, adv, MASK, 0.2, 0.2, 3.0, "token-mean")
    # eps = 0.2, c = 3; L1 = -A r, L2 = -A clip(r, 0.8, 1.2), Lc = max(L1, L2), L3 = -A c
    # t0 A=+1 r=1.5: L1=-1.5 L2=-1.2 -> Lc=-1.2 (clipped)                         loss -1.2
    # t1 A=+1 r=0.5: L1=-0.5 L2=-0.8 -> Lc=-0.5                                    loss -0.5
    # t2 A=-1 r=0.5: L1= 0.5 L2= 0.8 -> Lc= 0.8 (clipped), L3=3, min(3, 0.8)=0.8    loss  0.8
    # t3 A=-1 r=1.1: L1= 1.1 L2= 1.1 -> Lc= 1.1, min(3, 1.1)                       loss  1.1
    # t4 A=-1 r=5.0: L1= 5.0 L2= 1.2 -> Lc= 5.0, L3=3 -> min = 3 (dual clip)        loss  3.0
    # token-mean = (-1.2 - 0.5 + 0.8 + 1.1 + 3.0) / 5 = 3.2 / 5 = 0.64
    assert loss.item() == pytest.approx(0.64, rel=1e-7)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 5)  # t0, t2
    assert metrics["pg_clipfrac_lower"] == pytest.approx(1 / 5)  # t4
    # ppo_kl = mean(-(log r)) = -ln(1.5 * 0.5 * 0.5 * 1.1 * 5) / 5 = -ln(2.0625) / 5
    assert metrics["ppo_kl"] == pytest.approx(-math.log(2.0625) / 5, rel=1e-7)
    assert set(metrics) == {"pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    # gradients d loss / d logp: clipped tokens have 0 (t0, t2, t4), others -A r / 5
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 5, 0.0, 1.1 / 5, 0.0, 0.0], rel=1e-7, abs=1e-9)


def test_policy_loss_decoupled_clip_by_hand():
    old, logp, adv = policy_inputs()
    loss, metrics = compute_policy_loss(old, logp, adv, MASK, clip_ratio_low=0.2, clip_ratio_high=0.28)
    # only t0 changes: L2 = -1 * min(1.5, 1.28) = -1.28 -> Lc = -1.28
    # (-1.28 - 0.5 + 0.8 + 1.1 + 3.0) / 5 = 3.12 / 5
    assert loss.item() == pytest.approx(3.12 / 5, rel=1e-7)
    # a larger dual-clip constant: c = 10 lets t4 keep Lc = 5 -> (3.2 - 3 + 5) / 5
    loss_c, metrics_c = compute_policy_loss(old, logp, adv, MASK, clip_ratio_c=10.0)
    assert loss_c.item() == pytest.approx(5.2 / 5, rel=1e-7)
    assert metrics_c["pg_clipfrac_lower"] == 0.0


@pytest.mark.parametrize(
    "mode, expected",
    [
        # per-token losses: row 0 = [-1.2, -0.5, 0.8], row 1 = [1.1, 3.0] (+ padding)
        ("token-mean", 3.2 / 5),
        ("seq-mean-token-sum", ((-1.2 - 0.5 + 0.8) + (1.1 + 3.0)) / 2),  # (-0.9 + 4.1) / 2 = 1.6
        ("seq-mean-token-mean", ((-0.9 / 3) + (4.1 / 2)) / 2),  # (-0.3 + 2.05) / 2 = 0.875
        ("seq-mean-token-sum-norm", 3.2 / 2 / 3),  # (-0.9 + 4.1) / 2 seqs / response_length 3
    ],
)
def test_policy_loss_agg_modes_by_hand(mode, expected):
    ratios = torch.tensor([[1.5, 0.5, 0.5], [1.1, 5.0, 7.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    old = torch.zeros(2, 3, dtype=torch.float64)
    loss, metrics = compute_policy_loss(old, ratios.log(), adv, mask, loss_agg_mode=mode)
    assert loss.item() == pytest.approx(expected, rel=1e-7)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 5)


def test_policy_loss_ratio_clamped_and_validation():
    # log-ratio 50 is clamped to 20: r = e^20, A = +1 -> loss = -1.2 (clipped), finite
    loss, metrics = compute_policy_loss(
        torch.zeros(1, 1), torch.full((1, 1), 50.0), torch.ones(1, 1), torch.ones(1, 1)
    )
    assert loss.item() == pytest.approx(-1.2)
    assert metrics["ppo_kl"] == pytest.approx(-20.0)  # computed from the clamped log-ratio
    for c in (1.0, 0.5):
        with pytest.raises(ValueError, match="clip_ratio_c"):
            compute_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                                clip_ratio_c=c)
    with pytest.raises(ValueError, match="valid: token-mean"):
        compute_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                            loss_agg_mode="mean")


def _ref_token_pg(old, logp, a, low, high, c):
    """Scalar reference of the per-token dual-clip PPO loss and its clip indicators."""
    r = math.exp(min(max(logp - old, -20.0), 20.0))
    l1 = -a * r
    l2 = -a * min(max(r, 1 - low), 1 + high)
    lc = max(l1, l2)
    l3 = -a * c
    loss = min(l3, lc) if a < 0 else lc
    return loss, float(l2 > l1), float(lc > l3 and a < 0), -(min(max(logp - old, -20.0), 20.0))


def _tok_mean(vals, mask):
    picked = [v for vr, mr in zip(vals, mask) for v, k in zip(vr, mr) if k]
    return sum(picked) / len(picked)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 5), (8, 16)])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_policy_loss_vs_loop_reference(seed, shape, mode):
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(*shape, generator=gen, dtype=torch.float64) - 2
    logp = old + torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.8  # ratios well outside the clip range
    adv = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    mask = ragged_mask(*shape, gen)
    low, high, c = 0.2, 0.3, 2.5
    loss, metrics = compute_policy_loss(old, logp, adv, mask, low, high, c, mode)
    per_tok = [
        [_ref_token_pg(o, l, a, low, high, c) for o, l, a in zip(orow, lrow, arow)]
        for orow, lrow, arow in zip(old.tolist(), logp.tolist(), adv.tolist())
    ]
    ml = mask.tolist()
    field = lambda k: [[t[k] for t in row] for row in per_tok]  # noqa: E731
    assert loss.item() == pytest.approx(agg_loss_loop(field(0), ml, mode), rel=1e-7)
    assert metrics["pg_clipfrac"] == pytest.approx(_tok_mean(field(1), ml), rel=1e-7)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(_tok_mean(field(2), ml), rel=1e-7, abs=1e-9)
    assert metrics["ppo_kl"] == pytest.approx(_tok_mean(field(3), ml), rel=1e-7)


# ----------------------------------------------------------------------------- value loss


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)  # V_old
    vpreds = torch.tensor([[1.5, 0.75, 2.0, 40.0]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, metrics = compute_value_loss(vpreds, values, returns, mask, cliprange_value=0.25)
    # c = 0.25, V_clip = 1 + clamp(V - 1, -0.25, 0.25)
    # t0: V=1.5  V_clip=1.25: (1.5-2)^2 = 0.25,    (1.25-2)^2 = 0.5625 -> 0.5625 (clipped)
    # t1: V=0.75 V_clip=0.75: (0.75-0)^2 = 0.5625 both                -> 0.5625
    # t2: V=2.0  V_clip=1.25: (2-1)^2 = 1,         (1.25-1)^2 = 0.0625 -> 1.0
    # loss = 0.5 * (0.5625 + 0.5625 + 1) / 3 = 0.5 * 2.125 / 3
    assert loss.item() == pytest.approx(0.5 * 2.125 / 3, rel=1e-7)
    assert metrics["vf_clipfrac"] == pytest.approx(1 / 3)
    assert metrics["vpred_mean"] == pytest.approx(4.25 / 3, rel=1e-7)  # (1.5 + 0.75 + 2) / 3
    assert set(metrics) == {"vf_clipfrac", "vpred_mean"}
    loss.backward()
    # t0 uses the clipped branch (no grad), t1: (V - R)/3 = 0.25, t2: (2 - 1)/3
    assert vpreds.grad[0].tolist() == pytest.approx([0.0, 0.75 / 3, 1.0 / 3, 0.0], rel=1e-7, abs=1e-9)


def test_value_loss_agg_mode_and_no_clip():
    values = torch.zeros(2, 2)
    vpreds = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    returns = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # squared errors (no clipping): [1, 4], [9]
    loss, m = compute_value_loss(vpreds, values, returns, mask, None)
    assert loss.item() == pytest.approx(0.5 * 14 / 3)
    assert m["vf_clipfrac"] == 0.0
    loss, _ = compute_value_loss(vpreds, values, returns, mask, None, loss_agg_mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx(0.5 * (2.5 + 9) / 2)  # per-seq means 5/2 and 9
    # a huge clip range behaves like no clipping
    loss_big, m_big = compute_value_loss(vpreds, values, returns, mask, 1e6)
    assert loss_big.item() == pytest.approx(0.5 * 14 / 3) and m_big["vf_clipfrac"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_value_loss_vs_loop_reference(seed, mode):
    gen = torch.Generator().manual_seed(seed)
    shape = (6, 9)
    values = torch.randn(*shape, generator=gen, dtype=torch.float64)
    vpreds = values + torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
    returns = torch.randn(*shape, generator=gen, dtype=torch.float64)
    mask = ragged_mask(*shape, gen)
    c = 0.2
    loss, metrics = compute_value_loss(vpreds, values, returns, mask, c, mode)
    per_tok, clipped = [], []
    for vp_r, v_r, r_r in zip(vpreds.tolist(), values.tolist(), returns.tolist()):
        lrow, crow = [], []
        for vp, v, r in zip(vp_r, v_r, r_r):
            vc = v + min(max(vp - v, -c), c)
            lrow.append(max((vp - r) ** 2, (vc - r) ** 2))
            crow.append(float((vc - r) ** 2 > (vp - r) ** 2))
        per_tok.append(lrow)
        clipped.append(crow)
    ml = mask.tolist()
    assert loss.item() == pytest.approx(0.5 * agg_loss_loop(per_tok, ml, mode), rel=1e-7)
    assert metrics["vf_clipfrac"] == pytest.approx(_tok_mean(clipped, ml), rel=1e-7)
    assert metrics["vpred_mean"] == pytest.approx(_tok_mean(vpreds.tolist(), ml), rel=1e-7)


# ----------------------------------------------------------------------------- entropy loss


def test_entropy_loss_by_hand():
    # row 0: uniform over V=4 -> ln 4 per token
    # row 1 token 0: logits [0, ln 3, -1e4, -1e4] -> probabilities (1/4, 3/4, 0, 0)
    logits = torch.zeros(2, 2, 4, dtype=torch.float64)
    logits[1, 0] = torch.tensor([0.0, math.log(3.0), -1e4, -1e4])
    logits[1, 1] = torch.tensor([100.0, 0.0, 0.0, 0.0])  # padding
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623
    ln4 = math.log(4.0)  # 1.3863
    # token-mean: (ln4 + ln4 + h) / 3
    assert compute_entropy_loss(logits, mask).item() == pytest.approx((2 * ln4 + h) / 3, rel=1e-7)
    # seq-mean-token-mean: (mean(ln4, ln4) + h) / 2
    got = compute_entropy_loss(logits, mask, "seq-mean-token-mean")
    assert got.item() == pytest.approx((ln4 + h) / 2, rel=1e-7)
    # seq-mean-token-sum: (2 ln4 + h) / 2
    got = compute_entropy_loss(logits, mask, "seq-mean-token-sum")
    assert got.item() == pytest.approx((2 * ln4 + h) / 2, rel=1e-7)


def test_entropy_loss_gradient_flows():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = compute_entropy_loss(logits, torch.ones(2, 3))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
