"""Rollout engines behind one interface (``generate``, ``update_weights``, ``sleep``, ``wake_up``,
``shutdown``), selected by ``actor_rollout_ref.rollout.name``. Engine modules load lazily."""
from rlkit.rollout.base import (
    ROLLOUT_ENGINES,
    GenerationOutput,
    RolloutEngine,
    SamplingParams,
    get_rollout_class,
)

__all__ = ["ROLLOUT_ENGINES", "GenerationOutput", "RolloutEngine", "SamplingParams", "get_rollout_class"]
