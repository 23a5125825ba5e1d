"""The one rollout-engine interface rlkit's trainer talks to.

An engine turns prompts (token ids) into sampled responses (token ids, per-token log-probs and a
finish reason each). Every engine returns the same :class:`GenerationOutput`, so the trainer
cannot tell ``hf`` from ``sglang``.

Order of outputs: prompt-major, samples of one prompt next to each other
(prompt 0 sample 0..n-1, prompt 1 sample 0..n-1, ...), like verl's ``repeat(n, interleave=True)``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Iterable, Protocol, runtime_checkable

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """What to sample. ``temperature == 0`` or ``do_sample=False`` means greedy."""

    max_new_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k filter (verl/SGLang convention)
    do_sample: bool = True
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens

    @property
    def greedy(self) -> bool:
        return (not self.do_sample) or self.temperature == 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationOutput:
    """Responses for ``len(prompts) * n`` samples, prompt-major.

    response_ids[i]:  list[int], the sampled tokens (eos included when it stopped on eos)
    log_probs[i]:     list[float], log p(token) under the sampling distribution, same length
    finish_reasons[i]: "stop" (hit a stop token) or "length" (hit max_new_tokens)
    """

    response_ids: list[list[int]]
    log_probs: list[list[float]]
    finish_reasons: list[str]

    def __post_init__(self):
        if not (len(self.response_ids) == len(self.log_probs) == len(self.finish_reasons)):
            raise ValueError("response_ids, log_probs and finish_reasons must have the same length")
        for i, (ids, lps) in enumerate(zip(self.response_ids, self.log_probs)):
            if len(ids) != len(lps):
                raise ValueError(f"sample {i}: {len(ids)} tokens but {len(lps)} log-probs")

    def __len__(self) -> int:
        return len(self.response_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generation engine."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]]) -> None: ...

    def sleep(self) -> None:
        """Give GPU memory back to training (KV cache, and weights where the engine owns a copy)."""

    def wake_up(self, named_tensors=None) -> None:
        """Take memory back; engines whose weights were freed require ``named_tensors`` to reload."""

    def shutdown(self) -> None: ...


# name -> "module:Class"; modules are imported only when the engine is selected, so choosing
# `hf` never imports sglang.
ROLLOUT_ENGINES: dict[str, str] = {
    "hf": "rlkit.rollout.hf:HFRollout",
    "sglang": "rlkit.rollout.sglang:SGLangRollout",
}


def get_rollout_class(name: str):
    """Look up an engine class by ``actor_rollout_ref.rollout.name``."""
    if name not in ROLLOUT_ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(sorted(ROLLOUT_ENGINES))}")
    module_name, cls_name = ROLLOUT_ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)
