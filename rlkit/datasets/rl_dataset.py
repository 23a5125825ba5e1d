"""Prompt dataset over verl-schema parquet files, and a resumable batch sampler.

:class:`RLDataset` reads parquet files with verl's row schema (see
:mod:`rlkit.datasets.gsm8k`) and turns each row's chat messages into prompt
token ids with the tokenizer's chat template. :class:`PromptSampler` yields
deterministic, resumable batches of row indices.
"""
from __future__ import annotations

import logging
import operator
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["RLDataset", "PromptSampler", "PromptTooLongError", "TRUNCATION_MODES"]

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("error", "left", "right", "middle")
_SCHEMA_HELP = (
    "expected verl's schema: data_source (str), prompt (list of {role, content}), ability (str), "
    "reward_model ({style, ground_truth}), extra_info (struct, optional)"
)
_ENCODE_CHUNK = 1024


class PromptTooLongError(RuntimeError):
    """A prompt is longer than ``max_prompt_length`` with ``truncation="error"``."""


def _as_id_list(encoded: Any) -> list[int]:
    """Normalise what a tokenizer returns (list, BatchEncoding/dict, tensor, array) to ``list[int]``."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):  # a batch of one
        if len(encoded) != 1:
            raise ValueError(f"expected the ids of one prompt, got a batch of {len(encoded)}")
        encoded = list(encoded[0])
    return [int(t) for t in encoded]


def _truncate(ids: list[int], max_len: int, mode: str) -> list[int]:
    if mode == "left":
        return ids[-max_len:]
    if mode == "right":
        return ids[:max_len]
    if mode == "middle":
        left = max_len // 2
        right = max_len - left
        return ids[:left] + (ids[-right:] if right > 0 else [])
    raise AssertionError(mode)


class RLDataset:
    """Prompts from one or more verl-schema parquet files (concatenated in order).

    Args:
        files: a parquet path or a list of them (``~`` is expanded).
        tokenizer: a Hugging Face tokenizer.
        prompt_key: column holding the chat messages (a list of
            ``{"role", "content"}``; a plain string is treated as one user message).
        max_prompt_length: maximum prompt length in tokens.
        truncation: what to do with longer prompts, as in verl: ``"error"``
            (raise :class:`PromptTooLongError`), ``"left"`` (keep the last
            tokens), ``"right"`` (keep the first tokens), ``"middle"`` (keep
            ``max//2`` first and ``max - max//2`` last tokens).
        filter_overlong_prompts: drop rows whose prompt is longer than
            ``max_prompt_length`` (tokenizes every row up front; the number
            dropped is logged and kept in :attr:`num_filtered`).
        apply_chat_template: render messages with the tokenizer's chat
            template (``add_generation_prompt=True``). If False, or if the
            tokenizer has no chat template, the message contents are joined
            with ``"\\n"`` and encoded as plain text (with the tokenizer's
            special tokens, e.g. BOS).
        chat_template_kwargs: extra keyword arguments for ``apply_chat_template``.
        max_samples: if > 0 and fewer than the rows of the concatenated files,
            keep ``max_samples`` of them (before filtering), as verl's
            ``data.train_max_samples`` / ``data.val_max_samples`` do; -1 keeps all.
            With ``shuffle`` (verl's ``data.shuffle``, on by default) they are a
            random subset drawn as verl's ``RLHFDataset`` draws it:
            ``numpy.random.default_rng(seed).choice(total, max_samples,
            replace=False)``, in the order drawn (``seed=None``: unseeded, a
            different subset each time, as verl with ``data.seed=null``); without
            ``shuffle``, the first ``max_samples`` rows.
        shuffle: draw the ``max_samples`` subset at random (see above); it does
            not reorder the dataset otherwise (:class:`PromptSampler` shuffles
            batches). Default True, rlkit's ``data.shuffle`` default.
        seed: seed of that draw (``data.seed``; rlkit's default 1, verl's null).

    Items are dicts: ``prompt_ids`` (``list[int]``, truncated if needed),
    ``prompt_text`` (the templated prompt; decoded from the truncated ids when
    truncation happened), ``messages``, ``data_source``, ``ground_truth``
    (``reward_model.ground_truth`` as ``str``), ``extra_info`` (dict) and
    ``index`` (the row's position in the concatenated files, before the
    ``max_samples`` subset and filtering).

    Tokenization is lazy and cached (the templated text is tokenized exactly
    like ``apply_chat_template(..., tokenize=True)``: render, then encode
    without extra special tokens).
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer: Any,
        prompt_key: str = "prompt",
        max_prompt_length: int = 1024,
        truncation: str = "error",
        filter_overlong_prompts: bool = False,
        apply_chat_template: bool = True,
        chat_template_kwargs: dict | None = None,
        max_samples: int = -1,
        shuffle: bool = True,
        seed: int | None = 1,
    ):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {list(TRUNCATION_MODES)}, got {truncation!r}")
        if not isinstance(max_prompt_length, int) or max_prompt_length <= 0:
            raise ValueError(f"max_prompt_length must be a positive int, got {max_prompt_length!r}")
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        self.files = [str(Path(f).expanduser()) for f in files]
        if not self.files:
            raise ValueError("RLDataset needs at least one parquet file")
        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.max_prompt_length = max_prompt_length
        self.truncation = truncation
        self.filter_overlong_prompts = filter_overlong_prompts
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.use_chat_template = bool(apply_chat_template) and bool(getattr(tokenizer, "chat_template", None))
        if apply_chat_template and not self.use_chat_template:
            logger.warning("RLDataset: tokenizer has no chat template; joining message contents as plain text")

        self._messages: list[list[dict[str, Any]]] = []
        self._data_sources: list[Any] = []
        self._ground_truths: list[str] = []
        self._extra_infos: list[dict[str, Any]] = []
        self._load()
        self.max_samples = int(max_samples)
        self.shuffle = bool(shuffle)
        self.seed = None if seed is None else int(seed)
        # row -> its position in the concatenated files (differs once a subset is drawn)
        self._source_rows: list[int] = list(range(len(self._messages)))
        total = len(self._messages)
        if 0 < self.max_samples < total:
            keep = self.subset_rows(total, self.max_samples, self.shuffle, self.seed)
            for rows in (self._messages, self._data_sources, self._ground_truths, self._extra_infos):
                rows[:] = [rows[i] for i in keep]
            self._source_rows = keep
            logger.info("RLDataset: kept %d of %d rows (%s)", self.max_samples, total,
                        f"random subset, seed {self.seed}" if self.shuffle else "the first ones")
        self._num_rows = len(self._messages)
        self._cache: dict[int, tuple[str, list[int]]] = {}  # row -> (templated text, untruncated ids)
        self._rows = list(range(self._num_rows))  # dataset position -> row
        self.num_filtered = 0

        if filter_overlong_prompts:
            lengths = self.prompt_lengths()
            self._rows = [r for r in range(self._num_rows) if lengths[r] <= max_prompt_length]
            self.num_filtered = self._num_rows - len(self._rows)
            if self.num_filtered:
                logger.warning(
                    "RLDataset: dropped %d of %d prompts longer than max_prompt_length=%d (filter_overlong_prompts=True)",
                    self.num_filtered, self._num_rows, max_prompt_length,
                )
            if not self._rows:
                raise ValueError(
                    f"filter_overlong_prompts removed all {self._num_rows} prompts "
                    f"(longest {max(lengths)} tokens, max_prompt_length={max_prompt_length})"
                )

    @staticmethod
    def subset_rows(total: int, max_samples: int, shuffle: bool, seed: int | None) -> list[int]:
        """The rows ``max_samples`` keeps out of ``total`` (``0 < max_samples < total``), in dataset
        order: verl's draw, ``default_rng(seed).choice(total, max_samples, replace=False)`` with
        ``shuffle``, else ``0 .. max_samples - 1``."""
        if not shuffle:
            return list(range(max_samples))
        import numpy as np

        rng = np.random.default_rng(seed) if seed is not None else np.random.default_rng()
        return [int(i) for i in rng.choice(total, size=max_samples, replace=False)]

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        import pyarrow.parquet as pq

        required = (self.prompt_key, "data_source", "reward_model")
        for file in self.files:
            path = Path(file)
            if not path.exists():
                raise FileNotFoundError(f"RLDataset: parquet file not found: {file}")
            if path.is_dir():
                raise IsADirectoryError(f"RLDataset: {file} is a folder; pass the parquet file(s) inside it")
            try:
                columns = pq.ParquetFile(file).schema_arrow.names
            except Exception as e:
                raise ValueError(f"RLDataset: cannot read {file} as parquet ({type(e).__name__}: {e})") from e
            missing = [c for c in required if c not in columns]
            if missing:
                hint = f" (prompt_key={self.prompt_key!r})" if self.prompt_key in missing else ""
                raise KeyError(
                    f"RLDataset: {file} has no column(s) {missing}{hint}; it has {columns}. {_SCHEMA_HELP}"
                )
            wanted = list(required) + (["extra_info"] if "extra_info" in columns else [])
            table = pq.read_table(file, columns=wanted)
            prompts = table.column(self.prompt_key).to_pylist()
            sources = table.column("data_source").to_pylist()
            rewards = table.column("reward_model").to_pylist()
            extras = table.column("extra_info").to_pylist() if "extra_info" in wanted else [None] * len(prompts)
            base = len(self._messages)
            for i, (prompt, source, reward, extra) in enumerate(zip(prompts, sources, rewards, extras)):
                where = f"{file}, row {i} (dataset row {base + i})"
                self._messages.append(self._parse_messages(prompt, where))
                if not isinstance(reward, dict) or reward.get("ground_truth") is None:
                    raise ValueError(f"RLDataset: {where}: reward_model has no ground_truth. {_SCHEMA_HELP}")
                self._data_sources.append(source)
                self._ground_truths.append(str(reward["ground_truth"]))
                self._extra_infos.append(dict(extra) if isinstance(extra, dict) else {})

    def _parse_messages(self, prompt: Any, where: str) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(
                f"RLDataset: {where}: column {self.prompt_key!r} must be a non-empty list of messages, "
                f"got {type(prompt).__name__}. {_SCHEMA_HELP}"
            )
        messages = []
        for m in prompt:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"RLDataset: {where}: each message needs 'role' and 'content', got {m!r}")
            messages.append({k: v for k, v in m.items() if v is not None})
        return messages

    # ------------------------------------------------------------------ tokenizing

    def _render(self, messages: list[dict[str, Any]]) -> str:
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
            )
            if not isinstance(text, str):
                raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
            return text
        return "\n".join(str(m["content"]) for m in messages)

    def _encode_rows(self, rows: Sequence[int]) -> None:
        todo = [r for r in rows if r not in self._cache]
        for start in range(0, len(todo), _ENCODE_CHUNK):
            chunk = todo[start : start + _ENCODE_CHUNK]
            texts = [self._render(self._messages[r]) for r in chunk]
            encoded = self.tokenizer(texts, add_special_tokens=not self.use_chat_template)
            ids_batch = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
            for r, text, ids in zip(chunk, texts, ids_batch):
                self._cache[r] = (text, [int(t) for t in ids])

    def _encoded(self, row: int) -> tuple[str, list[int]]:
        hit = self._cache.get(row)
        if hit is None:
            text = self._render(self._messages[row])
            ids = _as_id_list(self.tokenizer(text, add_special_tokens=not self.use_chat_template))
            hit = self._cache[row] = (text, ids)
        return hit

    def prompt_lengths(self) -> list[int]:
        """Untruncated prompt length of every row (tokenizes everything, in batches; cached)."""
        self._encode_rows(range(self._num_rows))
        return [len(self._cache[r][1]) for r in range(self._num_rows)]

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        i = operator.index(idx)
        n = len(self._rows)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"RLDataset index {idx} out of range for {n} prompts")
        row = self._rows[i]
        text, ids = self._encoded(row)
        if len(ids) > self.max_prompt_length:
            if self.truncation == "error":
                raise PromptTooLongError(
                    f"prompt of dataset row {self._source_rows[row]} is {len(ids)} tokens, longer than max_prompt_length="
                    f"{self.max_prompt_length}. Increase data.max_prompt_length, set data.truncation to "
                    f"'left', 'right' or 'middle', or set data.filter_overlong_prompts=True."
                )
            ids = _truncate(ids, self.max_prompt_length, self.truncation)
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        else:
            ids = list(ids)
        return {
            "prompt_ids": ids,
            "prompt_text": text,
            "messages": [dict(m) for m in self._messages[row]],
            "data_source": self._data_sources[row],
            "ground_truth": self._ground_truths[row],
            "extra_info": dict(self._extra_infos[row]),
            "index": self._source_rows[row],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (
            f"RLDataset({len(self)} prompts from {len(self.files)} file(s), max_prompt_length="
            f"{self.max_prompt_length}, truncation={self.truncation!r}, filtered={self.num_filtered})"
        )


class PromptSampler:
    """Deterministic, resumable batches of dataset indices.

    verl's order: one ``torch.Generator().manual_seed(seed)`` draws a ``torch.randperm`` per
    epoch, so a run with verl's ``data.seed`` and ``data.dataloader_num_workers`` sees verl's
    prompts at every step. verl's loader (torchdata's ``StatefulDataLoader``) draws two
    permutations per epoch when it has worker processes and uses the second; ``num_workers``
    (``data.dataloader_num_workers``) > 0 does the same, 0 uses each draw. ``shuffle=False``:
    ``0..n-1`` in order. :meth:`next_batch` returns the next batch and rolls over to the next
    epoch by itself. State:

    * ``epoch``: the epoch the next batch comes from (= epochs completed);
    * ``position``: how many batches of that epoch were already returned.

    ``state_dict()`` / ``load_state_dict()`` save and restore that state, so a
    resumed run gets exactly the batches the original run would have got.
    Iterating (``for batch in sampler``) yields the remaining batches of the
    current epoch (advancing the state); ``len(sampler)`` is
    :attr:`batches_per_epoch`.
    """

    ORDER = "verl"  # the state's name for this order; a state without one is from rlkit before it (seed + epoch)

    def __init__(self, dataset_len: int, batch_size: int, shuffle: bool = True, seed: int = 1, drop_last: bool = True,
                 num_workers: int = 0):
        dataset_len = operator.index(dataset_len)
        batch_size = operator.index(batch_size)
        if dataset_len <= 0:
            raise ValueError(f"PromptSampler: dataset_len must be positive, got {dataset_len}")
        if batch_size <= 0:
            raise ValueError(f"PromptSampler: batch_size must be positive, got {batch_size}")
        if drop_last and batch_size > dataset_len:
            raise ValueError(
                f"PromptSampler: batch_size={batch_size} is larger than the dataset ({dataset_len} prompts) "
                f"with drop_last=True, so no batch could ever be produced. Use a smaller batch size "
                f"(data.train_batch_size), more data, or drop_last=False."
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.draws_per_epoch = 2 if operator.index(num_workers) > 0 else 1
        self.order = self.ORDER
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order: list[int] = []

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.dataset_len // self.batch_size
        return -(-self.dataset_len // self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_order(self, epoch: int) -> list[int]:
        """The index order of ``epoch`` (a permutation of ``range(dataset_len)``)."""
        if not self.shuffle:
            return list(range(self.dataset_len))
        import torch

        gen = torch.Generator()
        if self.order != self.ORDER:  # resumed from an older rlkit's checkpoint: its order, seed + epoch
            gen.manual_seed(self.seed + epoch)
            return torch.randperm(self.dataset_len, generator=gen).tolist()
        gen.manual_seed(self.seed)
        for _ in range(epoch * self.draws_per_epoch + self.draws_per_epoch - 1):  # the draws before this epoch's
            torch.randperm(self.dataset_len, generator=gen)
        return torch.randperm(self.dataset_len, generator=gen).tolist()

    def _current_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            self._order = self.epoch_order(self.epoch)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> list[int]:
        order = self._current_order()
        start = self.position * self.batch_size
        batch = order[start : start + self.batch_size]
        self.position += 1
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dataset_len": self.dataset_len,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "order": self.order,
            "draws_per_epoch": self.draws_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mismatched = {
            key: (state[key], getattr(self, key))
            for key in ("seed", "batch_size", "dataset_len", "shuffle", "drop_last", "draws_per_epoch")
            if key in state and state[key] != getattr(self, key)
        }
        if "draws_per_epoch" in mismatched:
            mismatched["data.dataloader_num_workers (0 or not)"] = mismatched.pop("draws_per_epoch")
        if mismatched:
            detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"PromptSampler.load_state_dict: the saved sampler differs ({detail}); "
                             "a resumed run would not see the same batches")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"PromptSampler.load_state_dict: invalid epoch={epoch} / position={position} "
                             f"(batches_per_epoch={self.batches_per_epoch})")
        self.epoch, self.position = epoch, position
        self.order, self._order_epoch = state.get("order", "seed+epoch"), None

    def __repr__(self) -> str:
        return (
            f"PromptSampler(dataset_len={self.dataset_len}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch}, position={self.position})"
        )
