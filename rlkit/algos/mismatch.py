"""How far the rollout engine's policy is from the trainer's, on the same sampled tokens (verl 0.9's diagnostics).

The engine samples with its own kernels and precision (SGLang in bf16), the trainer recomputes each sampled token's
log-probability (``old_log_probs``); in an on-policy step the two describe the same weights, so any gap is numerics
or stale weights. verl logs two sets of numbers for this, and so does rlkit, with verl's names and formulas:

* :func:`probs_diff_metrics` (verl's ``training/rollout_probs_diff_*``, ``utils/debug/metrics.py``): the absolute
  difference of the token *probabilities* ``|p_actor - p_rollout|`` (max, mean, unbiased std) and the Pearson
  correlation of the two probabilities over the response tokens;
* :func:`offpolicy_metrics` (verl's ``rollout_corr/*``, ``compute_offpolicy_metrics``): KL estimators, perplexities
  and chi-squared divergences of the importance ratio ``rho = pi_training / pi_rollout``.

Shapes: ``(bs, response_length)`` log-probabilities and a 0/1 ``response_mask``. Plain floats out.
"""
from __future__ import annotations

import torch

from .core import masked_mean, masked_sum

SAFETY_BOUND = 20.0  # |log rho| clamp before exponentiating in the chi-squared terms (verl's bound)


def probs_diff_metrics(rollout_log_probs: torch.Tensor, actor_log_probs: torch.Tensor,
                       response_mask: torch.Tensor) -> dict[str, float]:
    """``{"valid", "max", "mean", "std", "pearson_corr"}`` of the response tokens' probabilities.

    With ``p = exp(log_prob)`` per token and ``d = |p_actor - p_rollout|`` over the tokens where the mask is 1:
    ``max(d)``, ``mean(d)``, ``std(d)`` (unbiased, as ``torch.std``; NaN for one token) and the Pearson correlation
    of ``p_actor`` and ``p_rollout``. ``valid`` is 1, or 0 with NaN for the rest when no token is valid.

    >>> import torch
    >>> from rlkit.algos.mismatch import probs_diff_metrics
    >>> rollout = torch.tensor([[0.5, 0.25, 1.0]]).log()
    >>> actor = torch.tensor([[0.4, 0.25, 0.2]]).log()
    >>> m = probs_diff_metrics(rollout, actor, torch.tensor([[1.0, 1.0, 0.0]]))  # the third token is padding
    >>> m["valid"], round(m["max"], 6), round(m["mean"], 6), round(m["std"], 6)  # d = 0.1, 0
    (1, 0.1, 0.05, 0.070711)
    >>> m["pearson_corr"]  # two points always lie on a line
    1.0
    """
    keep = response_mask.bool()
    if not keep.any():
        nan = float("nan")
        return {"valid": 0, "max": nan, "mean": nan, "std": nan, "pearson_corr": nan}
    p_actor, p_rollout = actor_log_probs.exp()[keep], rollout_log_probs.exp()[keep]
    d = (p_actor - p_rollout).abs()
    corr = torch.corrcoef(torch.stack([p_actor, p_rollout]))[0, 1]
    return {"valid": 1, "max": d.max().item(), "mean": d.mean().item(), "std": d.std().item(),
            "pearson_corr": corr.item()}


def offpolicy_metrics(old_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                      response_mask: torch.Tensor) -> dict[str, float]:
    """verl's off-policy diagnostics of the training policy (``old_log_probs``) against the rollout policy.

    Per sequence ``s`` with ``m_s = masked_mean(log_prob, mask)`` over its tokens (``/ (count + 1e-8)``, so an empty
    response gives 0), and ``log rho_t = old_t - rollout_t``:

    * ``training_log_ppl = mean_s(-m_s(old))``, ``training_ppl = mean_s(exp(-m_s(old)))``; the same ``rollout_*``;
    * ``kl = masked_mean(rollout - old)`` over all tokens (KL(pi_rollout || pi_training), the direct estimator);
    * ``k3_kl = masked_mean(rho - log rho - 1)``;
    * ``log_ppl_diff_s = m_s(rollout) - m_s(old)``: its mean, mean of ``|.|``, max and min; ``ppl_ratio =
      mean_s(exp(log_ppl_diff_s))``;
    * ``chi2_token = masked_mean(rho^2) - 1`` and ``chi2_seq = mean_s(exp(2 * sum_t log rho_t)) - 1``, with
      ``log rho`` (and its per-sequence sum) clamped to ``[-20, 20]`` first.

    >>> import torch
    >>> from rlkit.algos.mismatch import offpolicy_metrics
    >>> old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    >>> rollout = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    >>> m = offpolicy_metrics(old, rollout, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    >>> round(m["kl"], 4), round(m["training_log_ppl"], 4)  # (0 + 0 - 0.5) / 3, (1.5 + 0.5) / 2
    (-0.1667, 1.0)
    >>> round(m["log_ppl_diff_min"], 4), round(m["chi2_seq"], 4)  # sequence 2: -1 - -0.5; (1 + e) / 2 - 1
    (-0.5, 0.8591)
    """
    if not response_mask.bool().any():
        raise ValueError("offpolicy_metrics: response_mask has no valid token")
    mask = response_mask.to(old_log_probs.dtype)
    m_old = masked_mean(old_log_probs, mask, dim=-1)  # per sequence
    m_rollout = masked_mean(rollout_log_probs, mask, dim=-1)
    log_rho = old_log_probs - rollout_log_probs
    log_ppl_diff = m_rollout - m_old
    rho_token = log_rho.clamp(-SAFETY_BOUND, SAFETY_BOUND).exp()
    log_rho_seq = masked_sum(log_rho, mask, dim=-1).clamp(-SAFETY_BOUND, SAFETY_BOUND)
    out = {
        "training_ppl": (-m_old).exp().mean(),
        "training_log_ppl": (-m_old).mean(),
        "kl": masked_mean(rollout_log_probs - old_log_probs, mask),
        "k3_kl": masked_mean(log_rho.exp() - log_rho - 1, mask),
        "rollout_ppl": (-m_rollout).exp().mean(),
        "rollout_log_ppl": (-m_rollout).mean(),
        "log_ppl_diff": log_ppl_diff.mean(),
        "log_ppl_abs_diff": log_ppl_diff.abs().mean(),
        "log_ppl_diff_max": log_ppl_diff.max(),
        "log_ppl_diff_min": log_ppl_diff.min(),
        "ppl_ratio": log_ppl_diff.exp().mean(),
        "chi2_token": masked_mean(rho_token.square(), mask) - 1.0,
        "chi2_seq": (2.0 * log_rho_seq).exp().mean() - 1.0,
    }
    return {k: float(v) for k, v in out.items()}


__all__ = ["SAFETY_BOUND", "offpolicy_metrics", "probs_diff_metrics"]
