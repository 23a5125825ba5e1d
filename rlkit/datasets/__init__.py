"""Datasets: GSM8K preprocessing and the verl-schema prompt dataset.

Everything is imported lazily, so ``import rlkit.datasets`` does not pull in
pandas / pyarrow / torch:

* :func:`gsm8k` (``rlkit.datasets.gsm8k``; the module itself is callable)
* :class:`RLDataset`, :class:`PromptSampler` (``rlkit.datasets.rl_dataset``)
* :class:`RolloutBatch` (``rlkit.datasets.batch``): tensors + per-row columns + meta of one
  PPO step, with chunk / concat / select / repeat / pad for data-parallel ranks
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["gsm8k", "RLDataset", "PromptSampler", "DatasetUnavailableError", "RolloutBatch"]

_LAZY = {
    "gsm8k": ("gsm8k", None),  # the callable module
    "DatasetUnavailableError": ("gsm8k", "DatasetUnavailableError"),
    "RLDataset": ("rl_dataset", "RLDataset"),
    "PromptSampler": ("rl_dataset", "PromptSampler"),
    "RolloutBatch": ("batch", "RolloutBatch"),
}

if TYPE_CHECKING:  # pragma: no cover
    from . import gsm8k
    from .gsm8k import DatasetUnavailableError
    from .batch import RolloutBatch
    from .rl_dataset import PromptSampler, RLDataset


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY))
