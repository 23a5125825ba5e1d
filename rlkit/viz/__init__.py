"""Plots, tables and a notebook dashboard over plain data (no other rlkit module is imported).

Everything here works on saved traces without GPUs: feed it pandas DataFrames / dicts.

Data contracts
--------------
memory frame (tidy): columns ``step, phase, event, node, rank, gpu, metric, bytes, time``;
    ``metric`` in total, used, free, torch_allocated, torch_reserved, torch_peak_allocated,
    torch_peak_reserved, other_processes, host_rss (``gpu == -1``); ``event`` "start" / "end".
balance dict: ``BalanceReport.to_dict()``: ``{"ok", "ratio", "groups": [{"ranks", "free_bytes",
    "ratios", "failing", "short_ranks", "missing_gib", "labels"?}], "evidence", "advice"}``.
history frame: one row per PPO step, ``step`` plus verl metric names (``critic/score/mean``, ...).
rollouts frame: ``step, uid, data_source, prompt, response, ground_truth, score, reward,
    response_length, finish_reason``.

Plot functions return ``matplotlib.figure.Figure`` objects (no pyplot, never shown).
``import rlkit.viz`` is light: matplotlib, pandas and ipywidgets load on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "plot_memory_bars": "plots",
    "plot_memory_timeline": "plots",
    "plot_balance": "plots",
    "plot_training": "plots",
    "plot_response_lengths": "plots",
    "plot_phase_breakdown": "plots",
    "plot_learning": "plots",
    "plot_learning_spread": "plots",
    "plot_peers": "plots",
    "plot_summary": "plots",
    "memory_snapshot_table": "plots",
    "rollouts_html": "tables",
    "page_rollouts": "tables",
    "Dashboard": "dashboard",
}
_SUBMODULES = {"plots", "tables", "dashboard"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
