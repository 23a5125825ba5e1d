"""rlkit: notebook-first PPO / GRPO post-training of language models, verl-compatible.

>>> import rlkit
>>> cfg = rlkit.PPOConfig.from_overrides(["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=4"])
>>> cfg.data.train_batch_size, cfg.trainer.n_gpus_per_node
(8, 1)

``rlkit.Experiment(cfg).step()`` runs one PPO iteration (the README's quick start is complete).
``import rlkit`` is light: torch, transformers and the engines load on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "PPOConfig": ("rlkit.config", "PPOConfig"),
    "ConfigError": ("rlkit.config", "ConfigError"),
    "ParallelPlan": ("rlkit.parallel", "ParallelPlan"),
    "Experiment": ("rlkit.experiment", "Experiment"),
    "StepResult": ("rlkit.experiment", "StepResult"),
    "SGLangRollout": ("rlkit.rollout.sglang", "SGLangRollout"),
    "HFRollout": ("rlkit.rollout.hf", "HFRollout"),
}
_SUBMODULES = {"algos", "datasets", "rewards", "rollout", "training", "distributed", "diagnostics", "viz", "config",
               "experiment", "loggers"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"rlkit.{name}")
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")


def __dir__():
    return __all__
