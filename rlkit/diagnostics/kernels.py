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
# SGLang's triton attention kernels are ``_fwd_kernel_stage1`` / ``_fwd_grouped_kernel_stage1`` (decode)
# and ``_fwd_kernel`` of its extend attention (flashinfer's fused RMSNorm is a norm, not attention);
# sampling draws random numbers (``distribution_``), sorts, scans (cumulative sums) and takes arg-maxes
# over the vocabulary.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention", r"flash(?!infer::norm)|fmha|attention|sdpa|efficient_attention|kernel_stage\d|^_fwd_kernel"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitkreduce"),
    ("optimizer", r"multi_tensor|adam|foreach"),  # also the multi-tensor kernels of grad-norm clipping
    ("softmax", r"softmax|cross_entropy|nll_loss|logsumexp"),
    ("communication", r"nccl|all_?gather|reduce_?scatter|all_?reduce"),
    ("copy", r"memcpy|memset|direct_copy|copy_kernel|cat_array|index_put|gather_kernel|index_select"),
    ("sampling", r"multinomial|distribution_|sort|radix|scan_|cumsum|argmax|topk|top_k|top_p"),
    ("fused (triton)", r"^triton_"),
    ("reduction", r"reduce_kernel|norm_kernel|rmsnorm"),
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


def read_chrome_trace(path) -> tuple[list[tuple[str, float, float]], float]:
    """The device kernels (and device copies / sets) of a chrome trace, as ``(name, start_s, end_s)``, and the
    seconds from the first one's start to the last one's end: what :func:`summarize` takes.

    ``path`` is a ``.json`` or gzipped ``.json.gz`` trace, as ``torch.profiler`` exports it (SGLang's
    ``Engine.start_profile`` writes these): events of category ``kernel``, ``gpu_memcpy`` or ``gpu_memset``
    with ``ts`` and ``dur`` in microseconds.

    >>> import json, tempfile, os
    >>> from rlkit.diagnostics.kernels import read_chrome_trace
    >>> ev = [{"ph": "X", "cat": "kernel", "name": "gemm", "ts": 10.0, "dur": 30.0},
    ...       {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5.0},
    ...       {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 50.0, "dur": 10.0}]
    >>> f = os.path.join(tempfile.mkdtemp(), "t.json")
    >>> _ = open(f, "w").write(json.dumps({"traceEvents": ev}))
    >>> kernels, span = read_chrome_trace(f)
    >>> [(n, round(s * 1e6), round(e * 1e6)) for n, s, e in kernels], round(span * 1e6)
    ([('gemm', 10, 40), ('Memcpy DtoH', 50, 60)], 50)
    """
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels = [(e["name"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in events
               if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    kernels.sort(key=lambda k: k[1])
    span = (max(e for _, _, e in kernels) - kernels[0][1]) if kernels else 0.0
    return kernels, span
