"""PPO policy loss (clipped + dual clip), clipped value loss and entropy bonus.

Semantics follow verl's ``core_algos`` (``compute_policy_loss`` "vanilla",
``compute_value_loss``, ``compute_entropy_loss``). Metrics are returned as plain Python
floats so callers can log them directly.
"""
from __future__ import annotations

import torch

from .core import agg_loss, entropy_from_logits, masked_mean

__all__ = ["compute_policy_loss", "compute_value_loss", "compute_entropy_loss"]


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate loss with dual clipping for negative advantages (aggregated by
    :func:`~rlkit.algos.core.agg_loss` with ``loss_agg_mode`` and ``loss_scale_factor``).

    Per token, with ``r = exp(clamp(logp - logp_old, -20, 20))``::

        L1 = -A * r
        L2 = -A * clamp(r, 1 - clip_ratio_low, 1 + clip_ratio_high)
        Lc = max(L1, L2)                          # standard PPO clip
        L3 = -A * clip_ratio_c                    # dual clip (Ye et al. 2020)
        L  = min(L3, Lc) if A < 0 else Lc         # bound the loss when A < 0 and r >> 1

    Args:
        old_log_prob: ``(bs, response_length)`` log-probs of the behaviour policy.
        log_prob: ``(bs, response_length)`` log-probs of the current policy (carries grad).
        advantages: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        clip_ratio_low / clip_ratio_high: lower / upper clip range (decoupled, DAPO style).
        clip_ratio_c: dual-clip constant, must be > 1.
        loss_agg_mode: see ``agg_loss``.

    Returns:
        ``loss``: scalar tensor.
        ``metrics``: detached 0-d tensors (``float()`` reads one; left on the device, a loop over
        micro-batches waits for the device once, not per metric) ``pg_clipfrac`` (fraction of tokens where the clipped
        term is active: ``L2 > L1``), ``ppo_kl`` (masked mean of ``logp_old - logp``, the
        k1 estimate of KL(old || new)), ``pg_clipfrac_lower`` (fraction of tokens where
        the dual clip is active: ``A < 0`` and ``Lc > L3``).
    """
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1.0 for dual-clip PPO, got {clip_ratio_c}")

    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)  # log r, clamped for stability
    ratio = torch.exp(log_ratio)  # r = pi / pi_old
    ppo_kl = masked_mean(-log_ratio, response_mask)  # KL(old||new) ~ E[log pi_old - log pi]

    pg_losses1 = -advantages * ratio  # L1 = -A r
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)  # L2 = -A clip(r)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)  # Lc = max(L1, L2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask)

    pg_losses3 = -advantages * clip_ratio_c  # L3 = -A c
    clip_pg_losses2 = torch.minimum(pg_losses3, clip_pg_losses1)  # min(L3, Lc)
    negative = advantages < 0
    pg_clipfrac_lower = masked_mean((torch.gt(clip_pg_losses1, pg_losses3) & negative).float(), response_mask)

    pg_losses = torch.where(negative, clip_pg_losses2, clip_pg_losses1)  # dual clip only where A < 0
    loss = agg_loss(pg_losses, response_mask, loss_agg_mode, loss_scale_factor)
    metrics = {
        "pg_clipfrac": pg_clipfrac.detach(),
        "ppo_kl": ppo_kl.detach(),
        "pg_clipfrac_lower": pg_clipfrac_lower.detach(),
    }
    return loss, metrics


def compute_value_loss(
    vpreds: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float | None,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped value loss.

    Per token::

        V_clip = V_old + clamp(V - V_old, -c, c)
        L      = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Args:
        vpreds: ``(bs, response_length)`` current critic predictions ``V`` (carries grad).
        values: ``(bs, response_length)`` critic predictions at rollout time ``V_old``.
        returns: ``(bs, response_length)`` targets ``R``.
        response_mask: ``(bs, response_length)``.
        cliprange_value: ``c``; ``None`` disables clipping (plain 0.5 * MSE).
        loss_agg_mode: see ``agg_loss``; the 0.5 is applied after aggregation.

    Returns:
        ``loss``: scalar tensor.
        ``metrics``: detached 0-d tensors ``vf_clipfrac`` (fraction of tokens where the clipped
        error is the larger one) and ``vpred_mean`` (masked mean of ``vpreds``).
    """
    if cliprange_value is None:
        vpredclipped = vpreds
    else:
        # V_clip = V_old + clamp(V - V_old, -c, c)
        vpredclipped = values + torch.clamp(vpreds - values, -cliprange_value, cliprange_value)
    vf_losses1 = (vpreds - returns) ** 2  # (V - R)^2
    vf_losses2 = (vpredclipped - returns) ** 2  # (V_clip - R)^2
    clipped_vf_losses = torch.maximum(vf_losses1, vf_losses2)  # pessimistic of the two
    vf_loss = 0.5 * agg_loss(clipped_vf_losses, response_mask, loss_agg_mode)
    vf_clipfrac = masked_mean(torch.gt(vf_losses2, vf_losses1).float(), response_mask)
    metrics = {
        "vf_clipfrac": vf_clipfrac.detach(),
        "vpred_mean": masked_mean(vpreds.detach(), response_mask),
    }
    return vf_loss, metrics


def compute_entropy_loss(
    logits: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = "token-mean"
) -> torch.Tensor:
    """Aggregated policy entropy (the *bonus*: the caller subtracts ``coef * entropy``).

    Args:
        logits: ``(bs, response_length, V)``.
        response_mask: ``(bs, response_length)``.
        loss_agg_mode: see ``agg_loss``.

    Returns:
        Scalar tensor ``agg(H_t)``, ``H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_{t,v}``.
    """
    entropy = entropy_from_logits(logits)  # (bs, response_length)
    return agg_loss(entropy, response_mask, loss_agg_mode)
