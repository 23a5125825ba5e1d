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


class RankGroupEngine(RolloutEngine, Protocol):
    """An engine whose tensor-parallel ranks sit beside several training ranks (SGLang in rank workers).

    Every training rank of the TP group turns its bucket of unsharded weights into a payload the
    engine's TP rank on the same GPU can read (:meth:`serialize_bucket`, a classmethod: ranks that
    launched no engine call it too); the group's first rank gathers the payloads, in TP-rank order,
    and hands them to its engine (:meth:`load_rank_payloads`).
    """

    @classmethod
    def serialize_bucket(cls, bucket: list[tuple[str, "object"]]) -> list[tuple[str, "object"]]: ...

    def load_rank_payloads(self, payloads: list[list[tuple[str, "object"]]]) -> None: ...

    def flush_cache(self) -> None: ...

    def resume_weights(self) -> None: ...

    def resume_kv_cache(self) -> None: ...


def hf_param_name(name: str) -> str:
    """Map a training-side parameter name to the checkpoint name SGLang's loader expects."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module."):
        name = name.replace(wrapper, "")
    return name


def weight_buckets(named_tensors: Iterable[tuple[str, "torch.Tensor"]], bucket_bytes: int, dtype,
                   device):
    """Yield lists of (name, tensor) of at most ``bucket_bytes`` each (a bigger tensor goes alone),
    cast to the engine's ``dtype`` on ``device``, names as the checkpoint has them (:func:`hf_param_name`).

    ``named_tensors`` is consumed lazily: fed a generator that unshards one FSDP parameter at a time
    (:func:`rlkit.training.fsdp.full_tensors`), it holds at most one bucket and one tensor, never the
    whole model.
    """
    bucket, size = [], 0
    for name, t in named_tensors:
        t = t.detach().to(device=device, dtype=dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((hf_param_name(name), t))
        size += nbytes
    if bucket:
        yield bucket


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
