"""Batch layout by sequence length: balanced partitions, token-budget micro-batches, padding removal.

Three pieces, pure data layout (torch tensors in, index tensors out; no model):

* :func:`balanced_partitions` - split items with lengths into ``k`` groups of near-equal total length
  (the largest-differencing method of Karmarkar and Karp, as verl's ``get_seqlen_balanced_partitions``);
  ``equal_size=True`` also gives every group the same number of items (``trainer.balance_batch``
  spreads a step's rows over data-parallel ranks this way).
* :func:`token_budget_groups` - micro-batches that each hold at most ``budget`` tokens
  (``use_dynamic_bsz`` with ``ppo_max_token_len_per_gpu`` / ``log_prob_max_token_len_per_gpu``): as few
  groups as the budget allows, balanced by the same method.
* :class:`PackedLayout` - a padded ``(b, T)`` batch as one row of its ``N`` real tokens
  (``use_remove_padding``): where each token goes, the sequence boundaries ``cu_seqlens`` an
  attention kernel needs, and which packed positions predict the response tokens.

Partitions by hand: lengths 8, 7, 6, 5 into 2 groups of 2 give sums 13 and 13::

    >>> from rlkit.datasets.packing import balanced_partitions, token_budget_groups
    >>> sorted(sorted(g) for g in balanced_partitions([8, 7, 6, 5], 2, equal_size=True))
    [[0, 3], [1, 2]]

A budget of 10 tokens over lengths 6, 5, 4, 3 (18 tokens) needs 2 groups of 9::

    >>> sorted(sorted(g) for g in token_budget_groups([6, 5, 4, 3], budget=10))
    [[0, 3], [1, 2]]
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["balanced_partitions", "token_budget_groups", "PackedLayout", "balance_order"]


def balanced_partitions(lengths: Sequence[int], k: int, equal_size: bool = False) -> list[list[int]]:
    """Indices of ``lengths`` in ``k`` groups whose length sums are as equal as the method finds.

    Largest differencing (Karmarkar-Karp, k-way): every item starts as a partial solution of k
    groups (the item in one, the rest empty; with ``equal_size`` the items, sorted, are taken k at a
    time, one per group); repeatedly the two partial solutions with the largest spread (max sum -
    min sum) are merged, the heaviest group of one joined with the lightest of the other, until one
    solution is left. Deterministic: ties break on insertion order.

    Args:
        lengths: one non-negative length per item.
        k: number of groups, ``1 <= k <= len(lengths)``.
        equal_size: every group gets ``len(lengths) / k`` items (must divide).

    Returns ``k`` lists of item indices, each sorted ascending, the groups ordered by their smallest
    index.
    """
    n = len(lengths)
    if not 1 <= k <= n:
        raise ValueError(f"balanced_partitions: need 1 <= k <= {n} items, got k={k}")
    if equal_size and n % k:
        raise ValueError(f"balanced_partitions: equal_size needs the {n} items to split into {k} equal groups")
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    heap: list[tuple[int, int, list[tuple[int, list[int]]]]] = []  # (-spread, tiebreak, [(sum, items)] * k)
    counter = 0

    def push(groups: list[tuple[int, list[int]]]) -> None:
        nonlocal counter
        groups.sort(key=lambda g: (g[0], g[1]))  # lightest first
        heapq.heappush(heap, (-(groups[-1][0] - groups[0][0]), counter, groups))
        counter += 1

    step = k if equal_size else 1
    for start in range(0, n, step):
        items = order[start : start + step]
        groups = [(int(lengths[i]), [i]) for i in items] + [(0, []) for _ in range(k - len(items))]
        push(groups)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        # the heaviest group of a with the lightest of b, and so on
        merged = [(sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b))]
        push(merged)
    groups = [sorted(items) for _, items in heap[0][2]]
    return sorted(groups, key=lambda g: g[0] if g else math.inf)


def token_budget_groups(lengths: Sequence[int], budget: int, min_groups: int = 1) -> list[list[int]]:
    """Micro-batches of at most ``budget`` tokens each: the fewest groups (at least ``min_groups``, at
    least ``ceil(sum / budget)``) for which :func:`balanced_partitions` keeps every group within the
    budget. An item longer than ``budget`` is an error (it would need a micro-batch of its own that
    still does not fit). Groups are in order of their first item; items within a group ascending.
    """
    n = len(lengths)
    if n == 0:
        return []
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    longest = max(lengths)
    if longest > budget:
        raise ValueError(f"a sequence of {longest} tokens does not fit the token budget of {budget} per micro-batch: "
                         f"raise ppo_max_token_len_per_gpu / log_prob_max_token_len_per_gpu to >= {longest}")
    k = min(n, max(int(min_groups), math.ceil(sum(lengths) / budget)))
    while True:
        groups = balanced_partitions(lengths, k)
        if k == n or all(sum(lengths[i] for i in g) <= budget for g in groups):
            return groups
        k += 1


@dataclass
class PackedLayout:
    """One padded batch as a single packed row of its real tokens (``use_remove_padding``).

    Built from ``attention_mask`` (b, T) and the response width R (responses fill the last R columns):

    * ``token_index`` (N,): flat indices into the (b, T) batch of the real tokens, row by row, so
      ``x.flatten()[token_index]`` packs any (b, T) tensor (``pack``);
    * ``cu_seqlens`` (b + 1,) int32: where each row's tokens start and end in the packed row, and
      ``max_seqlen``: the longest row (what a variable-length attention kernel takes);
    * ``predict_index`` (M,): the packed positions whose outputs predict a real response token
      (position t predicts token t + 1), and ``response_slots`` (M,): the flat indices into (b, R)
      of those response tokens (``unpack_response`` scatters per-token results back, zeros elsewhere).

    >>> import torch
    >>> from rlkit.datasets.packing import PackedLayout
    >>> mask = torch.tensor([[0, 1, 1, 1, 0],   # prompt of 2 (one pad), response of 1 + a pad
    ...                      [1, 1, 1, 1, 1]])  # prompt of 3, response of 2
    >>> lay = PackedLayout.from_mask(mask, response_width=2)
    >>> lay.token_index.tolist(), lay.cu_seqlens.tolist(), lay.max_seqlen
    ([1, 2, 3, 5, 6, 7, 8, 9], [0, 3, 8], 5)
    >>> lay.predict_index.tolist(), lay.response_slots.tolist()
    ([1, 5, 6], [0, 2, 3])
    >>> lay.unpack_response(torch.tensor([10., 20., 30.])).tolist()
    [[10.0, 0.0], [20.0, 30.0]]
    """

    token_index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    predict_index: torch.Tensor
    response_slots: torch.Tensor
    shape: tuple[int, int]  # (b, R)

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, response_width: int) -> PackedLayout:
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be (b, T), got {tuple(attention_mask.shape)}")
        b, T = attention_mask.shape
        R = int(response_width)
        if not 0 < R < T:
            raise ValueError(f"response width {R} must be in [1, {T - 1}] for {T} columns (a prompt token first)")
        mask = attention_mask.bool()
        lens = mask.sum(1)
        if bool((lens == 0).any()):
            raise ValueError(f"rows {torch.nonzero(lens == 0).flatten().tolist()} have no tokens to pack")
        flat = mask.flatten()
        token_index = torch.nonzero(flat).flatten()
        packed_pos = torch.cumsum(flat.long(), 0) - 1  # packed position of each real flat token
        cu = torch.zeros(b + 1, dtype=torch.int32, device=mask.device)
        cu[1:] = torch.cumsum(lens, 0)
        # response token j of row i sits at column T - R + j; its predictor at column T - R + j - 1
        cols = torch.arange(T - R, T, device=mask.device)
        real = mask[:, T - R :] & mask[:, T - R - 1 : T - 1]
        rows = torch.arange(b, device=mask.device).unsqueeze(1) * T
        predictor_flat = (rows + cols - 1)[real]
        slots = (torch.arange(b, device=mask.device).unsqueeze(1) * R + torch.arange(R, device=mask.device))[real]
        return cls(token_index=token_index, cu_seqlens=cu, max_seqlen=int(lens.max()),
                   predict_index=packed_pos[predictor_flat], response_slots=slots, shape=(b, R))

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PackedLayout:
        """The layout's index tensors on ``device`` (:func:`rlkit.datasets.batch.to_device`): build it from
        a host mask (its nonzero and max need no wait for the GPU) and move it."""
        from rlkit.datasets.batch import to_device

        return dataclasses.replace(self, **{f: to_device(getattr(self, f), device, non_blocking)
                                            for f in ("token_index", "cu_seqlens", "predict_index", "response_slots")})

    @property
    def num_tokens(self) -> int:
        return int(self.token_index.numel())

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(b, T, ...) -> (1, N, ...): the real tokens of every row, one after another."""
        return x.flatten(0, 1)[self.token_index].unsqueeze(0)

    def response_targets(self, responses: torch.Tensor) -> torch.Tensor:
        """(b, R) response ids -> (M,) the ids the ``predict_index`` positions predict."""
        return responses.flatten()[self.response_slots]

    def unpack_response(self, values: torch.Tensor) -> torch.Tensor:
        """(M,) per response token -> (b, R), zeros where a row has no response token."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_put((self.response_slots,), values).view(self.shape)


def balance_order(seqlens: Sequence[int], dp: int,
                  mini_per_rank: int | None = None) -> tuple[list[int], dict[str, float]]:
    """A step's rows reordered so each data-parallel rank trains on about as many tokens (``trainer.balance_batch``).

    verl splits the rows into ``dp`` equal-count groups of near-equal token sums
    (:func:`balanced_partitions` with ``equal_size=True``) and gives group r to rank r, which cuts it
    into mini-batches of ``mini_per_rank`` rows in order. rlkit's update layout
    (:func:`rlkit.training.rank_worker.update_shards`) instead cuts global mini-batches of
    ``dp * mini_per_rank`` rows from the whole batch and gives rank r the r-th share of each; so the
    order returned here interleaves the groups mini-batch by mini-batch: global mini-batch m is
    ``group_0[m*q:(m+1)*q] + ... + group_{dp-1}[m*q:(m+1)*q]`` (q = ``mini_per_rank``; the last
    slice of each group may be shorter). Every rank then sees exactly verl's rows in verl's order.

    Args:
        seqlens: tokens of each row (prompt + response: ``attention_mask.sum(-1)``).
        dp: data-parallel ranks; must divide ``len(seqlens)``.
        mini_per_rank: rows per rank per optimizer step (``ppo_mini_batch_size * rollout.n / dp``);
            None: one mini-batch (the groups one after another, verl's reordered batch as such).

    Returns ``(order, metrics)``: the row indices in their new order, and verl's
    ``global_seqlen/*`` metrics: ``min``, ``max`` and ``minmax_diff`` of the token sums of the
    ``dp`` contiguous chunks of the original order (what each rank would have got unbalanced),
    ``balanced_min`` and ``balanced_max`` of the groups' sums, and ``mean`` = total tokens / ``dp``.

    Lengths 9, 8, 7, 6, 1, 2, 3, 4 over 2 ranks: rows 0-3 hold 30 tokens and rows 4-7 hold 10;
    groups {0, 3, 4, 7} and {1, 2, 5, 6} hold 20 each. Two rows per rank per mini-batch::

        >>> from rlkit.datasets.packing import balance_order
        >>> order, m = balance_order([9, 8, 7, 6, 1, 2, 3, 4], dp=2, mini_per_rank=2)
        >>> order  # mini-batch 1: rows 0, 3 (rank 0) and 1, 2 (rank 1); mini-batch 2: 4, 7 and 5, 6
        [0, 3, 1, 2, 4, 7, 5, 6]
        >>> m["global_seqlen/min"], m["global_seqlen/max"], m["global_seqlen/minmax_diff"]
        (10.0, 30.0, 20.0)
        >>> m["global_seqlen/balanced_min"], m["global_seqlen/balanced_max"], m["global_seqlen/mean"]
        (20.0, 20.0, 20.0)

    One rank: one group, all rows in ascending order (the order is unchanged)::

        >>> balance_order([5, 1, 3], dp=1)[0]
        [0, 1, 2]
    """
    n = len(seqlens)
    if dp < 1 or n == 0 or n % dp:
        raise ValueError(f"balance_order: {n} rows must split into dp={dp} equal non-empty groups")
    per_rank = n // dp
    q = per_rank if mini_per_rank is None else int(mini_per_rank)
    if q < 1:
        raise ValueError(f"balance_order: mini_per_rank must be >= 1, got {mini_per_rank}")
    groups = balanced_partitions(seqlens, dp, equal_size=True)
    order = [i for start in range(0, per_rank, q) for g in groups for i in g[start : start + q]]
    chunk_sums = [sum(seqlens[s : s + per_rank]) for s in range(0, n, per_rank)]
    group_sums = [sum(seqlens[i] for i in g) for g in groups]
    metrics = {
        "global_seqlen/min": min(chunk_sums),
        "global_seqlen/max": max(chunk_sums),
        "global_seqlen/minmax_diff": max(chunk_sums) - min(chunk_sums),
        "global_seqlen/balanced_min": min(group_sums),
        "global_seqlen/balanced_max": max(group_sums),
        "global_seqlen/mean": sum(seqlens) / dp,
    }
    return order, {k: float(v) for k, v in metrics.items()}
