"""Validation metrics as verl names and computes them (``metric_utils.process_validation_metrics`` and
the trainer's ``_validate``, verl 0.9.x).

Inputs are per response: its data source, its prompt's ``uid`` (the ``val_kwargs.n`` responses of one
prompt share it) and the scored variables - ``reward`` (the score) plus every other key a reward
function returned in its dict (``acc``, ``pred``, ...). Per data source, variable and prompt:

* ``mean@N`` over the prompt's N responses, and for N > 1 ``std@N`` (population std);
* for each k in 2, 4, 8, ... below N and N itself: ``best@k`` / ``worst@k`` (``/mean`` and ``/std``
  over 1000 bootstrap draws of k responses with replacement: the max / min of each draw) and, when
  the reward returned a ``pred``, ``maj@k`` (the value of the first response carrying the draw's most
  common ``pred``). The draws come from numpy's legacy generator seeded with ``seed`` anew for every
  prompt, variable and k, as verl does, so the numbers match verl's on the same inputs.

Each metric is then averaged over the data source's prompts and named
``<section>/<data_source>/<variable>/<metric>``: the section is ``val-core`` for the core variable
(``acc`` when the reward returns one, else ``reward``) and its ``mean`` / ``maj`` / ``best`` metrics
at the largest N, ``val-aux`` for everything else. Text variables are skipped.

>>> from rlkit.rewards.validation import validation_metrics
>>> m = validation_metrics(["gsm8k"] * 4, ["a", "a", "b", "b"], {"reward": [1.0, 0.0, 1.0, 1.0]})
>>> m["val-core/gsm8k/reward/mean@2"], m["val-aux/gsm8k/reward/std@2"]  # (0.5 + 1) / 2, (0.5 + 0) / 2
(0.75, 0.25)
>>> sorted(k for k in m if k.startswith("val-core"))
['val-core/gsm8k/reward/best@2/mean', 'val-core/gsm8k/reward/best@2/std', 'val-core/gsm8k/reward/mean@2']
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

N_BOOTSTRAP = 1000
CORE_PREFIXES = ("mean", "maj", "best")

__all__ = ["validation_metrics", "bootstrap", "majority_value", "subset_sizes"]


def subset_sizes(n: int) -> list[int]:
    """The k of ``best@k`` / ``worst@k`` / ``maj@k`` for n responses: powers of two below n, then n.

    >>> from rlkit.rewards.validation import subset_sizes
    >>> subset_sizes(1), subset_sizes(2), subset_sizes(5), subset_sizes(8)
    ([], [2], [2, 4, 5], [2, 4, 8])
    """
    if n <= 1:
        return []
    out, k = [], 2
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


def bootstrap(data: Sequence[Any], k: int, reduce_fns: Sequence[Callable], seed: int = 42,
              n_bootstrap: int = N_BOOTSTRAP) -> list[tuple[float, float]]:
    """``(mean, std)`` of each ``reduce_fn`` over ``n_bootstrap`` draws of ``k`` items of ``data`` with
    replacement; the draws are ``RandomState(seed).choice(len(data), (n_bootstrap, k))`` (the stream
    ``np.random.seed(seed)`` gives, without touching numpy's global state)."""
    items = np.empty(len(data), dtype=object)
    items[:] = list(data)
    idx = np.random.RandomState(seed).choice(len(data), size=(n_bootstrap, k), replace=True)
    out = []
    for fn in reduce_fns:
        vals = np.array([fn(items[row]) for row in idx], dtype=np.float64)
        out.append((float(vals.mean()), float(vals.std())))
    return out


def majority_value(draw: Sequence[dict]) -> float:
    """The ``val`` of the first item whose ``pred`` is the draw's most common one (ties: the pred seen
    first)."""
    groups: dict[Any, list] = {}
    for d in draw:
        groups.setdefault(d["pred"], []).append(d["val"])
    top = max(groups, key=lambda p: len(groups[p]))
    return groups[top][0]


def _per_prompt(values: list[float], preds: list | None, seed: int, n_bootstrap: int) -> dict[str, float]:
    n = len(values)
    m = {f"mean@{n}": float(np.mean(values))}
    if n > 1:
        m[f"std@{n}"] = float(np.std(values))
        for k in subset_sizes(n):
            (best, best_sd), (worst, worst_sd) = bootstrap(values, k, [np.max, np.min], seed, n_bootstrap)
            m.update({f"best@{k}/mean": best, f"best@{k}/std": best_sd, f"worst@{k}/mean": worst,
                      f"worst@{k}/std": worst_sd})
            if preds is not None:
                votes = [{"val": v, "pred": p} for v, p in zip(values, preds)]
                [(maj, maj_sd)] = bootstrap(votes, k, [majority_value], seed, n_bootstrap)
                m.update({f"maj@{k}/mean": maj, f"maj@{k}/std": maj_sd})
    return m


def validation_metrics(data_sources: Sequence[str], uids: Sequence[Any], infos: dict[str, Sequence[Any]],
                       seed: int = 42, n_bootstrap: int = N_BOOTSTRAP) -> dict[str, float]:
    """verl's validation metrics (see the module docstring) from per-response ``data_sources``,
    ``uids`` and ``infos`` (``{"reward": scores, "acc": ..., "pred": ...}``, each aligned with them;
    a None entry - a response whose reward returned no such key - is left out of that variable)."""
    n = len(data_sources)
    if len(uids) != n or any(len(v) != n for v in infos.values()):
        raise ValueError(f"validation_metrics: {n} data sources, {len(uids)} uids and variables of lengths "
                         f"{ {k: len(v) for k, v in infos.items()} }; all must be one per response")
    rows: dict[str, dict[Any, list[int]]] = {}  # data source -> uid -> response indices, in order
    for i, (ds, uid) in enumerate(zip(data_sources, uids)):
        rows.setdefault(ds, {}).setdefault(uid, []).append(i)
    out: dict[str, float] = {}
    preds = infos.get("pred")
    for ds, prompts in rows.items():
        per_var: dict[str, dict[str, list[float]]] = {}
        for idx in prompts.values():
            for var, vals in infos.items():
                keep = [i for i in idx if vals[i] is not None]
                if not keep or isinstance(vals[keep[0]], str):
                    continue
                p = [preds[i] for i in keep] if preds is not None else None
                for name, v in _per_prompt([float(vals[i]) for i in keep], p, seed, n_bootstrap).items():
                    per_var.setdefault(var, {}).setdefault(name, []).append(v)
        core = "acc" if "acc" in per_var else "reward"
        for var, metrics in per_var.items():
            n_max = max(int(name.split("@")[-1].split("/")[0]) for name in metrics)
            for name, vals in metrics.items():
                is_core = var == core and name.startswith(CORE_PREFIXES) and f"@{n_max}" in name
                out[f"{'val-core' if is_core else 'val-aux'}/{ds}/{var}/{name}"] = float(np.mean(vals))
    return out
