"""rlkit.algos against verl 0.9.1's own functions (``verl.trainer.ppo.core_algos``) on the same random tensors:
advantages, the PPO policy and value losses with every aggregation mode, and the KL estimators. The hand-computed
tests beside this file fix what each formula is; these fix that it is verl's, so a learning curve that differs
from verl's is not explained by the update math. Needs RLKIT_VERL_SRC (the ``verl_091`` fixture)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlkit import algos

@pytest.fixture(scope="module")
def core(verl_091):
    import verl.trainer.ppo.core_algos as core

    return core


def _batch(seed: int, bs: int = 12, T: int = 7):
    """Right-padded responses (one of them empty), group index of 3 per prompt plus a singleton group,
    one-hot outcome rewards at each response's last token and a few tied scores."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (bs,), generator=g)
    lengths[5] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    scores = torch.randint(0, 3, (bs,), generator=g).float() * 0.5
    scores[0:3] = 1.0  # a group whose scores are all equal (std 0)
    rewards = torch.zeros(bs, T)
    last = (lengths - 1).clamp(min=0)
    rewards[torch.arange(bs), last] = scores * (lengths > 0)
    index = np.array([min(i // 3, 3) if i < 11 else 99 for i in range(bs)])  # groups of 3 and a singleton
    return g, mask, rewards, index


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_advantages_equal_verls(core, norm):
    _, mask, rewards, index = _batch(0)
    want, want_ret = core.compute_grpo_outcome_advantage(rewards, mask, index, epsilon=1e-6,
                                                         norm_adv_by_std_in_grpo=norm)
    got, got_ret = algos.compute_grpo_outcome_advantage(rewards, mask, [str(i) for i in index], epsilon=1e-6,
                                                        norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_ret, want_ret, rtol=0, atol=1e-6)
    assert got.abs().sum() > 0  # the batch has groups with different scores


def test_rloo_and_reinforce_pp_advantages_equal_verls(core):
    from omegaconf import OmegaConf

    _, mask, rewards, index = _batch(1)
    want, _ = core.compute_rloo_outcome_advantage(rewards, mask, index, epsilon=1e-6)
    got, _ = algos.compute_rloo_outcome_advantage(rewards, mask, [str(i) for i in index], epsilon=1e-6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    want, want_ret = core.compute_reinforce_plus_plus_outcome_advantage(rewards, mask,
                                                                        config=OmegaConf.create({"gamma": 0.9}))
    got, got_ret = algos.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=0.9)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_ret, want_ret, rtol=0, atol=1e-6)


def test_gae_equals_verls(core):
    g, mask, _, _ = _batch(2)
    rewards = torch.randn(mask.shape, generator=g) * mask
    values = torch.randn(mask.shape, generator=g)
    want, want_ret = core.compute_gae_advantage_return(rewards, values, mask, gamma=0.99, lam=0.95)
    got, got_ret = algos.compute_gae(rewards, values, mask, gamma=0.99, lam=0.95)
    # on the response tokens; outside them rlkit writes 0 and verl whatever its whitening left (no loss reads it)
    torch.testing.assert_close(got * mask, want * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_ret * mask, want_ret * mask, rtol=0, atol=1e-5)
    assert not got[mask == 0].any() and not got_ret[mask == 0].any()


@pytest.mark.parametrize("agg", algos.LOSS_AGG_MODES)
def test_policy_loss_its_gradient_and_metrics_equal_verls(core, agg):
    from verl.workers.config import ActorConfig

    g, mask, _, _ = _batch(3)
    old = torch.randn(mask.shape, generator=g) - 2
    new = (old + 1.2 * torch.randn(mask.shape, generator=g)).requires_grad_()  # ratios beyond both clips and 3
    adv = torch.randn(mask.shape, generator=g) * 2
    cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4, rollout_n=1,
                      clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, loss_agg_mode=agg)
    want, want_m = core.compute_policy_loss_vanilla(old, new, adv, mask, agg, cfg)
    (want_grad,) = torch.autograd.grad(want, new)
    got, got_m = algos.compute_policy_loss(old, new, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28,
                                           clip_ratio_c=3.0, loss_agg_mode=agg)
    (got_grad,) = torch.autograd.grad(got, new)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-8)
    for key in ("pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"):
        assert float(got_m[key]) == pytest.approx(float(want_m[f"actor/{key}"]), abs=1e-6), key
    assert 0 < float(got_m["pg_clipfrac"]) < 1 and float(got_m["pg_clipfrac_lower"]) > 0  # every branch is taken


@pytest.mark.parametrize("agg", algos.LOSS_AGG_MODES)
def test_value_loss_and_its_gradient_equal_verls(core, agg):
    g, mask, _, _ = _batch(4)
    values = torch.randn(mask.shape, generator=g)
    returns = torch.randn(mask.shape, generator=g)
    vpreds = (values + 0.8 * torch.randn(mask.shape, generator=g)).requires_grad_()
    want, want_clip = core.compute_value_loss(vpreds, returns, values, mask, cliprange_value=0.5, loss_agg_mode=agg)
    (want_grad,) = torch.autograd.grad(want, vpreds)
    got, got_m = algos.compute_value_loss(vpreds, values, returns, mask, cliprange_value=0.5, loss_agg_mode=agg)
    (got_grad,) = torch.autograd.grad(got, vpreds)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-8)
    assert float(got_m["vf_clipfrac"]) == pytest.approx(float(want_clip), abs=1e-6)


@pytest.mark.parametrize("name", algos.KL_PENALTIES)
def test_kl_estimators_and_their_gradients_equal_verls(core, name):
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(6, 5, generator=g) - 2
    lp = (ref + 0.5 * torch.randn(6, 5, generator=g)).requires_grad_()
    want = core.kl_penalty(lp, ref, name)
    got = algos.kl_penalty(lp, ref, name)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    (want_grad,) = torch.autograd.grad(want.sum(), lp)
    (got_grad,) = torch.autograd.grad(got.sum(), lp)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7)
