"""SGLang tensor-parallel free-memory balance: SGLang's rule, the short rank(s) and why.

SGLang (``model_runner.init_torch_distributed``) measures free memory on every TP rank before it
loads the model and raises ``The memory capacity is unbalanced`` on each rank whose free memory
is more than the group's smallest free memory / 0.9 (``min_free < 0.9 * local_free``). The engine
then sizes weights + KV cache as ``gpu_memory_utilization`` x that smallest free memory.

Two different GPUs matter when the check fails, and the report names both:

* the *short* GPU (the cause): the one with the least free memory, e.g. because another process
  holds memory there. It passes its own check.
* the *raising* rank(s): the ranks with much more free memory than the short GPU. SGLang raises
  there, because the group's minimum is below 0.9 x their own free memory.

For the whole group to pass, the short GPU needs ``0.9 x`` the largest free memory in the group;
``TPGroupBalance.short_by_gib`` is how far it is from that.

:func:`balance_report` applies the same rule to recorded :class:`~rlkit.diagnostics.memory.MemorySnapshot`
objects (or plain free-byte readings) and gathers evidence for the four known causes:

1. other processes on the short GPU;
2. this process's torch allocations / cached memory differing between GPUs (training state loaded
   before the engine, cache not emptied);
3. offload settings differing between ranks (``param_offload`` / ``optimizer_offload``);
4. workers that loaded their models at different times.

SGLang's rule itself is :func:`tp_memory_imbalance` (with :data:`TP_MEMORY_RATIO`).
:func:`check_before_engine` applies it, with the report, to given readings (error / warn / off);
:func:`preflight_tp_memory` reads the TP group's GPUs now and checks them: ``SGLangRollout`` runs it
before its engine starts.

>>> from rlkit.diagnostics.balance import tp_memory_imbalance
>>> tp_memory_imbalance([80 * 2**30, 60 * 2**30])  # 60 < 0.9 x 80: SGLang raises on rank 0
[0]

Pure data: imports stdlib, torch and ``rlkit.diagnostics.memory``; the plot is in
``rlkit.viz.plots`` and loaded only by :meth:`BalanceReport.plot`.
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from rlkit.diagnostics.memory import MemorySnapshot, _as_snapshot, snapshot

__all__ = [
    "balance_report",
    "check_before_engine",
    "preflight_tp_memory",
    "tp_memory_imbalance",
    "check_tp_memory_mode",
    "TP_MEMORY_RATIO",
    "TP_MEMORY_MODES",
    "BalanceReport",
    "TPGroupBalance",
    "RankMemory",
    "Evidence",
    "TPMemoryImbalanceError",
    "TPMemoryImbalanceWarning",
    "CAUSES",
]

GiB = 2**30
SIGNIFICANT_BYTES = 512 * 2**20  # a memory difference worth naming as evidence
LOAD_SPREAD_S = 5.0  # load times further apart than this are flagged
CAUSES = {
    "other_processes": "other processes on the short GPU",
    "torch_memory": "this process's torch memory differs between GPUs",
    "offload": "offload settings differ between ranks",
    "load_timing": "workers loaded at different times",
}
GPU_UTIL_KEY = "actor_rollout_ref.rollout.gpu_memory_utilization"
TP_CHECK_KEY = "actor_rollout_ref.rollout.tp_memory_check"
TP_MEMORY_RATIO = 0.9  # SGLang: fail when min free over the TP group < 0.9 x this rank's free memory
TP_MEMORY_MODES = ("error", "warn", "off")  # rollout.tp_memory_check
_OFFLOAD_PATHS = {
    "actor_rollout_ref.actor.fsdp_config.param_offload": ("actor_rollout_ref", "actor", "fsdp_config", "param_offload"),
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": ("actor_rollout_ref", "actor", "fsdp_config",
                                                              "optimizer_offload"),
    "actor_rollout_ref.ref.fsdp_config.param_offload": ("actor_rollout_ref", "ref", "fsdp_config", "param_offload"),
    "critic.model.fsdp_config.param_offload": ("critic", "model", "fsdp_config", "param_offload"),
    "critic.model.fsdp_config.optimizer_offload": ("critic", "model", "fsdp_config", "optimizer_offload"),
}


def tp_memory_imbalance(free_bytes: list[int], ratio: float = TP_MEMORY_RATIO) -> list[int]:
    """Ranks on which SGLang's check fails: ``min(free) < ratio * free[rank]``.

    free_bytes: free memory per TP rank, in rank order. Returns the failing ranks (empty when balanced).
    """
    if not free_bytes:
        return []
    group_min = min(free_bytes)
    return [rank for rank, free in enumerate(free_bytes) if group_min < ratio * free]


def check_tp_memory_mode(mode: str) -> str:
    """``mode`` when it is a valid ``rollout.tp_memory_check`` (error | warn | off), else ValueError."""
    if mode not in TP_MEMORY_MODES:
        raise ValueError(f"{TP_CHECK_KEY} must be error, warn or off, got {mode!r}")
    return mode


class TPMemoryImbalanceError(RuntimeError):
    """SGLang's TP memory check would fail; the message is the balance report."""

    def __init__(self, report: "BalanceReport"):
        super().__init__(str(report))
        self.report = report


class TPMemoryImbalanceWarning(UserWarning):
    """SGLang's TP memory check would fail but ``tp_memory_check=warn``."""


# ------------------------------------------------------------------------------------------- data
@dataclass
class RankMemory:
    """One TP rank's GPU as the report sees it."""

    rank: int
    free: int
    node: str | None = None
    gpu: int | None = None  # torch index in the recording process
    uuid: str | None = None
    total: int | None = None
    used: int | None = None
    pid: int | None = None  # the recording process
    processes: list | None = None  # [ProcessMemory] when NVML listed them, else None
    torch_allocated: int | None = None
    torch_reserved: int | None = None
    time: float | None = None
    tag: str | None = None  # set to the UUID's start when two ranks would otherwise share a label

    @property
    def label(self) -> str:
        if self.gpu is None:
            return f"GPU of rank {self.rank}"
        base = f"{self.node}:GPU {self.gpu}" if self.node else f"GPU {self.gpu}"
        return f"{base} ({self.tag})" if self.tag else base


@dataclass
class TPGroupBalance:
    """SGLang's rule on one TP group; ranks are global, listed in TP-rank order."""

    ranks: list[int]
    free_bytes: list[int]
    min_free: int
    ratios: list[float]  # min_free / local_free per rank
    failing: list[int]  # ranks on which SGLang raises
    short_ranks: list[int]  # ranks holding the group minimum
    missing_gib: dict[int, float]  # failing rank -> (ratio * local_free - min_free) / 2**30
    ratio: float = TP_MEMORY_RATIO
    labels: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failing

    @property
    def threshold_bytes(self) -> list[float]:
        """Per rank, the least the group minimum must be for SGLang to pass there (ratio x local free)."""
        return [self.ratio * f for f in self.free_bytes]

    @property
    def max_free(self) -> int:
        return max(self.free_bytes)

    @property
    def most_free_ranks(self) -> list[int]:
        """Ranks holding the group's largest free memory: their requirement (ratio x free) is the strictest."""
        return [m for m, f in zip(self.ranks, self.free_bytes) if f == self.max_free]

    @property
    def required_bytes(self) -> float:
        """The free memory the short GPU(s) need for SGLang to pass on every rank: ratio x the largest free."""
        return self.ratio * self.max_free

    @property
    def short_by_gib(self) -> float:
        """How much more free memory (GiB) the short GPU(s) need for the group to pass; 0 when it passes."""
        return max(0.0, (self.required_bytes - self.min_free) / GiB) if self.failing else 0.0

    def explanation(self) -> list[str]:
        """Plain sentences: which GPU is short, which rank(s) raise and why (empty when the group passes)."""
        if self.ok:
            return []
        label = dict(zip(self.ranks, self.labels))
        free = dict(zip(self.ranks, self.free_bytes))
        r = f"{self.ratio:g}"
        short = [_gpu_of(m, label.get(m)) for m in self.short_ranks]
        need = self.most_free_ranks
        need_who = _ranks_words(need)
        verb = "requires" if len(need) == 1 else "require"
        short_words = _join(short)
        lines = [
            f"{_cap(short_words)} {'is' if len(short) == 1 else 'are'} short: {_gib(self.min_free)} free, "
            f"{self.short_by_gib:.2f} GiB less than the {_gib(self.required_bytes)} ({r} x "
            f"{self.max_free / GiB:.2f}) that {need_who} {verb}."
        ]
        raising = [f"rank {m}" + (f" ({label[m]})" if _has_gpu(label.get(m)) else "") for m in self.failing]
        short_at = _join([label[m] if _has_gpu(label.get(m)) else f"the GPU of rank {m}" for m in self.short_ranks])
        if len(self.failing) == 1:
            m = self.failing[0]
            most = " the rank with the most free memory," if m in need else " a rank with more free memory,"
            lines.append(
                f"SGLang raises on {raising[0]},{most} because the group's minimum free memory "
                f"({_gib(self.min_free)}, on {short_at}) is below {r} x its own {_gib(free[m])} "
                f"= {_gib(self.ratio * free[m])}.")
        else:
            own = ", ".join(f"{self.ratio * free[m] / GiB:.2f}" for m in self.failing)
            lines.append(
                f"SGLang raises on {_join(raising)}, the ranks with more free memory, because the group's minimum "
                f"free memory ({_gib(self.min_free)}, on {short_at}) is below {r} x each one's own free memory "
                f"({own} GiB respectively).")
        lines.append(f"{_cap(short_words)} pass{'es' if len(short) == 1 else ''} "
                     f"{'its' if len(short) == 1 else 'their'} own check: the error appears on "
                     f"{_join(raising)}, not on the short GPU.")
        return lines

    def to_dict(self) -> dict:
        return {
            "ranks": list(self.ranks), "labels": list(self.labels), "free_bytes": list(self.free_bytes),
            "free_gib": [f / GiB for f in self.free_bytes], "min_free": self.min_free,
            "min_free_gib": self.min_free / GiB, "ratios": list(self.ratios),
            "threshold_gib": [t / GiB for t in self.threshold_bytes], "failing": list(self.failing),
            "short_ranks": list(self.short_ranks), "missing_gib": dict(self.missing_gib), "ratio": self.ratio,
            "ok": self.ok, "required_gib": self.required_bytes / GiB, "short_by_gib": self.short_by_gib,
            "explanation": self.explanation(),
        }


@dataclass
class Evidence:
    """What the readings say about one known cause.

    ``found``: True (this cause explains part of the gap), False (checked, not seen) or None (no data).
    """

    cause: str  # a key of CAUSES
    found: bool | None
    summary: str
    details: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        return CAUSES.get(self.cause, self.cause)

    @property
    def status(self) -> str:
        return {True: "FOUND", False: "not seen", None: "no data"}[self.found]


@dataclass
class BalanceReport:
    """Result of :func:`balance_report`: per-group verdicts, evidence per cause, advice."""

    groups: list[TPGroupBalance]
    ranks: list[RankMemory]
    evidence: list[Evidence]
    advice: list[str]
    ratio: float = TP_MEMORY_RATIO
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(g.ok for g in self.groups)

    @property
    def failing(self) -> list[int]:
        return [r for g in self.groups for r in g.failing]

    def evidence_for(self, cause: str) -> Evidence | None:
        return next((e for e in self.evidence if e.cause == cause), None)

    def to_dict(self) -> dict:
        """JSON-able dict: ``ok, ratio, groups`` (see :meth:`TPGroupBalance.to_dict`), ``ranks`` (per rank:
        rank, label, node, gpu, uuid, free, total, used, torch_allocated, torch_reserved, other_processes),
        ``evidence`` (cause, title, found, summary, details, data), ``advice``, ``notes``."""
        ranks = []
        for r in self.ranks:
            ranks.append({
                "rank": r.rank, "label": r.label, "node": r.node, "gpu": r.gpu, "uuid": r.uuid, "free": r.free,
                "total": r.total, "used": r.used, "torch_allocated": r.torch_allocated,
                "torch_reserved": r.torch_reserved,
                "other_processes": None if r.processes is None else [asdict(p) for p in _others(r)],
            })
        return {
            "ok": self.ok, "ratio": self.ratio, "groups": [g.to_dict() for g in self.groups], "ranks": ranks,
            "evidence": [{"cause": e.cause, "title": e.title, "found": e.found, "summary": e.summary,
                          "details": list(e.details), "data": e.data} for e in self.evidence],
            "advice": list(self.advice), "notes": list(self.notes),
        }

    # ------------------------------------------------------------------ text
    def headline(self) -> str:
        """One line: OK, or which GPU(s) are short and on which rank(s) SGLang raises."""
        if self.ok:
            return "TP memory balance: OK"
        parts = []
        for g in self.groups:
            if g.ok:
                continue
            label = dict(zip(g.ranks, g.labels))
            short = _join([_gpu_of(m, label.get(m)) for m in g.short_ranks])
            raising = _join([f"rank {m}" + (f" ({label[m]})" if _has_gpu(label.get(m)) else "") for m in g.failing])
            parts.append(f"{short} {'is' if len(g.short_ranks) == 1 else 'are'} short by {g.short_by_gib:.2f} GiB; "
                         f"SGLang raises on {raising}")
        return "TP memory balance: FAIL - " + "; ".join(parts)

    def _row_status(self, g: TPGroupBalance, k: int) -> str:
        rank = g.ranks[k]
        many = len(g.ranks) > 1
        if rank in g.failing:
            return (f"RAISES: group min {g.min_free / GiB:.2f} < {g.threshold_bytes[k] / GiB:.2f} GiB "
                    f"({g.ratio:g} x its free)")
        if rank in g.short_ranks and many:
            if g.ok:
                return "ok (least free)"
            return f"SHORT by {g.short_by_gib:.2f} GiB (least free; passes its own check)"
        return "ok"

    def __str__(self) -> str:
        lines = [self.headline(),
                 f"SGLang's rule: every TP rank checks that the smallest free memory in its group is at least "
                 f"{self.ratio:g} x its own free memory, so it raises on the rank(s) with MORE free memory; the "
                 "short GPU (least free memory) is the cause."]
        by_rank = {r.rank: r for r in self.ranks}
        for gi, g in enumerate(self.groups):
            verdict = "ok" if g.ok else "SGLang raises on rank(s) " + ", ".join(map(str, g.failing))
            lines.append(f"group {gi} (ranks {', '.join(map(str, g.ranks))}): min free {g.min_free / GiB:.2f} GiB"
                         f" - {verdict}")
            lines.extend(f"  {sentence}" for sentence in g.explanation())
            need = f"{self.ratio:g}xfree"
            header = f"  {'rank':>4}  {'gpu':<16} {'free GiB':>9} {'min/free':>9} {need:>10}  status"
            lines.append(header)
            for k, rank in enumerate(g.ranks):
                label = by_rank[rank].label if rank in by_rank else "?"
                lines.append(f"  {rank:>4}  {label:<16} {g.free_bytes[k] / GiB:>9.2f} {g.ratios[k]:>9.3f} "
                             f"{g.threshold_bytes[k] / GiB:>10.2f}  {self._row_status(g, k)}")
        lines.append("Evidence:")
        for e in self.evidence:
            lines.append(f"  [{e.status}] {e.title}: {e.summary}")
            lines.extend(f"      {d}" for d in e.details)
        if self.advice:
            lines.append("Advice:")
            lines.extend(f"  {i}. {a}" for i, a in enumerate(self.advice, 1))
        if self.notes:
            lines.append("Notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        if self.ok:
            head = '<b style="color:#070">OK</b>'
        else:
            head = ('<b style="color:#b00">FAIL</b> &mdash; ' +
                    esc(self.headline().split(" - ", 1)[1]))
        out = [f"<div><p>TP memory balance: {head}</p>"
               f"<p>SGLang's rule: every TP rank checks that the smallest free memory in its group is at least "
               f"{esc(f'{self.ratio:g}')} &times; its own free memory, so it raises on the rank(s) with "
               "<i>more</i> free memory; the short GPU (least free memory) is the cause.</p>"]
        by_rank = {r.rank: r for r in self.ranks}
        for gi, g in enumerate(self.groups):
            out.append(f"<p>group {gi}: min free {g.min_free / GiB:.2f} GiB</p>")
            if not g.ok:
                out.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in g.explanation()) + "</ul>")
            out.append('<table><thead><tr><th>rank</th><th>gpu</th><th>free GiB</th><th>min/free</th>'
                       f'<th>{esc(f"{self.ratio:g}")} &times; free GiB</th><th>status</th></tr></thead><tbody>')
            for k, rank in enumerate(g.ranks):
                label = by_rank[rank].label if rank in by_rank else "?"
                if rank in g.failing:
                    cls, style = "failing", ' style="background:#fdd"'
                elif rank in g.short_ranks and not g.ok:
                    cls, style = "short", ' style="background:#ffe5cc"'
                else:
                    cls, style = "ok", ""
                out.append(f'<tr class="{cls}"{style}><td>{rank}</td><td>{esc(label)}</td>'
                           f"<td>{g.free_bytes[k] / GiB:.2f}</td><td>{g.ratios[k]:.3f}</td>"
                           f"<td>{g.threshold_bytes[k] / GiB:.2f}</td><td>{esc(self._row_status(g, k))}</td></tr>")
            out.append("</tbody></table>")
        out.append("<p>Evidence:</p><ul>")
        for e in self.evidence:
            details = "".join(f"<li>{esc(d)}</li>" for d in e.details)
            out.append(f"<li><b>[{esc(e.status)}]</b> {esc(e.title)}: {esc(e.summary)}"
                       f"{f'<ul>{details}</ul>' if details else ''}</li>")
        out.append("</ul>")
        if self.advice:
            out.append("<p>Advice:</p><ol>" + "".join(f"<li>{esc(a)}</li>" for a in self.advice) + "</ol>")
        if self.notes:
            out.append("<p>Notes:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")
        out.append("</div>")
        return "".join(out)

    def plot(self, ax=None):
        """Bar chart of free memory per rank against SGLang's threshold (``rlkit.viz.plots.plot_balance``)."""
        from rlkit.viz.plots import plot_balance

        return plot_balance(self.to_dict(), ax=ax)


# ------------------------------------------------------------------------------------------ inputs
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ranks_from_input(data: Any, notes: list[str]) -> list[RankMemory]:
    """Normalise snapshots or plain free-byte readings into one RankMemory per TP rank."""
    if isinstance(data, MemorySnapshot):
        data = [data]
    if isinstance(data, Mapping) and data and all(_is_number(v) for v in data.values()):
        return [RankMemory(rank=int(k), free=int(v)) for k, v in sorted(data.items(), key=lambda kv: int(kv[0]))]
    data = list(data)
    if not data:
        raise ValueError("balance_report needs at least one snapshot or free-memory reading")
    if all(_is_number(v) for v in data):
        return [RankMemory(rank=i, free=int(v)) for i, v in enumerate(data)]
    snaps = [_as_snapshot(s, f"snapshots[{i}]") for i, s in enumerate(data)]
    # the latest snapshot per (node, recording rank)
    latest: dict[tuple[str, int], MemorySnapshot] = {}
    for s in snaps:
        key = (s.node, s.rank)
        if key in latest:
            if s.time >= latest[key].time:
                latest[key] = s
        else:
            latest[key] = s
    if len(latest) < len(snaps):
        notes.append(f"{len(snaps)} snapshots for {len(latest)} process(es): using the latest of each")
    snaps = sorted(latest.values(), key=lambda s: (s.rank, s.node))
    without = [s for s in snaps if not s.gpus]
    for s in without:
        notes.append(f"rank {s.rank} on {s.node}: no GPU readings (source {s.source}: {' '.join(s.notes)})")
    snaps = [s for s in snaps if s.gpus]
    if not snaps:
        raise ValueError("no GPU readings in the snapshots; " + " ".join(notes))

    def entry(rank: int, s: MemorySnapshot, g) -> RankMemory:
        return RankMemory(rank=rank, free=g.free, node=s.node, gpu=g.index, uuid=g.uuid, total=g.total, used=g.used,
                          pid=s.pid, processes=list(g.processes) if s.source == "nvml" else None,
                          torch_allocated=g.torch_allocated, torch_reserved=g.torch_reserved, time=s.time)

    if all(len(s.gpus) == 1 for s in snaps):  # one worker per GPU: the snapshot's rank is the TP rank
        ranks = [entry(s.rank, s, s.gpus[0]) for s in snaps]
        if len({r.rank for r in ranks}) < len(ranks):
            raise ValueError("several snapshots from different nodes share a rank; give each worker its own rank")
        return ranks
    # some snapshot covers several GPUs: every distinct GPU is a rank, in (process rank, GPU index) order
    ranks, seen = [], set()
    for s in snaps:
        for g in sorted(s.gpus, key=lambda g: g.index):
            key = (s.node, g.uuid) if g.uuid else (s.node, s.rank, g.index)
            if key in seen:
                continue
            seen.add(key)
            ranks.append(entry(len(ranks), s, g))
    return ranks


def _others(r: RankMemory, own_pids: set[int] | None = None):
    own = {r.pid} if own_pids is None else own_pids
    return [p for p in (r.processes or []) if p.pid not in own]


def _cfg_get(cfg: Any, path: Sequence[str]):
    cur = cfg
    for key in path:
        if cur is None:
            return None
        if isinstance(cur, Mapping):
            cur = cur.get(key) if key in cur else None
        else:
            cur = getattr(cur, key, None)
    return cur


def _is_run_config(cfg: Any) -> bool:
    return (isinstance(cfg, Mapping) and "actor_rollout_ref" in cfg) or hasattr(cfg, "actor_rollout_ref")


def _offload_settings(cfg: Any) -> dict[str, Any]:
    if _is_run_config(cfg):
        return {k: _cfg_get(cfg, p) for k, p in _OFFLOAD_PATHS.items() if _cfg_get(cfg, p) is not None}
    if isinstance(cfg, Mapping):
        return {str(k): v for k, v in cfg.items()}
    raise TypeError(f"per-rank config must be a dict or an rlkit config, got {type(cfg).__name__}")


def _per_rank_config(config: Any) -> tuple[dict[int, dict] | None, dict | None]:
    """(per-rank offload settings, the shared settings of one run config)."""
    if config is None:
        return None, None
    if _is_run_config(config):
        return None, _offload_settings(config)
    if isinstance(config, Mapping):
        try:
            return {int(k): _offload_settings(v) for k, v in config.items()}, None
        except (TypeError, ValueError) as e:
            raise TypeError("config must be a dict rank -> {'param_offload': bool, ...} or one rlkit config "
                            f"({e})") from e
    if isinstance(config, Sequence) and not isinstance(config, str):
        return {i: _offload_settings(v) for i, v in enumerate(config)}, None
    raise TypeError(f"config must be a dict rank -> settings or one rlkit config, got {type(config).__name__}")


# ------------------------------------------------------------------------------------------- report
def balance_report(snapshots: Any, tp_groups: Sequence[Sequence[int]] | None = None, ratio: float = TP_MEMORY_RATIO,
                   config: Any = None, load_times: Mapping[int, float] | None = None,
                   load_spread_s: float = LOAD_SPREAD_S) -> BalanceReport:
    """Apply SGLang's TP memory rule to recorded memory and explain a failure.

    Args:
        snapshots: :class:`MemorySnapshot` objects (or their dicts): one per rank, each with one GPU (the
            snapshot's ``rank`` is the TP rank), or snapshots covering several GPUs (then each GPU is a rank, in
            snapshot-rank then GPU-index order). Plain readings also work: a list of free bytes per rank or a
            dict rank -> free bytes.
        tp_groups: lists of ranks forming each TP group, in TP-rank order (default: one group of all ranks).
        ratio: SGLang's threshold (0.9).
        config: offload settings, either a dict rank -> {"param_offload": bool, "optimizer_offload": bool, ...}
            (or rank -> rlkit config), or one rlkit config shared by every rank.
        load_times: dict rank -> unix time at which that worker loaded its model.
        load_spread_s: load times further apart than this are flagged.
    """
    notes: list[str] = []
    ranks = _ranks_from_input(snapshots, notes)
    labels = [r.label for r in ranks]
    for r in ranks:
        if labels.count(r.label) > 1 and r.uuid:  # one worker per GPU: every one is "GPU 0" in its process
            r.tag = r.uuid[:12]
    by_rank = {r.rank: r for r in ranks}
    if tp_groups is None:
        tp_groups = [[r.rank for r in ranks]]
    groups = []
    for gi, members in enumerate(tp_groups):
        members = [int(m) for m in members]
        unknown = [m for m in members if m not in by_rank]
        if unknown:
            raise ValueError(f"tp_groups[{gi}] names rank(s) {unknown} with no reading; ranks seen: "
                             f"{sorted(by_rank)}")
        if len(set(members)) != len(members):
            raise ValueError(f"tp_groups[{gi}] repeats a rank: {members}")
        groups.append(_group(members, by_rank, ratio))
    run_cfg_util = _cfg_get(config, ("actor_rollout_ref", "rollout", "gpu_memory_utilization")) \
        if _is_run_config(config) else None
    evidence = [
        _evidence_processes(groups, by_rank),
        _evidence_torch(groups, by_rank),
        _evidence_offload(groups, config),
        _evidence_timing(groups, load_times, load_spread_s),
    ]
    report = BalanceReport(groups=groups, ranks=ranks, evidence=evidence, advice=[], ratio=ratio, notes=notes)
    report.advice = _advice(report, by_rank, run_cfg_util)
    return report


def _group(members: list[int], by_rank: dict[int, RankMemory], ratio: float) -> TPGroupBalance:
    free = [by_rank[m].free for m in members]
    min_free = min(free)
    failing = [members[i] for i in tp_memory_imbalance(free, ratio)]
    ratios = [min_free / f if f > 0 else 1.0 for f in free]
    short = [m for m, f in zip(members, free) if f == min_free]
    missing = {m: (ratio * by_rank[m].free - min_free) / GiB for m in failing}
    return TPGroupBalance(ranks=members, free_bytes=free, min_free=min_free, ratios=ratios, failing=failing,
                          short_ranks=short, missing_gib=missing, ratio=ratio,
                          labels=[by_rank[m].label for m in members])


def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def _has_gpu(label: str | None) -> bool:
    return bool(label) and not label.startswith("GPU of rank")


def _gpu_of(rank: int, label: str | None) -> str:
    """'node0:GPU 1 (rank 1)', or 'the GPU of rank 1' for plain readings."""
    return f"{label} (rank {rank})" if _has_gpu(label) else f"the GPU of rank {rank}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ranks_words(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + _join([str(r) for r in ranks])


def _cap(text: str) -> str:
    """Sentence start: 'the GPU of rank 1' -> 'The GPU of rank 1'; GPU labels are left as they are."""
    return "The" + text[3:] if text.startswith("the ") else text


def _evidence_processes(groups: list[TPGroupBalance], by_rank: dict[int, RankMemory]) -> Evidence:
    own_pids = {r.pid: r.rank for r in by_rank.values() if r.pid is not None}
    if all(by_rank[m].processes is None for g in groups for m in g.ranks):
        return Evidence("other_processes", None, "no per-process readings (they need NVML: `pip install "
                        "nvidia-ml-py`); check the short GPU with `nvidia-smi`")
    found, details, data = False, [], {}
    for gi, g in enumerate(groups):
        def other_bytes(m):
            r = by_rank[m]
            return None if r.processes is None else sum(p.bytes for p in _others(r))

        known = [other_bytes(m) for m in g.ranks if other_bytes(m) is not None]
        floor = min(known) if known else 0
        for m in g.short_ranks:
            r = by_rank[m]
            if r.processes is None:
                details.append(f"rank {m} ({r.label}): no process list")
                continue
            others = sorted(_others(r), key=lambda p: -p.bytes)
            total = sum(p.bytes for p in others)
            data[m] = [{"pid": p.pid, "name": p.name, "gib": p.bytes / GiB,
                        "rlkit_rank": own_pids.get(p.pid)} for p in others]
            if not others:
                details.append(f"rank {m} ({r.label}): no other process")
                continue
            listed = ", ".join(
                f"pid {p.pid} ({p.name or '?'}{', rlkit rank %d' % own_pids[p.pid] if p.pid in own_pids else ''}) "
                f"{_gib(p.bytes)}" for p in others)
            details.append(f"rank {m} ({r.label}): {_gib(total)} held by other processes: {listed}")
            if not g.ok and total - floor >= SIGNIFICANT_BYTES:
                found = True
    if found:
        summary = "other processes hold memory on the short GPU"
    else:
        summary = "no significant memory of other processes on the short GPU"
    return Evidence("other_processes", found, summary, details, data)


def _evidence_torch(groups: list[TPGroupBalance], by_rank: dict[int, RankMemory]) -> Evidence:
    if all(by_rank[m].torch_reserved is None for g in groups for m in g.ranks):
        return Evidence("torch_memory", None, "no torch readings (torch.cuda was not initialised where the snapshots "
                        "were taken)")
    found, details, data = False, [], {}
    for gi, g in enumerate(groups):
        reserved = {m: by_rank[m].torch_reserved for m in g.ranks if by_rank[m].torch_reserved is not None}
        if not reserved:
            continue
        spread = max(reserved.values()) - min(reserved.values())
        data[gi] = {"reserved_spread_gib": spread / GiB}
        for m in g.ranks:
            r = by_rank[m]
            if r.torch_reserved is None:
                details.append(f"rank {m} ({r.label}): no torch readings")
                continue
            cached = r.torch_reserved - (r.torch_allocated or 0)
            details.append(f"rank {m} ({r.label}): allocated {_gib(r.torch_allocated or 0)}, reserved "
                           f"{_gib(r.torch_reserved)} (cached, freeable by empty_cache: {_gib(cached)})")
            data.setdefault("ranks", {})[m] = {"allocated_gib": (r.torch_allocated or 0) / GiB,
                                               "reserved_gib": r.torch_reserved / GiB, "cached_gib": cached / GiB}
        details.append(f"group {gi}: reserved spread {_gib(spread)} (max - min over ranks)")
        if not g.ok:
            for m in g.short_ranks:
                res = by_rank[m].torch_reserved
                if res is not None and res - min(reserved.values()) >= SIGNIFICANT_BYTES:
                    found = True
    summary = ("torch holds more memory on the short GPU than on the others" if found
               else "torch memory is even across ranks")
    return Evidence("torch_memory", found, summary, details, data)


def _evidence_offload(groups: list[TPGroupBalance], config: Any) -> Evidence:
    per_rank, shared = _per_rank_config(config)
    if per_rank is None and shared is None:
        return Evidence("offload", None, "no config given (pass config= a dict rank -> offload settings or the "
                        "run config)")
    if shared is not None:
        listed = ", ".join(f"{k}={v}" for k, v in shared.items())
        details = [f"one config for every rank: {listed}"]
        roles = {k.rsplit(".", 1)[-1] for k in shared}
        for setting in sorted(roles):
            vals = {k: v for k, v in shared.items() if k.endswith(setting)}
            if len(set(map(bool, vals.values()))) > 1:
                details.append(f"roles differ in {setting} ({', '.join(f'{k}={v}' for k, v in vals.items())}): "
                               "the same on every rank, but ranks that have loaded only some roles differ until "
                               "all have loaded")
        return Evidence("offload", False, "the same offload settings on every rank (one config)", details,
                        {"shared": shared})
    found, details, data = False, [], {}
    for gi, g in enumerate(groups):
        have = [m for m in g.ranks if m in per_rank]
        missing = [m for m in g.ranks if m not in per_rank]
        if missing:
            details.append(f"group {gi}: no settings for rank(s) {missing}")
        keys = sorted({k for m in have for k in per_rank[m]})
        for key in keys:
            values = {m: per_rank[m].get(key, "unset") for m in have}
            if len({repr(v) for v in values.values()}) > 1:
                found = True
                by_value: dict[str, list[int]] = {}
                for m, v in values.items():
                    by_value.setdefault(repr(v), []).append(m)
                details.append(f"group {gi}: {key} differs: " +
                               "; ".join(f"{v} on rank(s) {rs}" for v, rs in by_value.items()))
                data.setdefault(key, {}).update(values)
    summary = ("offload settings differ between ranks of a TP group" if found
               else "the same offload settings on every rank")
    return Evidence("offload", found, summary, details, data)


def _evidence_timing(groups: list[TPGroupBalance], load_times: Mapping[int, float] | None,
                     spread_s: float) -> Evidence:
    if not load_times:
        return Evidence("load_timing", None, "no load times given (pass load_times= a dict rank -> unix time)")
    times = {int(k): float(v) for k, v in load_times.items()}
    found, details, data = False, [], {}
    for gi, g in enumerate(groups):
        have = {m: times[m] for m in g.ranks if m in times}
        if len(have) < 2:
            continue
        first = min(have.values())
        spread = max(have.values()) - first
        data[gi] = {"spread_s": spread, "offsets_s": {m: t - first for m, t in have.items()}}
        order = sorted(have, key=have.get)
        details.append(f"group {gi}: loaded over {spread:.1f} s: " +
                       ", ".join(f"rank {m} +{have[m] - first:.1f} s" for m in order))
        if spread > spread_s:
            found = True
            if not g.ok:
                early = [m for m in g.short_ranks if have.get(m) == first]
                if early:
                    details.append(f"group {gi}: the short rank(s) {early} loaded first; the others may not have "
                                   "allocated yet when memory was measured")
    summary = (f"workers loaded more than {spread_s:g} s apart" if found
               else f"workers loaded within {spread_s:g} s of each other")
    return Evidence("load_timing", found, summary, details, data)


def _advice(report: BalanceReport, by_rank: dict[int, RankMemory], gpu_util: Any) -> list[str]:
    if report.ok:
        return []
    ev = {e.cause: e for e in report.evidence}
    bad = [g for g in report.groups if not g.ok]
    short = sorted({m for g in bad for m in g.short_ranks})
    advice = []
    procs = ev["other_processes"]
    if procs.found:
        for m in short:
            r = by_rank[m]
            others = [p for p in _others(r) if p.bytes > 0]
            if others:
                pids = ", ".join(f"{p.pid} ({p.name or '?'}, {_gib(p.bytes)})" for p in others)
                advice.append(f"Free {r.label} (rank {m}): stop the other processes using it - pid(s) {pids} - "
                              "(check with `nvidia-smi`), or place the workers on GPUs nobody else uses "
                              "(CUDA_VISIBLE_DEVICES / Ray resources).")
    elif procs.found is None:
        advice.append(f"Check what else runs on {', '.join(by_rank[m].label for m in short)} (`nvidia-smi`); "
                      "install nvidia-ml-py (`pip install nvidia-ml-py`) so rlkit can list the processes.")
    torch_ev = ev["torch_memory"]
    cached_short = [m for m in short if by_rank[m].torch_reserved is not None
                    and by_rank[m].torch_reserved - (by_rank[m].torch_allocated or 0) >= SIGNIFICANT_BYTES]
    if torch_ev.found or cached_short or torch_ev.found is None:
        which = (f" on rank(s) {cached_short}" if cached_short else "")
        advice.append(f"Call torch.cuda.empty_cache(){which} before the engine starts: memory cached by torch's "
                      "allocator counts as used for SGLang.")
    if torch_ev.found or ev["load_timing"].found or not any(e.found for e in report.evidence):
        advice.append("Mind the release order: start the SGLang engine before loading the training state (actor, "
                      "reference, critic, optimizer), or sleep the engine / offload the training state before the "
                      "TP group forms, so every rank has the same free memory at that moment.")
    if ev["offload"].found:
        keys = ", ".join(sorted(ev["offload"].data))
        advice.append(f"Use the same offload settings on every rank (differing: {keys}): set "
                      "actor_rollout_ref.actor.fsdp_config.param_offload / optimizer_offload (and ref/critic) "
                      "identically for all workers.")
    if ev["load_timing"].found:
        advice.append("Workers loaded at different times: wait for every worker to finish loading (a barrier, e.g. "
                      "ray.get on all workers' init calls) and start the engine at the same point on each.")
    min_free = min(g.min_free for g in bad)
    now = f" (now {gpu_util})" if gpu_util is not None else ""
    advice.append(f"Lower {GPU_UTIL_KEY}{now} if the GPUs stay shared: SGLang sizes the engine as that fraction "
                  f"of the smallest free memory in the group ({_gib(min_free)}), so a lower value leaves room for "
                  "training state and other processes (it does not make the check pass).")
    advice.append(f"Last resort: {TP_CHECK_KEY}=warn starts the engine anyway (SGLang's check off, rlkit warns); "
                  f"the KV cache is then sized from the smallest free memory ({_gib(min_free)}), so the ranks "
                  "with more free memory leave the difference unused.")
    return advice


# ------------------------------------------------------------------------------------------ pre-flight
def check_before_engine(free_bytes_by_rank: Any, mode: str, *, tp_groups: Sequence[Sequence[int]] | None = None,
                        ratio: float = TP_MEMORY_RATIO, config: Any = None,
                        load_times: Mapping[int, float] | None = None) -> BalanceReport | None:
    """Pre-flight on live readings before SGLang starts (it kills its launcher when its own check fails).

    ``free_bytes_by_rank``: a list (index = rank) or dict rank -> free bytes, or snapshots (as for
    :func:`balance_report`). ``mode`` is ``rollout.tp_memory_check``: ``error`` raises
    :class:`TPMemoryImbalanceError` (message = the report), ``warn`` warns with the report, ``off`` returns None
    without checking. Returns the report otherwise.
    """
    if check_tp_memory_mode(mode) == "off":
        return None
    report = balance_report(free_bytes_by_rank, tp_groups=tp_groups, ratio=ratio, config=config,
                            load_times=load_times)
    if report.ok:
        return report
    if mode == "error":
        raise TPMemoryImbalanceError(report)
    warnings.warn(str(report), TPMemoryImbalanceWarning, stacklevel=2)
    return report


def preflight_tp_memory(tp_size: int, mode: str, *, config: Any = None, rank: int = 0) -> MemorySnapshot:
    """The engine's pre-flight: read this process's first ``tp_size`` GPUs now and apply
    :func:`check_before_engine` to them (when ``tp_size > 1``).

    ``mode`` is the effective ``rollout.tp_memory_check`` (error raises :class:`TPMemoryImbalanceError`,
    warn warns with the report, off skips the check); ``config`` is the run config (offload evidence,
    ``gpu_memory_utilization`` in the advice). Returns the reading (phase ``engine_preflight``), taken
    with :func:`~rlkit.diagnostics.memory.snapshot`, so it never creates a CUDA context.
    """
    check_tp_memory_mode(mode)
    if tp_size > 1 and mode != "off" and torch.cuda.is_available() and torch.cuda.device_count() < tp_size:
        raise RuntimeError(f"rollout.tensor_model_parallel_size={tp_size} but this worker sees "
                           f"{torch.cuda.device_count()} GPU(s)")
    snap = snapshot(rank=rank, phase="engine_preflight", event="start", devices=range(tp_size))
    if tp_size > 1:
        check_before_engine([snap], mode, config=config)
    return snap
