"""RL algorithm math: masked ops, advantage estimators, PPO losses, KL utilities and rollout-vs-trainer diagnostics.

Pure tensor functions (torch only), verl-compatible semantics. Shapes are
``(bs, response_length)`` unless stated otherwise.
"""
from .advantages import (
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
from .core import (
    LOSS_AGG_MODES,
    agg_loss,
    entropy_from_logits,
    token_logprobs,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from .kl import (
    KL_CONTROLLER_TYPES,
    KL_PENALTIES,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    get_kl_controller,
    kl_penalty,
)
from .losses import compute_entropy_loss, compute_policy_loss, compute_value_loss
from .mismatch import offpolicy_metrics, probs_diff_metrics

__all__ = [
    # core
    "LOSS_AGG_MODES",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "token_logprobs",
    "explained_variance",
    "agg_loss",
    # advantages
    "ADV_ESTIMATORS",
    "compute_gae",
    "compute_grpo_outcome_advantage",
    "compute_rloo_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "register_adv_estimator",
    "get_adv_estimator",
    "compute_advantage",
    "estimator_needs_critic",
    # losses
    "compute_policy_loss",
    "compute_value_loss",
    "compute_entropy_loss",
    # kl
    "KL_PENALTIES",
    "KL_CONTROLLER_TYPES",
    "kl_penalty",
    "FixedKLController",
    "AdaptiveKLController",
    "get_kl_controller",
    "apply_kl_penalty",
    # rollout vs trainer
    "probs_diff_metrics",
    "offpolicy_metrics",
]
