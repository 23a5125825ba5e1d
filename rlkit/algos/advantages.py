"""Advantage estimators (GAE, GRPO, RLOO, REINFORCE++) and their registry.

All estimators take per-token rewards ``token_level_rewards`` of shape
``(bs, response_length)`` (outcome rewards usually sit on the last valid token) and a
``response_mask`` of the same shape, and return ``(advantages, returns)``, both
``(bs, response_length)`` and exactly zero where ``response_mask`` is 0.

Semantics follow verl's ``core_algos`` (``compute_gae_advantage_return``,
``compute_grpo_outcome_advantage``, ``compute_rloo_outcome_advantage``,
``compute_reinforce_plus_plus_outcome_advantage``). The only intentional difference:
verl leaves arbitrary values at masked-out positions; here they are set to 0.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable

import torch

from .core import masked_whiten

__all__ = [
    "ADV_ESTIMATORS",
    "compute_gae",
    "discounted_reverse_sum",
    "compute_grpo_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "register_adv_estimator",
    "get_adv_estimator",
    "compute_advantage",
    "estimator_needs_critic",
]


def _zero_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is set, exactly 0 elsewhere (shapes ``(bs, T)``)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _group_ids(index, bs: int, device) -> tuple[torch.Tensor, int]:
    """Map the per-sample group uids to dense integer ids.

    Args:
        index: length ``bs`` list / tuple / numpy array / tensor of hashable uids
            (e.g. the prompt uid shared by the ``n`` samples of one prompt).

    Returns:
        ``(gid, num_groups)`` with ``gid`` a ``(bs,)`` long tensor in ``[0, num_groups)``,
        groups numbered by first appearance.
    """
    if index is None:
        raise ValueError("this advantage estimator groups samples by prompt and needs index= (one uid per sample)")
    keys = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    if len(keys) != bs:
        raise ValueError(f"index has {len(keys)} entries but the batch has {bs} sequences")
    dense: dict[Hashable, int] = {}
    ids = [dense.setdefault(k, len(dense)) for k in keys]
    return torch.tensor(ids, dtype=torch.long, device=device), len(dense)


def _group_mean_std(scores: torch.Tensor, gid: torch.Tensor, num_groups: int):
    """Per-group mean, unbiased std and size of ``scores``.

    Args:
        scores: ``(bs,)``.
        gid: ``(bs,)`` dense group ids.

    Returns:
        ``(mean, std, count)`` each ``(num_groups,)``; groups of size 1 get
        ``mean = 0`` and ``std = 1`` (verl's convention: a lone sample keeps its score).
    """
    zeros = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device)
    count = zeros.index_add(0, gid, torch.ones_like(scores))  # n_g
    mean = zeros.index_add(0, gid, scores) / count  # mu_g = sum_i s_i / n_g
    sq_dev = zeros.index_add(0, gid, (scores - mean[gid]) ** 2)  # sum_i (s_i - mu_g)^2
    # unbiased std (torch.std default): sqrt(sum (s - mu)^2 / (n - 1))
    std = torch.sqrt(sq_dev / (count - 1).clamp(min=1))
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean, std, count


GAE_BLOCK = 64  # tokens per block of discounted_reverse_sum: one (B, B) matmul inside a block, a carry across


def discounted_reverse_sum(x: torch.Tensor, discount: float, block: int = GAE_BLOCK) -> torch.Tensor:
    """``y_t = sum_{k >= t} discount^(k - t) * x_k`` along the last dimension, without a loop over tokens.

    Inside a block of ``block`` tokens it is one matmul with the upper-triangular ``D[k, t] = discount^(k - t)``
    (``k >= t``); across blocks, from the last one back, ``y_t += discount^(block - t) * y_<first token of the next
    block>`` (a loop over ``T / block`` blocks). The sum runs in float64 (exact powers, no TF32), the result comes
    back in ``x``'s dtype.

    Args:
        x: ``(bs, T)``.
        discount: the per-token factor (``gamma * lam`` for GAE), in ``[0, 1]``.

    Returns:
        ``(bs, T)``.

    >>> import torch
    >>> from rlkit.algos.advantages import discounted_reverse_sum
    >>> discounted_reverse_sum(torch.tensor([[1.0, 2.0, 4.0]]), 0.5, block=2).tolist()  # 1 + 0.5*2 + 0.25*4, 2 + 0.5*4, 4
    [[3.0, 4.0, 4.0]]
    """
    bs, length = x.shape
    xp = torch.nn.functional.pad(x.to(torch.float64), (0, (-length) % block)).view(bs, -1, block)  # (bs, nb, B)
    i = torch.arange(block, device=x.device, dtype=torch.float64)
    gap = i[:, None] - i[None, :]  # k - t: rows k (summed over), columns t
    base = torch.tensor(discount, dtype=torch.float64, device=x.device)
    d = torch.where(gap >= 0, base ** gap.clamp(min=0), 0.0)  # D[k, t] = discount^(k - t) for k >= t
    y = xp @ d  # within each block: y_t = sum_{k >= t in the block} discount^(k - t) x_k
    tail = base ** (block - i)  # discount^(distance from t to the next block's first token)
    carry = torch.zeros(bs, dtype=torch.float64, device=x.device)  # y at the first token of the next block
    for b in reversed(range(y.shape[1])):
        y[:, b] += carry[:, None] * tail
        carry = y[:, b, 0]
    return y.reshape(bs, -1)[:, :length].to(x.dtype)


@torch.no_grad()
def compute_gae(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (PPO with a critic).

    The backward recursion over the tokens where ``response_mask`` is 1 (masked-out tokens
    are skipped: they neither bootstrap a value nor reset the running advantage; the
    value after the last valid token is 0)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}   =  sum_{k >= t} (gamma * lam)^(k - t) delta_k

    computed without a loop over tokens: each row's valid tokens are moved to its front (a stable sort, so
    ``V_{t+1}`` is the next valid token's value), the deltas summed with :func:`discounted_reverse_sum`, and
    the result moved back.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        values: ``(bs, response_length)`` critic values ``V_t``.
        response_mask: ``(bs, response_length)``; needs at least 2 valid tokens in the
            batch (for the whitening).
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``advantages``: ``(bs, response_length)``, the raw GAE whitened over the mask.
        ``returns``: ``(bs, response_length)``, raw GAE + values (the critic target).
        Both are 0 outside the mask.
    """
    dtype = torch.result_type(token_level_rewards, values)
    mask = response_mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # valid tokens first, in their order
    valid = mask.gather(1, order)  # (bs, T): a prefix of each row
    rewards = token_level_rewards.to(dtype).gather(1, order)
    vals = torch.where(valid, values.to(dtype).gather(1, order), torch.zeros((), dtype=dtype, device=values.device))
    next_vals = torch.nn.functional.pad(vals[:, 1:], (0, 1))  # V_{t+1} of the next valid token, 0 after the last
    delta = torch.where(valid, rewards + gamma * next_vals - vals, torch.zeros_like(vals))  # r_t + g V_{t+1} - V_t
    raw = torch.empty_like(delta).scatter_(1, order, discounted_reverse_sum(delta, gamma * lam))  # back in place

    returns = raw + values.to(dtype)  # R_t = A_t + V_t
    advantages = masked_whiten(raw, mask)
    return _zero_outside(advantages, mask), _zero_outside(returns, mask)


@torch.no_grad()
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Iterable[Hashable],
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage: score normalised within each group of samples.

    ``s_i = sum_t r_{i,t}`` is the sequence score. With ``g`` the group of sample ``i``::

        A_i = (s_i - mean_g) / (std_g + eps)    if norm_adv_by_std_in_grpo
        A_i =  s_i - mean_g                     otherwise (Dr. GRPO)

    ``std_g`` is the unbiased (``n - 1``) standard deviation like ``torch.std``. A group
    with a single sample uses ``mean = 0``, ``std = 1``. ``A_i`` is broadcast to every
    valid token of sequence ``i``.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        index: ``bs`` hashable group uids (list, numpy array or tensor), order arbitrary.
        epsilon: added to the std.
        norm_adv_by_std_in_grpo: divide by the group std.

    Returns:
        ``(advantages, returns)``, both ``(bs, response_length)`` and equal, 0 outside the mask.
    """
    scores = token_level_rewards.sum(dim=-1)  # s_i, (bs,)
    gid, num_groups = _group_ids(index, scores.shape[0], scores.device)
    mean, std, _ = _group_mean_std(scores, gid, num_groups)
    adv = scores - mean[gid]  # s_i - mu_g
    if norm_adv_by_std_in_grpo:
        adv = adv / (std[gid] + epsilon)  # (s_i - mu_g) / (sigma_g + eps)
    adv = _zero_outside(adv.unsqueeze(-1).expand_as(token_level_rewards), response_mask)
    return adv, adv.clone()


@torch.no_grad()
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Iterable[Hashable],
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO (REINFORCE leave-one-out) outcome advantage.

    For a group of ``n > 1`` samples with mean score ``mu``, the baseline of sample ``i``
    is the mean of the *other* ``n - 1`` scores::

        A_i = s_i - (n mu - s_i) / (n - 1) = s_i * n / (n - 1) - mu * n / (n - 1)

    A group with a single sample keeps its raw score ``A_i = s_i``.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        index: ``bs`` hashable group uids.
        epsilon: unused (kept for signature parity with GRPO, like verl).

    Returns:
        ``(advantages, returns)``, both ``(bs, response_length)`` and equal, 0 outside the mask.
    """
    del epsilon
    scores = token_level_rewards.sum(dim=-1)  # s_i, (bs,)
    gid, num_groups = _group_ids(index, scores.shape[0], scores.device)
    mean, _, count = _group_mean_std(scores, gid, num_groups)
    n = count[gid]
    factor = n / (n - 1).clamp(min=1)  # n / (n - 1)
    loo = scores * factor - mean[gid] * factor  # s n/(n-1) - mu n/(n-1)
    adv = torch.where(n > 1, loo, scores)
    adv = _zero_outside(adv.unsqueeze(-1).expand_as(token_level_rewards), response_mask)
    return adv, adv.clone()


@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted return-to-go, whitened over the whole batch.

    ``G_t = r_t + gamma * G_{t+1}``, where the running return is reset to 0 at every
    masked-out position (so nothing flows back across padding / the end of a response).

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``; needs at least 2 valid tokens in the batch.
        gamma: discount factor.

    Returns:
        ``advantages``: ``(bs, response_length)``, ``G`` whitened over the mask.
        ``returns``: ``(bs, response_length)``, the returns-to-go ``G``.
        Both are 0 outside the mask.
    """
    mask = response_mask.bool()
    returns = torch.zeros_like(token_level_rewards)
    running = torch.zeros_like(token_level_rewards[:, 0])
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t] + gamma * running  # G_t = r_t + g G_{t+1}
        returns[:, t] = running
        running = torch.where(mask[:, t], running, torch.zeros_like(running))  # reset outside the mask
    advantages = masked_whiten(returns, mask)
    return _zero_outside(advantages, mask), _zero_outside(returns, mask)


# --------------------------------------------------------------------------- registry

AdvEstimator = Callable[..., tuple[torch.Tensor, torch.Tensor]]

#: name -> estimator with the uniform signature
#: ``fn(token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0,
#: norm_adv_by_std_in_grpo=True) -> (advantages, returns)``.
ADV_ESTIMATORS: dict[str, AdvEstimator] = {}
_NEEDS_CRITIC: set[str] = set()


def register_adv_estimator(name: str, *, needs_critic: bool = False):
    """Decorator registering an estimator under ``name`` in ``ADV_ESTIMATORS``.

    The function must have the uniform signature
    ``fn(token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0,
    lam=1.0, norm_adv_by_std_in_grpo=True) -> (advantages, returns)`` with all tensors
    ``(bs, response_length)``. ``needs_critic=True`` marks estimators that consume critic
    ``values`` (see ``estimator_needs_critic``).

    Raises:
        ValueError: if ``name`` is already registered to a different function.
    """

    def decorator(fn: AdvEstimator) -> AdvEstimator:
        if name in ADV_ESTIMATORS and ADV_ESTIMATORS[name] is not fn:
            raise ValueError(f"adv_estimator {name!r} is already registered to {ADV_ESTIMATORS[name].__name__}")
        ADV_ESTIMATORS[name] = fn
        if needs_critic:
            _NEEDS_CRITIC.add(name)
        else:
            _NEEDS_CRITIC.discard(name)
        return fn

    return decorator


def get_adv_estimator(name: str) -> AdvEstimator:
    """Look up a registered estimator by name.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    try:
        return ADV_ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown adv_estimator {name!r}; valid: {', '.join(ADV_ESTIMATORS)}") from None


def compute_advantage(name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, **kw):
    """Run the estimator ``name`` on ``(bs, response_length)`` rewards/mask.

    ``kw`` are the uniform keyword arguments (``values``, ``index``, ``gamma``, ``lam``,
    ``norm_adv_by_std_in_grpo``). Returns ``(advantages, returns)``, each
    ``(bs, response_length)``.
    """
    return get_adv_estimator(name)(token_level_rewards, response_mask, **kw)


def estimator_needs_critic(name: str) -> bool:
    """``True`` if the estimator ``name`` needs critic values (only ``gae`` among the built-ins).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    get_adv_estimator(name)
    return name in _NEEDS_CRITIC


@register_adv_estimator("gae", needs_critic=True)
def _gae_estimator(
    token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True
):
    """Registry adapter for :func:`compute_gae` (requires ``values``, ``(bs, response_length)``)."""
    if values is None:
        raise ValueError("adv_estimator 'gae' needs critic values: pass values= of shape (bs, response_length)")
    return compute_gae(token_level_rewards, values, response_mask, gamma=gamma, lam=lam)


@register_adv_estimator("grpo")
def _grpo_estimator(
    token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True
):
    """Registry adapter for :func:`compute_grpo_outcome_advantage` (requires ``index``)."""
    if index is None:
        raise ValueError("adv_estimator 'grpo' needs index= (one group uid per sequence)")
    return compute_grpo_outcome_advantage(
        token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
    )


@register_adv_estimator("rloo")
def _rloo_estimator(
    token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True
):
    """Registry adapter for :func:`compute_rloo_outcome_advantage` (requires ``index``)."""
    if index is None:
        raise ValueError("adv_estimator 'rloo' needs index= (one group uid per sequence)")
    return compute_rloo_outcome_advantage(token_level_rewards, response_mask, index)


@register_adv_estimator("reinforce_plus_plus")
def _reinforce_pp_estimator(
    token_level_rewards, response_mask, *, values=None, index=None, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True
):
    """Registry adapter for :func:`compute_reinforce_plus_plus_outcome_advantage`."""
    return compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, gamma=gamma)
