"""Where a GPU's time went: device kernels grouped by kind, how busy the device was, and per-region spans.

Pure data: feed it ``(name, start_s, end_s)`` tuples of the device's kernels (a profiler's trace) and the
wall seconds of the profiled call. :func:`summarize` answers the questions a slow training phase raises:

* **busy fraction** - the union of kernel intervals over the wall time. Well below 1, the device waited
  for the host (Python, launch overhead, hooks, host syncs): faster kernels would not help.
* **by category** - seconds per kind of kernel (:data:`CATEGORIES`): a phase whose matrix multiplies are
  a small share of its busy time is held back by memory-bound element-wise work, not by math.

>>> from rlkit.diagnostics.kernels import summarize
>>> k = [("nvjet_sm90_tst_128x256_gemm", 0.0, 0.4), ("vectorized_elementwise_kernel<MulFunctor>", 0.4, 0.6),
...      ("flash_bwd_dq_dk_dv_loop", 0.5, 0.7), ("multi_tensor_apply_kernel<AdamW>", 0.9, 1.0)]
>>> s = summarize(k, wall_seconds=1.25)
>>> round(s["busy_s"], 3), round(s["busy_fraction"], 3), round(s["kernel_s"], 3)
(0.8, 0.64, 0.9)
>>> {c: round(v["s"], 3) for c, v in s["by_category"].items()}
{'gemm': 0.4, 'elementwise': 0.2, 'attention': 0.2, 'optimizer': 0.1}
"""
from __future__ import annotations

import re
from typing import Iterable

# (category, pattern) in the order they are tried: flash kernels carry ``cutlass`` in their names, so
# attention is matched before gemm; a cast (``direct_copy``) is a copy before it is an element-wise kernel.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitkreduce"),
    ("optimizer", r"multi_tensor|adam|foreach"),  # also the multi-tensor kernels of grad-norm clipping
    ("softmax", r"softmax|cross_entropy|nll_loss|logsumexp"),
    ("communication", r"nccl|all_?gather|reduce_?scatter|all_?reduce"),
    ("copy", r"memcpy|memset|direct_copy|copy_kernel|cat_array|index_put|gather_kernel|index_select"),
    ("fused (triton)", r"^triton_"),
    ("reduction", r"reduce_kernel|norm_kernel"),
    ("elementwise", r"elementwise|vectorized|unrolled|functor|fill_kernel"),
)
_COMPILED = [(name, re.compile(pat, re.IGNORECASE)) for name, pat in CATEGORIES]


def kernel_category(name: str) -> str:
    """The first category of :data:`CATEGORIES` whose pattern occurs in ``name``, else ``"other"``.

    >>> from rlkit.diagnostics.kernels import kernel_category
    >>> kernel_category("void pytorch_flash::flash_fwd_kernel<cutlass::bfloat16_t>"), kernel_category("Memcpy HtoD")
    ('attention', 'copy')
    """
    for category, pattern in _COMPILED:
        if pattern.search(name):
            return category
    return "other"


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end)`` intervals (kernels on several streams may overlap).

    >>> from rlkit.diagnostics.kernels import busy_seconds
    >>> busy_seconds([(0, 2), (1, 3), (5, 6)])
    4
    """
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize(kernels: Iterable[tuple[str, float, float]], wall_seconds: float, top: int = 12) -> dict:
    """Device time of ``kernels`` (``(name, start_s, end_s)``) against ``wall_seconds``.

    Returns ``wall_s``, ``kernel_s`` (summed kernel durations), ``busy_s`` (their union), ``busy_fraction``
    (``busy_s / wall_s``), ``by_category`` (``{category: {"s", "share" of kernel_s, "count"}}``, largest
    first) and ``top_kernels`` (the ``top`` names with the most time: ``name``, ``category``, ``s``,
    ``share``, ``count``).
    """
    kernels = list(kernels)
    kernel_s = sum(e - s for _, s, e in kernels)
    busy = busy_seconds((s, e) for _, s, e in kernels)
    by_cat: dict[str, dict] = {}
    by_name: dict[str, dict] = {}
    for name, s, e in kernels:
        for table, key in ((by_cat, kernel_category(name)), (by_name, name)):
            row = table.setdefault(key, {"s": 0.0, "count": 0})
            row["s"] += e - s
            row["count"] += 1
    denom = kernel_s or 1.0
    for table in (by_cat, by_name):
        for row in table.values():
            row["share"] = row["s"] / denom
    names = sorted(by_name.items(), key=lambda kv: kv[1]["s"], reverse=True)[:top]
    return {
        "wall_s": wall_seconds,
        "kernel_s": kernel_s,
        "busy_s": busy,
        "busy_fraction": busy / wall_seconds if wall_seconds > 0 else float("nan"),
        "by_category": dict(sorted(by_cat.items(), key=lambda kv: kv[1]["s"], reverse=True)),
        "top_kernels": [dict(name=n, category=kernel_category(n), **row) for n, row in names],
    }
