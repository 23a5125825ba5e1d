"""`RolloutBatch`: the one batch type passed between the phases of a PPO step.

A batch has three parts:

* ``tensors``: ``dict[str, Tensor]``, every tensor with the same first dimension B;
* ``columns``: ``dict[str, list]``, one Python value per row (length B), for what is not a tensor;
* ``meta``: ``dict``, step-level values shared by every row (not split, not concatenated).

Row operations (:meth:`~RolloutBatch.select`, :meth:`~RolloutBatch.chunk`,
:meth:`~RolloutBatch.split`, :meth:`~RolloutBatch.concat`, :meth:`~RolloutBatch.repeat`,
:meth:`~RolloutBatch.pad_to_multiple`) act on tensors and columns alike, so a uid never drifts
away from its tokens when a batch is split over data-parallel ranks and gathered back.

Tensors (B = prompts * rollout.n, P = prompt width, R = response width; see ``FIELDS``):

    ==================== ========= ======== ==================================================
    key                  shape     dtype    meaning
    ==================== ========= ======== ==================================================
    prompts              (B, P)    int64    left-padded prompt ids
    responses            (B, R)    int64    right-padded response ids
    input_ids            (B, P+R)  int64    prompts ++ responses
    attention_mask       (B, P+R)  int64    1 on real tokens, 0 on padding
    position_ids         (B, P+R)  int64    cumsum(attention_mask) - 1, clamped at 0
    response_mask        (B, R)    float32  1.0 on response tokens (eos included)
    rollout_log_probs    (B, R)    float32  log-probs reported by the rollout engine
    token_level_scores   (B, R)    float32  the reward function's score on the last response token
    token_level_rewards  (B, R)    float32  scores minus the KL penalty (when in the reward)
    old_log_probs        (B, R)    float32  log-probs of the actor before the update
    ref_log_prob         (B, R)    float32  log-probs of the reference model
    values               (B, R)    float32  critic's V(s_t) before each response token
    advantages           (B, R)    float32  the estimator's advantages
    returns              (B, R)    float32  the estimator's returns (critic targets)
    ==================== ========= ======== ==================================================

Columns (one Python value per row): ``uid`` (str, shared by the n samples of one prompt),
``data_source`` (str), ``ground_truth``, ``extra_info`` (dict), ``finish_reason``
(``"stop"`` / ``"length"``), ``prompt_text`` (str); :meth:`~RolloutBatch.pad_to_multiple` adds
``is_pad`` (bool).

Meta (step-level): e.g. ``temperature``, ``global_token_count`` (the token count of the whole
mini-batch, so token-mean losses over data-parallel ranks are normalised globally), ``step``.

Example:

>>> from rlkit.datasets import RolloutBatch
>>> batch = RolloutBatch.from_generation(
...     prompts=[[5, 6], [7]], responses=[[8, 2], [9]], log_probs=[[-0.1, -0.2], [-0.3]], pad_id=0,
...     columns={"uid": ["a", "b"]}, meta={"temperature": 1.0})
>>> batch["input_ids"].tolist()
[[5, 6, 8, 2], [0, 7, 9, 0]]
>>> [part["uid"] for part in batch.repeat(2).chunk(2)]
[['a', 'a'], ['b', 'b']]
"""
from __future__ import annotations

import html
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor

__all__ = ["RolloutBatch", "FIELDS", "PAD_COLUMN"]

#: key -> (shape, dtype, meaning) of the tensors a PPO step fills in; :meth:`RolloutBatch.check` reads it.
FIELDS: dict[str, tuple[tuple[str, str], torch.dtype, str]] = {
    "prompts": (("B", "P"), torch.int64, "left-padded prompt ids"),
    "responses": (("B", "R"), torch.int64, "right-padded response ids"),
    "input_ids": (("B", "P+R"), torch.int64, "prompts ++ responses"),
    "attention_mask": (("B", "P+R"), torch.int64, "1 on real tokens, 0 on padding"),
    "position_ids": (("B", "P+R"), torch.int64, "cumsum(attention_mask) - 1, clamped at 0"),
    "response_mask": (("B", "R"), torch.float32, "1.0 on response tokens (eos included)"),
    "rollout_log_probs": (("B", "R"), torch.float32, "log-probs reported by the rollout engine"),
    "token_level_scores": (("B", "R"), torch.float32, "the reward function's score on the last response token"),
    "token_level_rewards": (("B", "R"), torch.float32, "scores minus the KL penalty (when in the reward)"),
    "old_log_probs": (("B", "R"), torch.float32, "log-probs of the actor before the update"),
    "ref_log_prob": (("B", "R"), torch.float32, "log-probs of the reference model"),
    "values": (("B", "R"), torch.float32, "critic's V(s_t) before each response token"),
    "advantages": (("B", "R"), torch.float32, "the estimator's advantages"),
    "returns": (("B", "R"), torch.float32, "the estimator's returns (critic targets)"),
}

#: the column :meth:`RolloutBatch.pad_to_multiple` adds: True on padding rows.
PAD_COLUMN = "is_pad"

Index = Union[slice, range, Sequence[int], Sequence[bool], Tensor]


class RolloutBatch:
    """Tensors, per-row columns and step-level meta of one batch of B rows.

    Args:
        tensors: name -> tensor, each with first dimension B.
        columns: name -> per-row values (any sequence of length B; stored as a list).
        meta: step-level values (copied shallowly; every derived batch gets its own copy of the dict).

    Raises:
        ValueError: the tensors' first dimensions and the columns' lengths disagree (the message
            names every key with its length), or a key is both a tensor and a column.

    Derived batches (``select``, ``chunk``, ...) share the column values (shallow, like list
    slicing) and, for contiguous row ranges, the tensors' memory (views, like ``torch.chunk``).
    Pickling (Ray, multiprocessing) sends only each tensor's own rows, never the storage of the
    batch it was cut from.

    >>> import torch
    >>> from rlkit.datasets import RolloutBatch
    >>> b = RolloutBatch({"responses": torch.zeros(3, 2, dtype=torch.long)}, {"uid": ["0", "0", "1"]})
    >>> len(b), "uid" in b, b.keys()
    (3, True, ['responses', 'uid'])
    >>> b["score"] = [1.0, 0.0]
    Traceback (most recent call last):
    ...
    ValueError: column 'score' has 2 rows, the batch has 3 (tensor 'responses': 3, column 'uid': 3)
    """

    PAD_COLUMN = PAD_COLUMN
    FIELDS = FIELDS

    def __init__(self, tensors: Mapping[str, Tensor] | None = None, columns: Mapping[str, Sequence] | None = None,
                 meta: Mapping[str, Any] | None = None):
        self.tensors: dict[str, Tensor] = {}
        self.columns: dict[str, list] = {}
        self.meta: dict[str, Any] = dict(meta or {})
        for k, v in (tensors or {}).items():
            if not isinstance(v, Tensor):
                raise TypeError(f"tensor {k!r} is a {type(v).__name__}, not a torch.Tensor")
            if v.dim() == 0:
                raise ValueError(f"tensor {k!r} is a scalar; rows need a first dimension (step-level values go in meta)")
            self.tensors[k] = v
        for k, v in (columns or {}).items():
            if k in self.tensors:
                raise ValueError(f"{k!r} is both a tensor and a column")
            self.columns[k] = _as_column(k, v)
        lengths = self._lengths()
        if len(set(lengths.values())) > 1:
            B = Counter(lengths.values()).most_common(1)[0][0]
            odd = "; ".join(f"{kind} {key!r} has {n} rows" for (kind, key), n in lengths.items() if n != B)
            raise ValueError(f"{odd}, the batch has {B} ({_describe(lengths)}; every tensor's first dimension "
                             f"and every column's length must be the same B)")

    # ------------------------------------------------------------------ mapping-like access
    def __len__(self) -> int:
        """B, the number of rows (0 for a batch without keys)."""
        for v in self.tensors.values():
            return int(v.shape[0])
        for v in self.columns.values():
            return len(v)
        return 0

    def __contains__(self, key: object) -> bool:
        return key in self.tensors or key in self.columns

    def __iter__(self) -> Iterator[str]:
        """The keys (tensors first, then columns), as a mapping does; rows come from ``select``/``chunk``."""
        return iter(self.keys())

    def keys(self) -> list[str]:
        """Tensor keys, then column keys, in insertion order."""
        return [*self.tensors, *self.columns]

    def __getitem__(self, key: str) -> Tensor | list:
        """The tensor or the column ``key``; use :meth:`select` for rows."""
        if not isinstance(key, str):
            raise TypeError(f"batch[{key!r}]: keys are strings; use batch.select(...) to take rows")
        if key in self.tensors:
            return self.tensors[key]
        if key in self.columns:
            return self.columns[key]
        raise KeyError(f"{key!r} is not in this batch (tensors: {list(self.tensors)}, columns: {list(self.columns)})")

    def get(self, key: str, default: Any = None) -> Tensor | list | Any:
        return self[key] if key in self else default

    def __setitem__(self, key: str, value: Tensor | Sequence) -> None:
        """A tensor goes to ``tensors``, a list or tuple to ``columns`` (replacing ``key`` in the
        other one, if there); its length must be the batch's B. Step-level values go in ``meta``."""
        if not isinstance(key, str):
            raise TypeError(f"keys are strings, not {type(key).__name__}")
        if isinstance(value, Tensor):
            if value.dim() == 0:
                raise ValueError(f"tensor {key!r} is a scalar; rows need a first dimension "
                                 f"(step-level values go in batch.meta[{key!r}])")
            kind, n = "tensor", int(value.shape[0])
        elif isinstance(value, (list, tuple)):
            kind, n = "column", len(value)
        else:
            raise TypeError(f"batch[{key!r}] = {type(value).__name__}: give a torch.Tensor (rows first), a list "
                            f"(one value per row) or put a step-level value in batch.meta[{key!r}]")
        others = {k: v for k, v in self._lengths().items() if k[1] != key}
        if others and n != next(iter(others.values())):
            raise ValueError(f"{kind} {key!r} has {n} rows, the batch has {next(iter(others.values()))} "
                             f"({_describe(others)})")
        self.tensors.pop(key, None)
        self.columns.pop(key, None)
        if kind == "tensor":
            self.tensors[key] = value
        else:
            self.columns[key] = list(value)

    def __delitem__(self, key: str) -> None:
        if key in self.tensors:
            del self.tensors[key]
        elif key in self.columns:
            del self.columns[key]
        else:
            raise KeyError(key)

    def update(self, values: Mapping[str, Tensor | Sequence]) -> RolloutBatch:
        """``batch[k] = v`` for every item (e.g. a worker's ``{"old_log_probs": ...}``); returns self."""
        for k, v in values.items():
            self[k] = v
        return self

    def _lengths(self) -> dict[tuple[str, str], int]:
        """(kind, key) -> rows, for every tensor and column."""
        out = {("tensor", k): int(v.shape[0]) for k, v in self.tensors.items()}
        out.update({("column", k): len(v) for k, v in self.columns.items()})
        return out

    def tensor_dict(self) -> dict[str, Tensor]:
        """The tensors as a plain dict (a new dict, the same tensors), for code that wants one."""
        return dict(self.tensors)

    def copy(self) -> RolloutBatch:
        """A new batch with new dicts and column lists, sharing the tensors and the column values."""
        return RolloutBatch(self.tensors, self.columns, self.meta)

    # ------------------------------------------------------------------ rows
    def select(self, idx: Index) -> RolloutBatch:
        """The rows ``idx`` of every tensor and column, meta unchanged.

        Args:
            idx: a slice or range (tensors come back as views), integer indices (list, array or
                LongTensor; negative ones count from the end, repeats allowed) or a boolean mask
                of length B (list or BoolTensor).

        >>> import torch
        >>> from rlkit.datasets import RolloutBatch
        >>> b = RolloutBatch({"x": torch.arange(4)}, {"uid": list("abcd")})
        >>> b.select([3, 0])["uid"], b.select(torch.tensor([True, False, True, False]))["x"].tolist()
        (['d', 'a'], [0, 2])
        """
        B = len(self)
        if isinstance(idx, range):
            idx = list(idx)
        if isinstance(idx, slice):
            return RolloutBatch({k: v[idx] for k, v in self.tensors.items()},
                                {k: v[idx] for k, v in self.columns.items()}, self.meta)
        if isinstance(idx, (int, str, bytes)) or (isinstance(idx, Tensor) and idx.dim() == 0):
            raise TypeError(f"select() takes a slice, indices or a boolean mask, not {idx!r} (use [{idx!r}] for one row)")
        pos = torch.as_tensor(idx)
        if pos.numel() == 0:
            pos = torch.zeros(0, dtype=torch.long)
        elif pos.dtype == torch.bool:
            if pos.dim() != 1 or len(pos) != B:
                raise ValueError(f"boolean mask has shape {tuple(pos.shape)}, the batch has {B} rows")
            pos = pos.cpu().nonzero().flatten()
        elif pos.is_floating_point() or pos.is_complex() or pos.dim() != 1:
            raise TypeError(f"select() indices must be a 1-d sequence of ints or bools, got {pos.dtype} "
                            f"of shape {tuple(pos.shape)}")
        else:
            pos = pos.cpu().long()
            bad = pos[(pos >= B) | (pos < -B)]
            if len(bad):
                raise IndexError(f"row index {int(bad[0])} is out of range for a batch of {B} rows")
            pos = torch.where(pos < 0, pos + B, pos)
        rows = pos.tolist()
        tensors = {k: v[pos.to(v.device)] for k, v in self.tensors.items()}
        columns = {k: [v[i] for i in rows] for k, v in self.columns.items()}
        return RolloutBatch(tensors, columns, self.meta)

    def split(self, sizes: int | Sequence[int]) -> list[RolloutBatch]:
        """Contiguous parts, in order.

        Args:
            sizes: the rows of each part (non-negative, summing to B), or one int: parts of that
                many rows, the last one smaller (as ``torch.split``; an empty batch gives no parts).
        """
        B = len(self)
        if isinstance(sizes, int):
            if sizes < 1:
                raise ValueError(f"split size must be at least 1, got {sizes}")
            sizes = [sizes] * (B // sizes) + ([B % sizes] if B % sizes else [])
        sizes = [int(s) for s in sizes]
        if any(s < 0 for s in sizes) or sum(sizes) != B:
            raise ValueError(f"split sizes {sizes} sum to {sum(sizes)}, the batch has {B} rows")
        parts, start = [], 0
        for s in sizes:
            parts.append(self.select(slice(start, start + s)))
            start += s
        return parts

    def chunk(self, k: int) -> list[RolloutBatch]:
        """Exactly ``k`` contiguous parts for ``k`` data-parallel ranks, sizes differing by at most one.

        Unlike ``torch.chunk`` (which may return fewer parts), there are always ``k`` parts, so part
        ``i`` is rank ``i``'s; the first ``B % k`` parts have one row more. Parts are empty only when
        B < k. ``RolloutBatch.concat(batch.chunk(k))`` gives the batch back. For equal parts, call
        :meth:`pad_to_multiple` first.

        >>> import torch
        >>> from rlkit.datasets import RolloutBatch
        >>> [len(p) for p in RolloutBatch({"x": torch.arange(7)}).chunk(3)]
        [3, 2, 2]
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"chunk(k) needs an int k >= 1, got {k!r}")
        B = len(self)
        return self.split([B // k + (1 if i < B % k else 0) for i in range(k)])

    @classmethod
    def concat(cls, batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """The rows of ``batches`` one after the other: the inverse of :meth:`chunk` and :meth:`split`.

        Every part must have the same tensor keys (same dtype and trailing shape) and the same
        column keys. Meta is step-level, so every part must carry the same meta (same keys, equal
        values); a per-rank value belongs in the metrics a worker returns, not in meta.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("concat() needs at least one batch")
        first = batches[0]
        for i, b in enumerate(batches[1:], start=1):
            for what, mine, theirs in (("tensor", first.tensors, b.tensors), ("column", first.columns, b.columns)):
                if set(mine) != set(theirs):
                    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
                    raise ValueError(f"concat: batch {i} has different {what} keys than batch 0 "
                                     f"(missing {missing}, extra {extra})")
            for k, v in first.tensors.items():
                w = b.tensors[k]
                if w.shape[1:] != v.shape[1:] or w.dtype != v.dtype:
                    raise ValueError(f"concat: tensor {k!r} is {_shape(w)} {w.dtype} in batch {i} but {_shape(v)} "
                                     f"{v.dtype} in batch 0 (only the first dimension may differ)")
            if set(b.meta) != set(first.meta):
                raise ValueError(f"concat: batch {i} has meta keys {sorted(b.meta)}, batch 0 {sorted(first.meta)}")
            for k, v in first.meta.items():
                if not _same(v, b.meta[k]):
                    raise ValueError(f"concat: meta {k!r} is {_short(b.meta[k])} in batch {i} but {_short(v)} in "
                                     f"batch 0 (meta is step-level and must agree)")
        tensors = {}
        for k in first.tensors:
            try:
                tensors[k] = torch.cat([b.tensors[k] for b in batches])
            except RuntimeError as e:  # e.g. parts on different devices
                raise RuntimeError(f"concat: tensor {k!r}: {e}") from e
        columns = {k: [x for b in batches for x in b.columns[k]] for k in first.columns}
        return cls(tensors, columns, first.meta)

    def repeat(self, n: int, interleave: bool = True) -> RolloutBatch:
        """Every row ``n`` times: ``a a b b`` with ``interleave`` (as rollout.n lays out samples), else
        ``a b a b``. Column values are repeated by reference (the same object ``n`` times).

        >>> import torch
        >>> from rlkit.datasets import RolloutBatch
        >>> b = RolloutBatch({"x": torch.tensor([1, 2])}, {"uid": ["a", "b"]})
        >>> b.repeat(2)["uid"], b.repeat(2, interleave=False)["x"].tolist()
        (['a', 'a', 'b', 'b'], [1, 2, 1, 2])
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"repeat(n) needs an int n >= 1, got {n!r}")
        if interleave:
            tensors = {k: v.repeat_interleave(n, dim=0) for k, v in self.tensors.items()}
            columns = {k: [x for x in v for _ in range(n)] for k, v in self.columns.items()}
        else:
            tensors = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in self.tensors.items()}
            columns = {k: v * n for k, v in self.columns.items()}
        return RolloutBatch(tensors, columns, self.meta)

    def pad_to_multiple(self, k: int) -> tuple[RolloutBatch, int]:
        """Append copies of the first rows (cycling) until B is a multiple of ``k``, so the batch
        splits evenly over ``k`` ranks; returns ``(padded, pad_count)``.

        The result always has the bool column ``is_pad`` (True on added rows; rows already marked
        keep their mark), which follows its rows through chunk / select / concat, so
        :meth:`unpad` drops exactly the padding after the parts are gathered. Padding rows are
        real rows' copies, so forward passes on them are valid; sums and token counts over a
        padded batch must skip them (or be taken before padding). An empty batch is not padded.

        >>> import torch
        >>> from rlkit.datasets import RolloutBatch
        >>> padded, pad = RolloutBatch({"x": torch.arange(5)}).pad_to_multiple(4)
        >>> pad, padded["x"].tolist(), padded["is_pad"]
        (3, [0, 1, 2, 3, 4, 0, 1, 2], [False, False, False, False, False, True, True, True])
        >>> padded.unpad()["x"].tolist()
        [0, 1, 2, 3, 4]
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"pad_to_multiple(k) needs an int k >= 1, got {k!r}")
        B = len(self)
        pad = (-B) % k if B else 0
        marks = list(self.columns.get(PAD_COLUMN, [False] * B))
        out = self.select(torch.cat([torch.arange(B), torch.arange(pad) % max(B, 1)])) if pad else self.copy()
        out[PAD_COLUMN] = marks + [True] * pad
        return out, pad

    def unpad(self) -> RolloutBatch:
        """The rows not marked in the ``is_pad`` column, without that column (a copy when unmarked)."""
        if PAD_COLUMN not in self.columns:
            return self.copy()
        out = self.select([not p for p in self.columns[PAD_COLUMN]])
        del out[PAD_COLUMN]
        return out

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str, non_blocking: bool = False) -> RolloutBatch:
        """The tensors on ``device`` (a new batch; columns and meta stay Python objects). With
        ``non_blocking``, host tensors bound for a GPU go through pinned memory (:func:`to_device`)."""
        return RolloutBatch({k: to_device(v, device, non_blocking) for k, v in self.tensors.items()},
                            self.columns, self.meta)

    def cpu(self) -> RolloutBatch:
        return self.to("cpu")

    def pin_memory(self) -> RolloutBatch:
        """CPU tensors in pinned memory, for fast non-blocking copies to the GPU; unchanged (a copy)
        when no CUDA device is visible, where pinning is not possible."""
        if not torch.cuda.is_available():
            return self.copy()
        return RolloutBatch({k: v.pin_memory() if v.device.type == "cpu" else v for k, v in self.tensors.items()},
                            self.columns, self.meta)

    # ------------------------------------------------------------------ building and checking
    @classmethod
    def from_generation(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                        log_probs: Sequence[Sequence[float]] | None, pad_id: int,
                        columns: Mapping[str, Sequence] | None = None,
                        meta: Mapping[str, Any] | None = None) -> RolloutBatch:
        """The generation tensors of the table above from token lists, one row per sample.

        Prompts are left-padded to P = the longest prompt, responses right-padded to R = the
        longest response (at least 1); ``input_ids = prompts ++ responses``, ``attention_mask`` is 1
        on real tokens, ``position_ids = cumsum(attention_mask) - 1`` clamped at 0,
        ``response_mask`` (float) is 1.0 on response tokens and ``rollout_log_probs`` holds the
        engine's log-prob of each response token (0.0 on padding; left out when ``log_probs`` is None).

        Args:
            prompts: B prompt id lists (already repeated rollout.n times, as the responses are laid out).
            responses: B response id lists.
            log_probs: B lists of floats, each as long as its response, or None.
            pad_id: the id written in padding positions.
            columns, meta: added to the batch (columns of length B).

        >>> from rlkit.datasets import RolloutBatch
        >>> b = RolloutBatch.from_generation([[1, 2], [3]], [[4], [5, 6]], [[-0.5], [-1.0, -2.0]], pad_id=0)
        >>> b["attention_mask"].tolist(), b["position_ids"].tolist()
        ([[1, 1, 1, 0], [0, 1, 1, 1]], [[0, 1, 2, 2], [0, 0, 1, 2]])
        """
        B = len(prompts)
        if B == 0:
            raise ValueError("from_generation() needs at least one prompt")
        if len(responses) != B or (log_probs is not None and len(log_probs) != B):
            raise ValueError(f"from_generation(): {B} prompts, {len(responses)} responses"
                             + (f", {len(log_probs)} log_probs" if log_probs is not None else "")
                             + " (one of each per sample)")
        if log_probs is not None:
            for i, (r, lp) in enumerate(zip(responses, log_probs)):
                if len(lp) != len(r):
                    raise ValueError(f"from_generation(): row {i} has {len(r)} response tokens but {len(lp)} log_probs")
        P = max(len(p) for p in prompts)
        R = max(1, max(len(r) for r in responses))
        prompt_t = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], dtype=torch.long).view(B, P)
        prompt_m = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long).view(B, P)
        resp_t = torch.tensor([list(r) + [pad_id] * (R - len(r)) for r in responses], dtype=torch.long)
        resp_m = torch.tensor([[1] * len(r) + [0] * (R - len(r)) for r in responses], dtype=torch.long)
        attention_mask = torch.cat([prompt_m, resp_m], dim=1)
        tensors = {
            "prompts": prompt_t, "responses": resp_t, "input_ids": torch.cat([prompt_t, resp_t], dim=1),
            "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0),
            "response_mask": resp_m.float(),
        }
        if log_probs is not None:
            tensors["rollout_log_probs"] = torch.tensor(
                [list(lp) + [0.0] * (R - len(lp)) for lp in log_probs], dtype=torch.float32)
        return cls(tensors, columns, meta)

    def check(self) -> RolloutBatch:
        """Check the tensors named in ``FIELDS`` against the shape table (2-d, widths P / R / P+R
        from ``prompts`` and ``responses``, dtypes); returns self, raises ValueError naming the key.

        >>> import torch
        >>> from rlkit.datasets import RolloutBatch
        >>> b = RolloutBatch.from_generation([[1, 2]], [[3]], [[-0.1]], pad_id=0)
        >>> b["advantages"] = torch.zeros(1, 2)
        >>> b.check()
        Traceback (most recent call last):
        ...
        ValueError: tensor 'advantages' is (1, 2), expected (B, R) = (1, 1)
        """
        widths = {"B": len(self)}
        if "prompts" in self.tensors and self.tensors["prompts"].dim() == 2:
            widths["P"] = int(self.tensors["prompts"].shape[1])
        if "responses" in self.tensors and self.tensors["responses"].dim() == 2:
            widths["R"] = int(self.tensors["responses"].shape[1])
        if "P" in widths and "R" in widths:
            widths["P+R"] = widths["P"] + widths["R"]
        for key, (dims, dtype, _) in FIELDS.items():
            if key not in self.tensors:
                continue
            t = self.tensors[key]
            want = tuple(widths.get(d) for d in dims)
            if t.dim() != len(dims) or any(w is not None and w != s for w, s in zip(want, t.shape)):
                shown = tuple("?" if w is None else w for w in want)
                raise ValueError(f"tensor {key!r} is {_shape(t)}, expected ({', '.join(dims)}) = "
                                 f"({', '.join(map(str, shown))})")
            if t.dtype != dtype:
                raise ValueError(f"tensor {key!r} is {t.dtype}, expected {dtype}")
        return self

    def equals(self, other: RolloutBatch) -> bool:
        """Same keys in the same order, equal tensors (values, dtype, shape), columns and meta."""
        return (isinstance(other, RolloutBatch) and list(self.tensors) == list(other.tensors)
                and list(self.columns) == list(other.columns)
                and all(_same(v, other.tensors[k]) for k, v in self.tensors.items())
                and all(_same(v, other.columns[k]) for k, v in self.columns.items())
                and set(self.meta) == set(other.meta)
                and all(_same(v, other.meta[k]) for k, v in self.meta.items()))

    # ------------------------------------------------------------------ pickling and display
    def __getstate__(self) -> dict:
        # a view pickles its whole storage: send each tensor's own rows only (a chunk stays 1/k of the batch)
        state = dict(self.__dict__)
        state["tensors"] = {k: v if _compact(v) else v.clone(memory_format=torch.contiguous_format)
                            for k, v in self.tensors.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _rows(self) -> list[tuple[str, str, str, str]]:
        """(key, kind, shape, type) per key, for the reprs."""
        rows = []
        for k, v in self.tensors.items():
            dev = "" if v.device.type == "cpu" else f" {v.device}"
            rows.append((k, "tensor", _shape(v), str(v.dtype).removeprefix("torch.") + dev))
        for k, v in self.columns.items():
            types = sorted({type(x).__name__ for x in v})
            rows.append((k, "column", f"({len(v)},)", "|".join(types) if len(types) <= 3 else "mixed"))
        return rows

    def __repr__(self) -> str:
        lines = [f"RolloutBatch({len(self)} rows, {len(self.tensors)} tensors, {len(self.columns)} columns)"]
        rows = self._rows()
        width = max((len(r[0]) for r in rows), default=0)
        lines += [f"  {k:<{width}}  {shape:<12} {typ}" for k, kind, shape, typ in rows if kind == "tensor"]
        lines += [f"  {k:<{width}}  column       {typ}" for k, kind, shape, typ in rows if kind == "column"]
        if self.meta:
            lines.append("  meta: " + ", ".join(f"{k}={_short(v)}" for k, v in self.meta.items()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        cells = "".join(f"<tr><td><code>{e(k)}</code></td><td>{kind}</td><td>{e(shape)}</td><td>{e(typ)}</td></tr>"
                        for k, kind, shape, typ in self._rows())
        meta = ("<p>meta: " + ", ".join(f"<code>{e(k)}={e(_short(v))}</code>" for k, v in self.meta.items()) + "</p>"
                if self.meta else "")
        return (f"<p><b>RolloutBatch</b>: {len(self)} rows</p><table><thead><tr><th>key</th><th>kind</th>"
                f"<th>shape</th><th>type</th></tr></thead><tbody>{cells}</tbody></table>{meta}")


def to_device(t: Tensor, device: torch.device | str, non_blocking: bool = True) -> Tensor:
    """``t`` on ``device``. ``non_blocking``: a host tensor bound for a GPU is pinned first and copied
    asynchronously, so the host does not wait for the work already queued on the GPU (a copy from
    pageable memory waits for the whole stream); the caching host allocator keeps the pinned block until
    the copy is done. Elsewhere a plain ``t.to(device)``.

    >>> import torch
    >>> from rlkit.datasets.batch import to_device
    >>> to_device(torch.arange(3), "cpu").tolist()
    [0, 1, 2]
    """
    device = torch.device(device)
    if non_blocking and device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _as_column(key: str, value: Any) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
        raise TypeError(f"column {key!r} must be a sequence with one value per row, got {type(value).__name__}")
    return list(value)


def _describe(lengths: Mapping[tuple[str, str], int]) -> str:
    return ", ".join(f"{kind} {key!r}: {n}" for (kind, key), n in lengths.items())


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _short(v: Any, limit: int = 40) -> str:
    if isinstance(v, Tensor):
        return f"tensor{_shape(v)}" if v.numel() > 4 else repr(v.tolist())
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _compact(t: Tensor) -> bool:
    return t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.device == b.device and bool(torch.equal(a, b)))
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays of several elements
        try:
            import numpy as np

            return bool(np.array_equal(a, b))
        except Exception:
            return a is b
