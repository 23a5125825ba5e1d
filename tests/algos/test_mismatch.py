"""Rollout-vs-trainer diagnostics (rlkit.algos.mismatch): by hand, against a loop over sequences and tokens, and
against verl 0.9.1's own functions (``calculate_debug_metrics``, ``compute_offpolicy_metrics``; RLKIT_VERL_SRC)."""
from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos.mismatch import offpolicy_metrics, probs_diff_metrics


def _batch(seed: int = 0, bs: int = 6, T: int = 5):
    """Right-padded responses (one empty), log-probs of a trainer and of an engine close to it, garbage in padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (bs,), generator=g)
    lengths[2] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    old = -torch.rand(bs, T, generator=g) * 3
    rollout = old + 0.2 * torch.randn(bs, T, generator=g)
    old[mask == 0], rollout[mask == 0] = 7.0, -50.0  # padding must not count
    return old, rollout, mask


def test_probs_diff_by_hand_and_with_no_valid_token():
    rollout = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.3, 0.3]]).log()
    actor = torch.tensor([[0.4, 0.2, 0.9], [0.4, 0.3, 0.3]]).log()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    m = probs_diff_metrics(rollout, actor, mask)  # tokens (0.4, 0.5), (0.2, 0.2), (0.4, 0.1): |d| = 0.1, 0, 0.3
    assert m["valid"] == 1
    assert m["max"] == pytest.approx(0.3) and m["mean"] == pytest.approx(0.4 / 3)
    assert m["std"] == pytest.approx(math.sqrt(((0.1 - 0.4 / 3) ** 2 + (0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2) / 2))
    # Pearson of x = (0.4, 0.2, 0.4) and y = (0.5, 0.2, 0.1): cov / (sx sy) with means 1/3 and 0.8/3
    x, y = [0.4, 0.2, 0.4], [0.5, 0.2, 0.1]
    mx, my = sum(x) / 3, sum(y) / 3
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert m["pearson_corr"] == pytest.approx(r, rel=1e-5)
    none = probs_diff_metrics(rollout, actor, torch.zeros_like(mask))
    assert none["valid"] == 0 and all(math.isnan(none[k]) for k in ("max", "mean", "std", "pearson_corr"))


def test_offpolicy_metrics_equal_a_loop_over_sequences_and_tokens():
    old, rollout, mask = _batch()
    got = offpolicy_metrics(old, rollout, mask)
    seqs = []  # per sequence: its tokens' (old, rollout) log-probs
    for i in range(len(mask)):
        seqs.append([(old[i, t].item(), rollout[i, t].item()) for t in range(mask.shape[1]) if mask[i, t]])
    tokens = [tok for s in seqs for tok in s]
    mean_seq = [(sum(o for o, _ in s) / len(s), sum(r for _, r in s) / len(s)) if s else (0.0, 0.0) for s in seqs]
    diffs = [r - o for o, r in mean_seq]
    want = {
        "training_ppl": sum(math.exp(-o) for o, _ in mean_seq) / len(seqs),
        "training_log_ppl": sum(-o for o, _ in mean_seq) / len(seqs),
        "rollout_ppl": sum(math.exp(-r) for _, r in mean_seq) / len(seqs),
        "rollout_log_ppl": sum(-r for _, r in mean_seq) / len(seqs),
        "kl": sum(r - o for o, r in tokens) / len(tokens),
        "k3_kl": sum(math.exp(o - r) - (o - r) - 1 for o, r in tokens) / len(tokens),
        "log_ppl_diff": sum(diffs) / len(diffs), "log_ppl_abs_diff": sum(map(abs, diffs)) / len(diffs),
        "log_ppl_diff_max": max(diffs), "log_ppl_diff_min": min(diffs),
        "ppl_ratio": sum(map(math.exp, diffs)) / len(diffs),
        "chi2_token": sum(math.exp(2 * (o - r)) for o, r in tokens) / len(tokens) - 1,
        "chi2_seq": sum(math.exp(2 * sum(o - r for o, r in s)) for s in seqs) / len(seqs) - 1,
    }
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got["training_ppl"] > 1 and got["k3_kl"] > 0  # an empty response counts as log-ppl 0 (verl's 1e-8)


def test_offpolicy_metrics_clamp_log_rho_and_refuse_an_empty_batch():
    old = torch.tensor([[0.0, 0.0]])
    rollout = torch.tensor([[-30.0, 0.0]])  # log rho = 30 at one token: clamped to 20 in both chi-squared terms
    m = offpolicy_metrics(old, rollout, torch.ones(1, 2))
    assert m["chi2_token"] == pytest.approx((math.exp(40) + 1) / 2 - 1)
    assert m["chi2_seq"] == pytest.approx(math.exp(40) - 1)
    with pytest.raises(ValueError, match="no valid token"):
        offpolicy_metrics(old, rollout, torch.zeros(1, 2))


def test_both_equal_verls(verl_091):
    import numpy as np

    from verl import DataProto
    from verl.trainer.ppo.rollout_corr_helper import compute_offpolicy_metrics
    from verl.utils.debug.metrics import calculate_debug_metrics

    old, rollout, mask = _batch(seed=3, bs=9, T=7)
    theirs = compute_offpolicy_metrics(old_log_prob=old, rollout_log_prob=rollout, response_mask=mask)
    assert offpolicy_metrics(old, rollout, mask) == pytest.approx(theirs, rel=1e-6, abs=1e-7)
    data = DataProto.from_dict(tensors={"rollout_log_probs": rollout, "old_log_probs": old, "response_mask": mask,
                                        "responses": torch.zeros(mask.shape, dtype=torch.long)},
                               non_tensors={"uid": np.arange(len(mask))})
    debug = calculate_debug_metrics(data)
    ours = probs_diff_metrics(rollout, old, mask)
    assert {k.removeprefix("training/rollout_"): v for k, v in debug.items()} == pytest.approx(
        {"probs_diff_valid": ours["valid"], "probs_diff_max": ours["max"], "probs_diff_mean": ours["mean"],
         "probs_diff_std": ours["std"], "actor_probs_pearson_corr": ours["pearson_corr"]}, rel=1e-6)
