"""KL estimators, KL-coefficient controllers and the in-reward KL penalty.

Semantics follow verl (``core_algos.kl_penalty``, ``FixedKLController``,
``AdaptiveKLController``, ``ray_trainer.apply_kl_penalty``). The estimators approximate
``KL(pi || pi_ref)`` per token from log-probs of tokens sampled from ``pi``
(see J. Schulman, "Approximating KL Divergence", 2020, for k1/k2/k3).
"""
from __future__ import annotations

import torch

from .core import masked_mean

__all__ = [
    "KL_PENALTIES",
    "KL_CONTROLLER_TYPES",
    "kl_penalty",
    "FixedKLController",
    "AdaptiveKLController",
    "get_kl_controller",
    "apply_kl_penalty",
]

_BASE_PENALTIES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
KL_PENALTIES = _BASE_PENALTIES + tuple(name + "+" for name in _BASE_PENALTIES)


def kl_penalty(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_penalty: str = "kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference policy.

    Args:
        log_prob: ``(bs, response_length)`` log-probs under the policy ``pi``.
        ref_log_prob: ``(bs, response_length)`` log-probs under the reference ``pi_ref``.
        kl_penalty: estimator name, one of ``KL_PENALTIES``:

            * ``kl`` / ``k1``: ``logp - logp_ref`` (unbiased, high variance, can be < 0)
            * ``abs``: ``|logp - logp_ref|``
            * ``mse`` / ``k2``: ``0.5 * (logp - logp_ref)^2``
            * ``low_var_kl`` / ``k3``: ``exp(x) - x - 1`` with ``x = clamp(logp_ref - logp, -20, 20)``,
              result clamped to ``[-10, 10]`` (non-negative, low variance)
            * any of these with ``+`` (``k3+``, ``k1+`` ...): the same value, with the gradient of
              ``k2`` (straight-through: ``k2 - k2.detach() + value.detach()``), whose expected
              gradient is the KL's; verl's intent (fixed to work in verl PR #6058). ``k2+`` = ``k2``.

    Returns:
        ``(bs, response_length)`` per-token KL estimate (no masking applied).
    """
    if kl_penalty.endswith("+") and kl_penalty[:-1] in _BASE_PENALTIES:
        value = kl_penalty_fn(log_prob, ref_log_prob, kl_penalty[:-1])
        k2 = 0.5 * (log_prob - ref_log_prob).square()
        return k2 - k2.detach() + value.detach()  # forward: value; backward: d k2 = (logp - logp_ref) d logp
    if kl_penalty in ("kl", "k1"):
        return log_prob - ref_log_prob  # k1 = log pi - log pi_ref
    if kl_penalty == "abs":
        return (log_prob - ref_log_prob).abs()  # |log pi - log pi_ref|
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (log_prob - ref_log_prob).square()  # k2 = 1/2 (log pi - log pi_ref)^2
    if kl_penalty in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_log_prob - log_prob, min=-20.0, max=20.0)  # x = log(pi_ref / pi)
        ratio = torch.exp(kl)  # pi_ref / pi
        kld = ratio - kl - 1  # k3 = (pi_ref/pi) - log(pi_ref/pi) - 1 >= 0
        return torch.clamp(kld, min=-10.0, max=10.0)
    raise ValueError(f"unknown kl_penalty {kl_penalty!r}; valid: {', '.join(KL_PENALTIES)}")


class FixedKLController:
    """Constant KL coefficient.

    Attributes:
        value: the coefficient ``beta``.
    """

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept for interface parity with ``AdaptiveKLController``)."""

    def state_dict(self) -> dict:
        """Serializable state: ``{"value": beta}``."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), as in verl.

    After each batch::

        e    = clip(current_kl / target_kl - 1, -0.2, 0.2)   # proportional error
        beta = beta * (1 + e * n_steps / horizon)

    so ``beta`` grows when the measured KL is above target and shrinks when below.

    Attributes:
        value: current coefficient ``beta``.
        target: ``target_kl``.
        horizon: ``horizon``.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Update ``value`` from the KL measured over ``n_steps`` samples (e.g. the batch size)."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # e in [-0.2, 0.2]
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult  # beta <- beta (1 + e n / H)

    def state_dict(self) -> dict:
        """Serializable state: ``{"value", "target", "horizon"}``."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output (``target`` / ``horizon`` optional)."""
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = state.get("horizon", self.horizon)


KL_CONTROLLER_TYPES = ("fixed", "adaptive")


def get_kl_controller(type: str, kl_coef: float, target_kl: float = 0.1, horizon: int = 10000):
    """Build a KL controller.

    Args:
        type: ``"fixed"`` or ``"adaptive"``.
        kl_coef: (initial) coefficient.
        target_kl: target KL per sample (adaptive only, must be > 0).
        horizon: adaptation horizon in samples (adaptive only, must be > 0).

    Returns:
        ``FixedKLController`` or ``AdaptiveKLController``.
    """
    if type == "fixed":
        return FixedKLController(kl_coef)
    if type == "adaptive":
        if not target_kl > 0:
            raise ValueError(f"adaptive KL controller needs target_kl > 0, got {target_kl}")
        if not horizon > 0:
            raise ValueError(f"adaptive KL controller needs horizon > 0, got {horizon}")
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise ValueError(f"unknown kl_ctrl type {type!r}; valid: {', '.join(KL_CONTROLLER_TYPES)}")


@torch.no_grad()
def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_penalty: str = "kl",
) -> tuple[torch.Tensor, float]:
    """Subtract a per-token KL penalty from the task scores (PPO "KL in reward").

    Args:
        token_level_scores: ``(bs, response_length)`` task rewards.
        log_prob: ``(bs, response_length)`` rollout-policy log-probs.
        ref_log_prob: ``(bs, response_length)`` reference-policy log-probs.
        response_mask: ``(bs, response_length)``.
        kl_coef: ``beta`` (e.g. ``controller.value``).
        kl_penalty: estimator name (see ``kl_penalty``).

    Returns:
        ``token_level_rewards``: ``(bs, response_length)``, ``scores - beta * kl * mask``.
        ``current_kl``: Python float, the mean over sequences of each sequence's masked
        mean KL (feed it to ``controller.update(current_kl, n_steps=bs)``). A sequence
        with an empty mask counts as KL 0, like verl.
    """
    kld = kl_penalty_fn(log_prob, ref_log_prob, kl_penalty)
    kld = torch.where(response_mask.bool(), kld, torch.zeros_like(kld))  # kl * mask
    token_level_rewards = token_level_scores - kl_coef * kld  # r = s - beta * kl
    current_kl = masked_mean(kld, response_mask, dim=-1).mean()  # mean_i ( sum_t kl m / sum_t m )
    return token_level_rewards, current_kl.item()


# ``apply_kl_penalty`` has an argument named ``kl_penalty`` (verl's name), which shadows the function.
kl_penalty_fn = kl_penalty
