"""How a :class:`~rlkit.distributed.group.WorkerGroup` hands data to its ranks and gathers the answers.

Modes (every mode calls every rank, because the methods are collectives over the process group):

* **all ranks** (``call_all``): the same arguments to each rank; a list of answers, rank order.
* **rank 0** (``call_rank0``): the same arguments to each rank; rank 0's answer.
* **split and gather** (``split_gather``): :func:`split_batch` pads the batch to a multiple of the
  data-parallel size with copies of its first rows and cuts it in equal contiguous parts (equal
  parts keep every rank's number of forward passes equal); :func:`gather` concatenates the
  answers in rank order and drops the padding rows.
* **update** (``update_actor`` / ``update_critic``): each rank's share of every global mini-batch,
  from :func:`rlkit.training.rank_worker.update_shards`.
* **prompts** (``generate``): :func:`split_to_leaders` gives each engine (the first rank of each
  TP group; with ``hf`` every rank is its own group) a contiguous run of prompts (sizes differing
  by at most one, possibly none) and the other ranks none; answers concatenate in rank order.

>>> import torch
>>> from rlkit.datasets import RolloutBatch
>>> from rlkit.distributed.dispatch import split_batch, gather
>>> parts, pad = split_batch(RolloutBatch({"x": torch.arange(5)}), 2)
>>> [p["x"].tolist() for p in parts], pad
([[0, 1, 2], [3, 4, 0]], 1)
>>> gather([p["x"] * 10 for p in parts], pad).tolist()  # what each rank computed, back in order
[0, 10, 20, 30, 40]
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rlkit.datasets.batch import RolloutBatch

__all__ = ["split_batch", "gather", "split_list", "split_to_leaders"]


def split_batch(batch: RolloutBatch, dp: int) -> tuple[list[RolloutBatch], int]:
    """``dp`` equal contiguous parts of ``batch`` padded to a multiple of ``dp``, and the pad count."""
    padded, pad = batch.pad_to_multiple(dp)
    return padded.chunk(dp), pad


def gather(results: Sequence[Any], pad: int) -> Any:
    """Concatenate per-rank answers (tensors, dicts of tensors or RolloutBatches with rows first) and
    drop the last ``pad`` rows (the padding :func:`split_batch` added)."""
    first = results[0]
    if isinstance(first, RolloutBatch):
        out = RolloutBatch.concat(results)
        return out.unpad() if RolloutBatch.PAD_COLUMN in out.columns else out.select(range(len(out) - pad))
    if isinstance(first, torch.Tensor):
        out = torch.cat(list(results))
        return out[: out.shape[0] - pad]
    if isinstance(first, dict):
        return {k: gather([r[k] for r in results], pad) for k in first}
    raise TypeError(f"cannot gather per-rank answers of type {type(first).__name__} (tensor, dict of tensors or "
                    "RolloutBatch)")


def split_list(items: Sequence[Any], k: int) -> list[list[Any]]:
    """``k`` contiguous runs of ``items``, the first ``len % k`` one longer.

    >>> from rlkit.distributed.dispatch import split_list
    >>> split_list([1, 2, 3, 4, 5], 2), split_list([1], 3)
    ([[1, 2, 3], [4, 5]], [[1], [], []])
    """
    n, out, start = len(items), [], 0
    for i in range(k):
        size = n // k + (1 if i < n % k else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


def split_to_leaders(items: Sequence[Any], tp_groups: Sequence[Sequence[int]]) -> list[list[Any]]:
    """Per global rank, its prompts: group g's first rank gets the g-th of :func:`split_list`'s runs
    over the groups, every other rank an empty list. Concatenating the lists in rank order gives
    ``items`` back.

    >>> from rlkit.distributed.dispatch import split_to_leaders
    >>> split_to_leaders([1, 2, 3, 4, 5], [(0, 1), (2, 3)])  # two engines of TP 2
    [[1, 2, 3], [], [4, 5], []]
    >>> split_to_leaders([1, 2, 3], [(0,), (1,)])  # hf: every rank generates
    [[1, 2], [3]]
    """
    world = sum(len(g) for g in tp_groups)
    out: list[list[Any]] = [[] for _ in range(world)]
    for group, run in zip(tp_groups, split_list(items, len(tp_groups))):
        out[group[0]] = run
    return out
