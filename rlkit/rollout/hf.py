"""`hf` rollout engine: Hugging Face ``generate`` on the actor's own module.

The slow, dependable reference engine: it runs anywhere transformers runs (CPU included) and
shares the actor's parameters, so a weight sync is free. Per-token log-probs are those of the
full-vocabulary distribution ``softmax(logits / T)`` (raw softmax when greedy), the same quantity
the actor recomputes as old log-probs; top-k / top-p filtering shapes sampling but not these.
"""
from __future__ import annotations

from typing import Iterable

import torch

from rlkit.rollout.base import GenerationOutput, SamplingParams


class _RecordLogProbs:
    """Logits processor that keeps log p(sampled token) without storing all logits.

    ``generate`` calls processors once per step with the tokens so far; the token sampled at
    step t is visible at step t+1, so each call scores the previous step's distribution.
    Memory: one (batch, vocab) tensor instead of (batch, steps, vocab).
    """

    def __init__(self, temperature: float):
        self.temperature = temperature  # generate applies it after custom processors
        self.prev: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(B, steps) log-probs, given the tokens sampled at the final step."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, last_tokens[:, None]).squeeze(-1))
        self.prev = None
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(last_tokens.shape[0], 0)


class _Tick:
    """Logits processor that advances a progress bar once per generated token position."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.bar.update(1)
        return scores


class HFRollout:
    """Rollout engine on a transformers ``PreTrainedModel``.

    Args:
        module: the causal LM to sample from (normally the actor itself).
        pad_token_id: id used to left-pad prompts.
        eos_token_ids: ids that end a response (the tokenizer's eos, plus any extra stop ids).
        max_batch_size: split generation into chunks of at most this many prompts (memory).
    """

    name = "hf"
    progress = False  # a token-by-token progress bar per generate call (set by the worker)

    def __init__(self, module, pad_token_id: int, eos_token_ids: Iterable[int], max_batch_size: int | None = None):
        self.module = module
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.max_batch_size = max_batch_size
        self.awake = True

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        if not self.awake:
            raise RuntimeError("HFRollout is asleep; call wake_up() before generate()")
        if not prompt_ids:
            return GenerationOutput([], [], [])
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        chunk = max(1, (self.max_batch_size or len(prompt_ids) * sampling.n) // sampling.n)
        out = GenerationOutput([], [], [])
        for start in range(0, len(prompt_ids), chunk):
            part = self._generate(prompt_ids[start : start + chunk], sampling)
            out.response_ids += part.response_ids
            out.log_probs += part.log_probs
            out.finish_reasons += part.finish_reasons
        return out

    def _generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        from transformers import GenerationConfig, LogitsProcessorList

        # one row per sample (prompt-major), left-padded so generation starts in one column
        prompt_ids = [p for p in prompt_ids for _ in range(sampling.n)]
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, p in enumerate(prompt_ids):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        stop_ids = sorted(set(self.eos_token_ids) | set(sampling.stop_token_ids))
        greedy = sampling.greedy
        gen_cfg = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else (sampling.top_k if sampling.top_k > 0 else 0),
            eos_token_id=None if sampling.ignore_eos else (stop_ids or None),
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )
        recorder = _RecordLogProbs(1.0 if greedy else sampling.temperature)
        processors = [recorder]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sampling.max_new_tokens, desc=f"generate {len(prompt_ids)} responses", unit="tok",
                       leave=False, dynamic_ncols=True)
            processors.append(_Tick(bar))
        was_training = self.module.training
        self.module.eval()
        # generate() fills unset fields from the model's own generation_config (its eos, top_k=50,
        # repetition penalties, ...); swap in ours so exactly these settings apply
        model_gen_cfg = getattr(self.module, "generation_config", None)
        self.module.generation_config = gen_cfg
        try:
            seqs = self.module.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList(processors),
            )
        finally:
            self.module.generation_config = model_gen_cfg
            self.module.train(was_training)
            if bar is not None:
                bar.close()
        new = seqs[:, width:].cpu()  # (B*n, steps)
        lps = recorder.finish(seqs[:, -1]).cpu() if new.shape[1] else torch.zeros(new.shape)
        stops = set() if sampling.ignore_eos else set(stop_ids)
        out = GenerationOutput([], [], [])
        for row, row_lp in zip(new.tolist(), lps.tolist()):
            length, reason = len(row), "length"
            for j, tok in enumerate(row):
                if tok in stops:
                    length, reason = j + 1, "stop"
                    break
            out.response_ids.append(row[:length])
            out.log_probs.append(row_lp[:length])
            out.finish_reasons.append(reason)
        return out

    def update_weights(self, named_tensors) -> None:
        """Copy weights in; tensors that already are this module's parameters are skipped."""
        params = dict(self.module.named_parameters(remove_duplicate=False))  # tied weights too
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"HFRollout.update_weights: no parameter named {name!r}")
                if params[name].data_ptr() != tensor.data_ptr():
                    params[name].copy_(tensor)

    def sleep(self) -> None:
        """Nothing to free (the weights are the actor's); generate() refuses until wake_up()."""
        self.awake = False

    def wake_up(self, named_tensors=None) -> None:
        self.awake = True
        if named_tensors is not None:
            self.update_weights(named_tensors)

    def shutdown(self) -> None:
        self.module = None
