"""Matplotlib figures for memory snapshots, TP memory balance, training history and rollouts.

Every function takes plain data (pandas DataFrames / dicts) and returns a
``matplotlib.figure.Figure`` built without pyplot: nothing is registered with a pyplot figure
manager, so nothing is shown twice in a notebook, nothing leaks, and the functions work on saved
traces on a machine without GPUs. matplotlib is imported inside the functions only.

Data contracts are described in :mod:`rlkit.viz`.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

GIB = float(1 << 30)

MEMORY_COLUMNS = ("step", "phase", "event", "node", "rank", "gpu", "metric", "bytes")
SEGMENT_LABELS = ("torch allocated", "reserved, not allocated", "other processes", "free")
SEGMENT_COLORS = ("#1f77b4", "#9ecae1", "#ff7f0e", "#d9d9d9")
FAIL_COLOR = "#d62728"
OK_COLOR = "#2ca02c"
SHORT_COLOR = "#ff7f0e"

# (panel title, metrics overlaid in that panel). Panels without any data are skipped.
DEFAULT_TRAINING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("score", ("critic/score/mean",)),
    ("reward", ("critic/rewards/mean",)),
    ("KL (ppo_kl)", ("actor/ppo_kl",)),
    ("KL loss", ("actor/kl_loss",)),
    ("clip fraction", ("actor/pg_clipfrac",)),
    ("entropy", ("actor/entropy",)),
    ("response length", ("response_length/mean", "response_length/max")),
    ("throughput (tokens/s/GPU)", ("perf/throughput",)),
    ("value loss", ("critic/vf_loss",)),
)


# ----------------------------------------------------------------------------- helpers
def _new_figure(figsize: tuple[float, float]):
    """A pyplot-free Figure (constrained layout) that still displays as PNG in IPython."""
    from matplotlib.figure import Figure

    _ensure_ipython_png()
    return Figure(figsize=figsize, layout="constrained")


_PNG_REGISTERED = False


def _ensure_ipython_png() -> None:
    """Make IPython render bare Figures as PNG (pyplot's inline backend normally registers this).

    Only acts inside a running IPython shell that has no formatter for Figure yet.
    """
    global _PNG_REGISTERED
    if _PNG_REGISTERED:
        return
    import sys

    if "IPython" not in sys.modules:
        return
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure

        ip = get_ipython()
        if ip is None:
            return
        fmt = ip.display_formatter.formatters["image/png"]
        try:
            fmt.lookup_by_type(Figure)
        except KeyError:
            from IPython.core.pylabtools import print_figure

            fmt.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))
        _PNG_REGISTERED = True
    except Exception:  # pragma: no cover - display nicety only
        pass


def _require_frame(df: Any, name: str, columns: Iterable[str] = ()) -> pd.DataFrame:
    if df is None:
        raise ValueError(f"{name} is None")
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise ValueError(f"{name} is empty: nothing to plot")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(df.columns)}")
    return df


def _gpu_label(node: Any, rank: Any, gpu: Any, multi_node: bool) -> str:
    try:
        g = int(gpu)
    except (TypeError, ValueError):
        g = gpu
    dev = "host" if g == -1 else f"gpu{g}"
    try:
        r = f"r{int(rank)}"
    except (TypeError, ValueError):
        r = f"r{rank}"
    if multi_node:
        n = "" if node is None or (isinstance(node, float) and math.isnan(node)) else str(node)
        return f"{n}/{r}/{dev}"
    return f"{r}/{dev}"


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    multi = df["node"].nunique(dropna=False) > 1
    df["label"] = [_gpu_label(n, r, g, multi) for n, r, g in zip(df["node"], df["rank"], df["gpu"])]
    return df


def _snapshot_order(mem: pd.DataFrame) -> pd.DataFrame:
    """Unique (step, phase, event) snapshots in time order: by step, then by time (or row order)."""
    keys = ["step", "phase", "event"]
    d = mem[keys].copy()
    d["_row"] = np.arange(len(mem))
    if "time" in mem.columns:
        d["_t"] = _epoch_seconds(mem["time"])
    else:
        d["_t"] = np.nan
    snaps = d.groupby(keys, sort=False, dropna=False).agg(_t=("_t", "min"), _row=("_row", "min")).reset_index()
    # within a step order by time when known, else by first appearance
    snaps["_tkey"] = snaps["_t"].fillna(np.inf)
    # snapshots without a step (set-up before the first step) come first
    snaps = snaps.sort_values(["step", "_tkey", "_row"], kind="stable", na_position="first").reset_index(drop=True)
    return snaps[keys]


def _same(a: Any, b: Any) -> bool:
    """Equality that treats missing values (None, NaN, pd.NA) as equal to each other."""
    na, nb = bool(pd.isna(a)), bool(pd.isna(b))
    if na or nb:
        return na and nb
    return bool(a == b)


def _epoch_seconds(values: Any) -> np.ndarray:
    """Snapshot times as float unix seconds (accepts floats or pandas datetimes)."""
    ser = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(ser):
        if getattr(ser.dt, "tz", None) is None:
            ser = ser.dt.tz_localize("UTC")
        return (ser - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
    return pd.to_numeric(ser, errors="coerce").to_numpy(dtype=float)


def fmt_time(t: Any) -> str:
    """Unix seconds (or a datetime) as ``YYYY-MM-DD HH:MM:SS UTC``; ``"-"`` when unknown."""
    secs = _epoch_seconds([t])[0]
    if np.isnan(secs):
        return "-"
    return pd.Timestamp(secs, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_span(times: Any) -> str | None:
    """'2026-11-26 14:03:12 to 14:06:01 UTC' (the date once when both ends share it); None without times."""
    secs = _epoch_seconds(times)
    secs = secs[~np.isnan(secs)]
    if not len(secs):
        return None
    lo, hi = (pd.Timestamp(v, unit="s", tz="UTC") for v in (secs.min(), secs.max()))
    if lo.date() == hi.date():
        return f"{lo:%Y-%m-%d %H:%M:%S} to {hi:%H:%M:%S} UTC"
    return f"{lo:%Y-%m-%d %H:%M:%S} to {hi:%Y-%m-%d %H:%M:%S} UTC"


def _integer_ticks(axis) -> None:
    """Integer tick positions only (steps, counts): never 1.5 steps."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _fmt_step(step: Any) -> str:
    if step is None or (not isinstance(step, (list, tuple)) and bool(pd.isna(step))):
        return "-"
    try:
        f = float(step)
        return str(int(f)) if f.is_integer() else str(step)
    except (TypeError, ValueError):
        return str(step)


# ----------------------------------------------------------------------------- memory bars
def memory_snapshot_table(mem_df: pd.DataFrame, step=None, phase=None, event: str = "end") -> tuple[pd.DataFrame, dict]:
    """Per-GPU GiB segments for one snapshot: the data behind :func:`plot_memory_bars`.

    Returns ``(table, info)``: ``table`` indexed by GPU label with columns ``torch allocated``,
    ``reserved, not allocated``, ``other processes``, ``free``, ``used``, ``total`` (GiB) and
    ``torch_missing`` (bool); ``info`` has the chosen ``step``, ``phase``, ``event``,
    ``host_rss`` ({label: GiB}) and ``time`` (unix seconds of the snapshot, None without a time column).
    """
    mem = _require_frame(mem_df, "mem_df", MEMORY_COLUMNS)
    steps = mem["step"].dropna().unique()
    if step is None:
        step = max(steps)
    at_step = mem[mem["step"] == step]
    if at_step.empty:
        raise ValueError(f"step {step!r} not in the memory frame; steps present: {sorted(steps.tolist())}")
    events = sorted(at_step["event"].dropna().unique().tolist())
    if event is None:
        snaps = _snapshot_order(at_step)
    else:
        snaps = _snapshot_order(at_step[at_step["event"] == event])
    if phase is None:
        if snaps.empty:
            raise ValueError(f"no {event!r} snapshots at step {step}; events present: {events}")
        phase = snaps["phase"].iloc[-1]
    sel_snaps = snaps[snaps["phase"] == phase]
    if sel_snaps.empty:
        phases = _snapshot_order(at_step)["phase"].drop_duplicates().tolist()
        raise ValueError(f"no snapshot for phase {phase!r} (event {event!r}) at step {step}; "
                         f"phases present: {phases}, events: {events}")
    event = sel_snaps["event"].iloc[-1]
    sel = at_step[(at_step["phase"] == phase) & (at_step["event"] == event)]
    when = None
    if "time" in sel.columns:
        secs = _epoch_seconds(sel["time"])
        secs = secs[~np.isnan(secs)]
        when = float(secs.min()) if len(secs) else None
    sel = _with_labels(sel)
    host = sel[(sel["metric"] == "host_rss")]
    host_rss = {lab: float(b) / GIB for lab, b in zip(host["label"], pd.to_numeric(host["bytes"], errors="coerce"))}
    gpus = sel[(sel["metric"] != "host_rss") & (pd.to_numeric(sel["gpu"], errors="coerce") != -1)]
    if gpus.empty:
        raise ValueError(f"no per-GPU rows at step {step}, phase {phase!r}, event {event!r}")
    gpus = gpus.assign(bytes=pd.to_numeric(gpus["bytes"], errors="coerce"))
    order = gpus.sort_values(["node", "rank", "gpu"], kind="stable")["label"].drop_duplicates().tolist()
    wide = gpus.pivot_table(index="label", columns="metric", values="bytes", aggfunc="last").reindex(order)
    wide = wide / GIB

    def col(name):
        return wide[name] if name in wide.columns else pd.Series(np.nan, index=wide.index)

    total, used, free = col("total"), col("used"), col("free")
    used = used.fillna(total - free)
    free = free.fillna(total - used)
    total = total.fillna(used + free)
    if used.isna().any() or free.isna().any():
        bad = used.index[used.isna() | free.isna()].tolist()
        raise ValueError(f"need two of total/used/free per GPU; missing for {bad}")
    alloc, reserved = col("torch_allocated"), col("torch_reserved")
    torch_missing = alloc.isna() & reserved.isna()
    alloc = alloc.fillna(0.0)
    reserved = reserved.fillna(alloc)
    reserved_free = (reserved - alloc).clip(lower=0.0)
    # Everything the device reports as used that torch's allocator does not hold: other processes
    # (e.g. an inference engine's memory pool in a child process) plus this process's CUDA context.
    other = (used - reserved).clip(lower=0.0)
    table = pd.DataFrame({
        SEGMENT_LABELS[0]: alloc, SEGMENT_LABELS[1]: reserved_free, SEGMENT_LABELS[2]: other,
        SEGMENT_LABELS[3]: free.clip(lower=0.0), "used": used, "total": total, "torch_missing": torch_missing,
    })
    return table, {"step": step, "phase": phase, "event": event, "host_rss": host_rss, "time": when}


def plot_memory_bars(mem_df: pd.DataFrame, step=None, phase=None, event: str = "end", ax=None):
    """Stacked per-GPU bars (GiB) for one (step, phase, event) snapshot.

    Segments: torch allocated / reserved, not allocated / other processes / free. ``step=None``
    picks the latest step, ``phase=None`` the last phase of that step with an ``event`` snapshot.
    Missing torch numbers (NaN: a GPU seen from another process) count as 0 and are noted on
    the figure. "other processes" is used minus torch-reserved: it includes memory of other
    processes (e.g. SGLang's KV pool in its scheduler process) and this process's CUDA context.
    The title gives the snapshot's time (UTC) when the frame has a ``time`` column.
    """
    table, info = memory_snapshot_table(mem_df, step=step, phase=phase, event=event)
    if ax is None:
        fig = _new_figure((max(6.0, 1.5 + 0.9 * len(table)), 4.2))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for label, color in zip(SEGMENT_LABELS, SEGMENT_COLORS):
        vals = table[label].to_numpy(dtype=float)
        ax.bar(x, vals, bottom=bottom, color=color, label=label, width=0.7, edgecolor="white", linewidth=0.5)
        bottom = bottom + vals
    for xi, (u, t) in enumerate(zip(table["used"], table["total"])):
        ax.text(xi, bottom[xi], f"{u:.1f}/{t:.0f} GiB", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(table.index.tolist(), rotation=30 if len(table) > 4 else 0, ha="right" if len(table) > 4 else "center")
    ax.set_ylabel("memory (GiB)")
    ax.set_ylim(0, float(np.nanmax(bottom)) * 1.12 if np.nanmax(bottom) > 0 else 1.0)
    when = f"\n{fmt_time(info['time'])}" if info.get("time") is not None else ""
    ax.set_title(f"GPU memory at step {_fmt_step(info['step'])}, {info['phase']} ({info['event']}){when}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    notes = []
    if table["torch_missing"].any():
        miss = table.index[table["torch_missing"]].tolist()
        notes.append(f"torch numbers missing for {', '.join(miss)}: counted as 0")
    if info["host_rss"]:
        notes.append("host RSS: " + ", ".join(f"{k} {v:.1f} GiB" for k, v in info["host_rss"].items()))
    if notes:
        ax.text(0.0, -0.18 if len(table) <= 4 else -0.3, "\n".join(notes), transform=ax.transAxes,
                fontsize=8, va="top", color="#555555")
    return fig


# ----------------------------------------------------------------------------- memory timeline
TIMELINE_X = ("phase", "time")


def _draw_memory_timeline(ax, mem_df: pd.DataFrame, metric: str = "used", max_ticks: int = 40,
                          x: str = "phase") -> None:
    mem = _require_frame(mem_df, "mem_df", MEMORY_COLUMNS)
    if x not in TIMELINE_X:
        raise ValueError(f"x must be one of {TIMELINE_X}, got {x!r}")
    present = mem["metric"].dropna().unique().tolist()
    rows = mem[mem["metric"] == metric]
    if rows.empty:
        raise ValueError(f"metric {metric!r} not in the memory frame; metrics present: {sorted(present)}")
    has_time = "time" in mem.columns and not np.isnan(_epoch_seconds(mem["time"])).all()
    if x == "time" and not has_time:
        raise ValueError("x='time' needs a 'time' column (unix seconds or datetimes) in the memory frame")
    snaps = _snapshot_order(mem)
    n = len(snaps)
    if x == "time":
        import matplotlib.dates as mdates

        t = mem[["step", "phase", "event"]].assign(_t=_epoch_seconds(mem["time"]))
        first = t.groupby(["step", "phase", "event"], sort=False, dropna=False)["_t"].min().reset_index()
        snaps = snaps.merge(first, on=["step", "phase", "event"], how="left")
        when = pd.to_datetime(snaps["_t"], unit="s", utc=True)
        xs = mdates.date2num(when.dt.tz_localize(None).to_numpy())
    else:
        xs = np.arange(n, dtype=float)
    snaps = snaps.assign(_x=np.arange(n))
    rows = _with_labels(rows).merge(snaps[["step", "phase", "event", "_x"]], on=["step", "phase", "event"],
                                    how="inner")
    rows = rows.assign(gib=pd.to_numeric(rows["bytes"], errors="coerce") / GIB)
    order = rows.sort_values(["node", "rank", "gpu"], kind="stable")["label"].drop_duplicates().tolist()
    for lab in order:
        r = rows[rows["label"] == lab].groupby("_x")["gib"].last().reindex(range(n))
        ax.plot(xs, r.to_numpy(dtype=float), marker="o" if n <= 60 else None, ms=3, lw=1.3, label=lab)
    steps = snaps["step"].tolist()
    bounds = [i for i in range(1, n) if not _same(steps[i], steps[i - 1])]
    # step separators (a LineCollection, so ax.lines holds only the per-GPU lines) and step labels
    if bounds:
        ax.vlines([(xs[b - 1] + xs[b]) / 2 for b in bounds], 0, 1, transform=ax.get_xaxis_transform(),
                  colors="#888888", linestyles=":", linewidth=0.8)
    starts = [0] + bounds
    ends = bounds + [n]
    kk = max(1, math.ceil(len(starts) / 20))
    for j, (s0, e0) in enumerate(zip(starts, ends)):
        if j % kk == 0:
            ax.text((xs[s0] + xs[e0 - 1]) / 2, 1.01, f"step {_fmt_step(steps[s0])}",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7, color="#555555")
    if x == "time":
        import matplotlib.dates as mdates

        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=max(3, min(max_ticks, 12))))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M:%S"))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("time (UTC)", fontsize=8)
        pad = max((xs[-1] - xs[0]) * 0.02, 1.0 / 86400) if n else 0
        ax.set_xlim(xs[0] - pad, xs[-1] + pad)
    else:
        both = snaps["event"].nunique() > 1
        labels = [p if (not both or e == "end") else f"{p} ({e})" for p, e in zip(snaps["phase"], snaps["event"])]
        k = max(1, math.ceil(n / max_ticks))
        ticks = list(range(0, n, k))
        ax.set_xticks(ticks)
        ax.set_xticklabels([labels[i] for i in ticks], rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.5, n - 0.5)
        span = _time_span(mem["time"]) if has_time else None
        ax.set_xlabel("phase, in snapshot order" + (f" (recorded {span})" if span else ""), fontsize=8)
    ax.set_ylabel(f"{metric} (GiB)")
    ax.set_ylim(bottom=0)
    if len(order) <= 16:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def plot_memory_timeline(mem_df: pd.DataFrame, metric: str = "used", max_ticks: int = 40, x: str = "phase"):
    """One line per GPU (GiB of ``metric``) across the sequence of (step, phase, event) snapshots.

    ``x="phase"`` (default): one x position per snapshot, ticks name the phases (thinned to at most
    ``max_ticks``) and the x label gives the recording's dates (UTC). ``x="time"``: a date axis (UTC)
    at the snapshots' times. Dotted lines separate steps. ``metric="host_rss"`` plots host memory per
    rank instead.
    """
    fig = _new_figure((11.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    _draw_memory_timeline(ax, mem_df, metric=metric, max_ticks=max_ticks, x=x)
    ax.set_title(f"memory '{metric}' per GPU across phases (GiB)", pad=14)
    return fig


# ----------------------------------------------------------------------------- TP balance
def _balance_groups(balance: dict) -> list[dict]:
    if not isinstance(balance, dict):
        raise ValueError(f"balance must be a dict (BalanceReport.to_dict()), got {type(balance).__name__}")
    groups = balance.get("groups") or []
    if not groups:
        raise ValueError("balance dict has no groups: nothing to plot")
    threshold = float(balance.get("ratio", 0.9))
    out = []
    for gi, g in enumerate(groups):
        ranks = list(g.get("ranks") or [])
        free = [float(b) / GIB if b is not None else np.nan for b in (g.get("free_bytes") or [])]
        if not ranks and free:
            ranks = list(range(len(free)))
        if not ranks:
            raise ValueError(f"balance group {gi} has no ranks")
        if free and len(free) != len(ranks):
            raise ValueError(f"balance group {gi}: {len(ranks)} ranks but {len(free)} free_bytes")
        if not free:
            free = [np.nan] * len(ranks)
        ratios = g.get("ratios")
        if ratios is None or len(ratios) != len(ranks):
            mn = np.nanmin(free) if not all(np.isnan(free)) else np.nan
            ratios = [mn / f if f and not np.isnan(f) else np.nan for f in free]
        ratios = [float(r) if r is not None else np.nan for r in ratios]
        failing = g.get("failing")
        if failing is None:
            failing = [r for r, q in zip(ranks, ratios) if not np.isnan(q) and q < threshold]
        missing = {int(k): float(v) for k, v in (g.get("missing_gib") or {}).items()}
        labels = g.get("labels") or [f"rank {r}" for r in ranks]
        known = [f for f in free if not np.isnan(f)]
        short = g.get("short_ranks")
        if short is None:  # the least free GPU(s)
            short = [r for r, f in zip(ranks, free) if known and f == min(known)]
        failing = {int(r) for r in failing}
        # what the short GPU needs for every rank to pass: ratio x the largest free memory in the group
        required = float(g["required_gib"]) if g.get("required_gib") is not None else (
            threshold * max(known) if known else np.nan)
        if g.get("short_by_gib") is not None:
            short_by = float(g["short_by_gib"])
        else:
            short_by = max(0.0, required - min(known)) if known and failing else 0.0
        out.append({"ranks": ranks, "free": free, "ratios": ratios, "failing": failing,
                    "short": {int(r) for r in short}, "missing": missing, "labels": list(labels),
                    "required": required, "short_by": short_by})
    return out


def _balance_headline(groups: list[dict], ok: Any) -> str:
    """'GPU 1 is short by 16.7 GiB; SGLang raises on rank 0 (GPU 0)', per failing group."""
    parts = []
    for g in groups:
        if not g["failing"]:
            continue
        lab = dict(zip((int(r) for r in g["ranks"]), g["labels"]))
        short = ", ".join(lab[r] for r in sorted(g["short"]) if r in lab)
        raising = ", ".join(f"rank {r}" + (f" ({lab[r]})" if not lab[r].startswith("rank ") else "")
                            for r in sorted(g["failing"]))
        verb = "is" if len(g["short"]) == 1 else "are"
        parts.append(f"{short} {verb} short by {g['short_by']:.1f} GiB; SGLang raises on {raising}")
    return "; ".join(parts)


def _label_bars(ax, xs, heights, fmt: str, notes, lift: float = 0.0) -> None:
    """Write each bar's value (``fmt``, "n/a" for NaN) and its note above it."""
    for x, h, note in zip(xs, heights, notes):
        txt = ("n/a" if np.isnan(h) else fmt.format(h)) + note
        ax.text(x, (0 if np.isnan(h) else h) + lift, txt, ha="center", va="bottom", fontsize=7)


def _draw_balance(ax_ratio, ax_free, balance: dict) -> None:
    groups = _balance_groups(balance)
    threshold = float(balance.get("ratio", 0.9))
    x0 = 0
    ticks, ticklabels = [], []
    for gi, g in enumerate(groups):
        xs = np.arange(x0, x0 + len(g["ranks"]))
        fail = [int(r) in g["failing"] for r in g["ranks"]]
        short = [int(r) in g["short"] and bool(g["failing"]) for r in g["ranks"]]
        if ax_ratio is not None:
            colors = [FAIL_COLOR if f else OK_COLOR for f in fail]
            ax_ratio.bar(xs, np.nan_to_num(g["ratios"]), color=colors, width=0.7)
            notes = [f" < {threshold:g}\nSGLang raises here" if f else ("\nshort GPU, passes" if sh else "")
                     for f, sh in zip(fail, short)]
            _label_bars(ax_ratio, xs, g["ratios"], "{:.2f}", notes, lift=0.02)
        if ax_free is not None:
            colors = [SHORT_COLOR if sh else (FAIL_COLOR if f else "#1f77b4") for f, sh in zip(fail, short)]
            ax_free.bar(xs, np.nan_to_num(g["free"]), color=colors, width=0.7)
            notes = [f"\nshort by {g['short_by']:.1f} GiB" if sh else ("\nraises" if f else "")
                     for f, sh in zip(fail, short)]
            _label_bars(ax_free, xs, g["free"], "{:.1f} GiB", notes)
            if not np.isnan(g["required"]):
                ax_free.hlines(g["required"], xs[0] - 0.4, xs[-1] + 0.4, colors="k", linestyles="--", linewidth=1)
                ax_free.text(xs[-1] + 0.42, g["required"], f" {g['required']:.1f}", ha="left", va="center",
                             fontsize=7)
        if len(groups) > 1:
            for a in (ax_ratio, ax_free):
                if a is not None:
                    a.text((xs[0] + xs[-1]) / 2, 0.98, f"group {gi}", transform=a.get_xaxis_transform(),
                           ha="center", va="top", fontsize=8, color="#555555")
        ticks.extend(xs.tolist())
        ticklabels.extend(g["labels"])
        x0 += len(g["ranks"]) + 1
    if ax_ratio is not None:
        ax_ratio.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax_ratio.text(1.0, threshold, f" {threshold:g}", transform=ax_ratio.get_yaxis_transform(),
                      ha="left", va="center", fontsize=8)
        top = max([threshold] + [q for g in groups for q in g["ratios"] if not np.isnan(q)])
        ax_ratio.set_ylim(0, top * 1.35)
        ax_ratio.set_ylabel("group min free / own free")
        ax_ratio.set_xticks(ticks)
        ax_ratio.set_xticklabels(ticklabels, rotation=30 if len(ticks) > 4 else 0, fontsize=8)
    if ax_free is not None:
        ax_free.set_ylabel("free memory (GiB)")
        ax_free.set_xticks(ticks)
        ax_free.set_xticklabels(ticklabels, rotation=30 if len(ticks) > 4 else 0, fontsize=8)
        lo, hi = ax_free.get_ylim()
        ax_free.set_ylim(0, hi * 1.25)
        ax_free.set_title(f"free memory; dashed: what the least free GPU needs ({threshold:g} x the largest free)",
                          fontsize=9)


def plot_balance(balance_dict: dict, ax=None):
    """TP-group memory balance from ``BalanceReport.to_dict()``.

    SGLang's check runs on every rank: it raises on a rank when the group's smallest free memory is
    below ``ratio`` (0.9) x that rank's own free memory, i.e. on the ranks with *more* free memory,
    while the cause is the *short* GPU (least free memory). Top panel: per rank, group min free /
    own free with a dashed line at the threshold; ranks where SGLang raises are red. Bottom panel:
    free GiB per rank, the short GPU orange and annotated with how much it is short by, the dashed
    line at what it needs (ratio x the largest free memory in its group). The title names the short
    GPU and the raising rank(s). ``ax``: one Axes draws the ratio panel only; a pair of Axes draws both.
    """
    groups = _balance_groups(balance_dict)  # validate before creating anything
    ok = balance_dict.get("ok")
    status = "OK" if ok else ("FAILED" if ok is not None else "?")
    title = f"TP memory balance: {status} (threshold {float(balance_dict.get('ratio', 0.9)):g})"
    headline = _balance_headline(groups, ok) if not ok else ""
    if headline:
        title += "\n" + headline
    if ax is None:
        n = sum(len(g.get("ranks") or g.get("free_bytes") or []) for g in balance_dict["groups"])
        fig = _new_figure((max(6.0, 1.5 + 0.8 * n), 6.4))
        ax_ratio, ax_free = fig.subplots(2, 1)
    elif isinstance(ax, (list, tuple, np.ndarray)):
        if len(ax) != 2:
            raise ValueError("ax must be one Axes (ratio panel) or two Axes (ratio, free)")
        ax_ratio, ax_free = ax
        fig = ax_ratio.figure
    else:
        ax_ratio, ax_free = ax, None
        fig = ax.figure
    _draw_balance(ax_ratio, ax_free, balance_dict)
    ax_ratio.set_title(title, color=OK_COLOR if ok else FAIL_COLOR, fontsize=10, pad=12)
    return fig


# ----------------------------------------------------------------------------- training history
def _resolve_panels(history: pd.DataFrame, metrics) -> list[tuple[str, list[str]]]:
    cols = [c for c in history.columns if c != "step"]

    def has_data(c):
        return c in history.columns and pd.to_numeric(history[c], errors="coerce").notna().any()

    def expand(spec) -> list[str]:
        names = [spec] if isinstance(spec, str) else list(spec)
        out = []
        for s in names:
            out.extend(fnmatch.filter(cols, s) if any(ch in s for ch in "*?[") else [s])
        return [c for c in dict.fromkeys(out) if has_data(c)]

    panels: list[tuple[str, list[str]]] = []
    if metrics is None:
        for title, ms in DEFAULT_TRAINING_PANELS:
            got = expand(ms)
            if got:
                panels.append((title, got))
        for c in cols:
            if (c.startswith("val-core/") or c.startswith("val/")) and has_data(c):
                panels.append((c.replace("val-core/", "val: "), [c]))
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        for spec in metrics:
            got = expand(spec)
            if got:
                title = spec if isinstance(spec, str) else ", ".join(spec)
                panels.append((title, got))
    return panels


def _short_labels(cols: Sequence[str]) -> list[str]:
    """Distinguishing parts of metric names: critic/score/mean, critic/rewards/mean -> score, rewards."""
    parts = [c.split("/") for c in cols]
    if len({len(p) for p in parts}) != 1:
        return list(cols)
    keep = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    labels = ["/".join(p[i] for i in keep) for p in parts]
    return labels if len(set(labels)) == len(labels) and all(labels) else list(cols)


def _draw_metric(ax, history: pd.DataFrame, cols: Sequence[str], title: str | None = None) -> None:
    x = history["step"] if "step" in history.columns else pd.Series(np.arange(len(history)), index=history.index)
    for c, lab in zip(cols, _short_labels(cols)):
        y = pd.to_numeric(history[c], errors="coerce")
        ok = y.notna()
        sparse = ok.sum() < 2 or ok.mean() < 0.5
        ax.plot(x[ok].to_numpy(), y[ok].to_numpy(), marker="o" if sparse or ok.sum() <= 30 else None,
                ms=3, lw=1.3, label=lab if len(cols) > 1 else None)
    ax.set_title(title or cols[0], fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    _integer_ticks(ax.xaxis)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(cols) > 1:
        ax.legend(fontsize=7)


def merge_validation(history_df: pd.DataFrame, val_df: pd.DataFrame | None) -> pd.DataFrame:
    """History with the validation rows (``step`` + ``val-core/...`` columns) merged in by step."""
    if val_df is None or not isinstance(val_df, pd.DataFrame) or val_df.empty:
        return history_df
    if "step" not in history_df.columns or "step" not in val_df.columns:
        raise ValueError("merging validation metrics needs a 'step' column in both frames")
    extra = [c for c in val_df.columns if c == "step" or c not in history_df.columns]
    merged = history_df.merge(val_df[extra].drop_duplicates("step", keep="last"), on="step", how="outer")
    return merged.sort_values("step", kind="stable").reset_index(drop=True)


def plot_training(history_df: pd.DataFrame, metrics=None, ncols: int = 3, val_df: pd.DataFrame | None = None):
    """Grid of small line plots, one per available panel.

    Default panels: score, reward, KL, KL loss, clip fraction, entropy, response length (mean &
    max), throughput, value loss, plus every ``val-core/...`` column with data (sparse: markers).
    Panels whose metrics are absent or all-NaN are skipped. ``metrics``: list of column names;
    an entry may be a list (overlaid in one panel) or a glob (``"timing_s/*"``, overlaid).
    ``val_df``: validation rows (``Experiment.val_history``) merged in by ``step``.
    """
    history = merge_validation(_require_frame(history_df, "history_df"), val_df)
    panels = _resolve_panels(history, metrics)
    if not panels:
        raise ValueError(f"none of the requested metrics has data; columns: {list(history.columns)}")
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure((3.6 * ncols, 2.6 * nrows))
    for i, (title, cols) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw_metric(ax, history, cols, title)
    return fig


# ----------------------------------------------------------------------------- rollouts
def _select_steps(rollouts: pd.DataFrame, step) -> tuple[pd.DataFrame, str]:
    if step is None or "step" not in rollouts.columns:
        return rollouts, "all steps"
    if isinstance(step, str) and step == "latest":
        step = rollouts["step"].max()
    if isinstance(step, (list, tuple, set, np.ndarray, range)):
        sel = rollouts[rollouts["step"].isin(list(step))]
        desc = f"steps {sorted(step)[0]}..{sorted(step)[-1]}"
    else:
        sel = rollouts[rollouts["step"] == step]
        desc = f"step {_fmt_step(step)}"
    if sel.empty:
        raise ValueError(f"no rollouts for {desc}; steps present: {sorted(rollouts['step'].unique().tolist())}")
    return sel, desc


def _draw_length_hist(ax, rollouts: pd.DataFrame, bins: int = 30, by_finish_reason: bool = True, desc: str = "") -> None:
    lengths = pd.to_numeric(rollouts["response_length"], errors="coerce")
    ok = lengths.notna()
    if not ok.any():
        raise ValueError("response_length has no numeric values")
    lengths = lengths[ok]
    reasons = rollouts.loc[ok, "finish_reason"].fillna("?").astype(str) if "finish_reason" in rollouts.columns else None
    if by_finish_reason and reasons is not None and reasons.nunique() > 1:
        groups = sorted(reasons.unique().tolist())
        data = [lengths[reasons == g].to_numpy(dtype=float) for g in groups]
        palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
        colors = [FAIL_COLOR if g == "length" else palette[i % len(palette)] for i, g in enumerate(groups)]
        ax.hist(data, bins=bins, stacked=True, label=[f"{g} ({len(d)})" for g, d in zip(groups, data)], color=colors)
        ax.legend(fontsize=7, title="finish_reason", title_fontsize=7)
    else:
        ax.hist(lengths.to_numpy(dtype=float), bins=bins, color="#1f77b4")
    mean = float(lengths.mean())
    ax.axvline(mean, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("response length (tokens)", fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    _integer_ticks(ax.yaxis)
    ax.tick_params(labelsize=7)
    where = f", {desc}" if desc else ""
    ax.set_title(f"response lengths{where} (n={len(lengths)}, mean {mean:.0f})", fontsize=9)


def plot_response_lengths(rollouts_df: pd.DataFrame, step=None, bins: int = 30, by_finish_reason: bool = True):
    """Histogram of ``response_length``; stacked by ``finish_reason`` when there are several.

    ``step``: None (all rows), a step, a list of steps, or ``"latest"``.
    """
    rollouts = _require_frame(rollouts_df, "rollouts_df", ["response_length"])
    sel, desc = _select_steps(rollouts, step)
    fig = _new_figure((6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    _draw_length_hist(ax, sel, bins=bins, by_finish_reason=by_finish_reason, desc=desc)
    return fig


# ----------------------------------------------------------------------------- benchmarks
def plot_phase_breakdown(phase_seconds: dict, mfu: dict | None = None, title: str = "", ax=None):
    """Where a step's time goes: one horizontal bar per phase (seconds, longest first) with its share
    of the step; the phases named in ``mfu`` (training phases: phase -> fraction of the card's peak, or
    None where no peak is known) in red, with their MFU.

    Fed plain data, e.g. ``rlkit.bench.e2e``'s ``summary["phase_s_median"]``:

    >>> from rlkit.viz.plots import plot_phase_breakdown
    >>> fig = plot_phase_breakdown({"gen": 2.6, "update_actor": 5.1, "reward": 0.01}, {"update_actor": 0.09})
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]  # bottom to top: the longest phase on top
    ['reward', 'gen', 'update_actor']
    """
    mfu = mfu or {}
    items = sorted(phase_seconds.items(), key=lambda kv: -kv[1])
    total = sum(v for _, v in items) or 1.0
    if ax is None:
        fig = _new_figure((7.5, 0.45 * len(items) + 1.2))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    names = [k for k, _ in items][::-1]
    secs = [v for _, v in items][::-1]
    ax.barh(names, secs, color=["#d62728" if n in mfu else "#1f77b4" for n in names])
    for y, (n, v) in enumerate(zip(names, secs)):
        note = f" {v:.2f} s ({100 * v / total:.0f}%)"
        if mfu.get(n) is not None:
            note += f", MFU {100 * mfu[n]:.1f}%"
        ax.text(v, y, note, va="center", fontsize=8)
    ax.set_xlabel("seconds per step" + (" (training phases in red)" if mfu else ""))
    ax.set_xlim(0, max(secs + [0.0]) * 1.45 or 1.0)
    ax.set_title(title or "phase breakdown", fontsize=9)
    return fig


def plot_learning(sides: dict):
    """Two runs side by side: mean reward and format rate per step, one line per side, and validation
    accuracy (strict and flexible) at each validation pass, one bar group per side; where a side logged its
    ``response_length/mean`` (a step's ``logged``), a fourth panel draws the mean response length per step.

    Fed plain data, e.g. ``rlkit.bench.learning``'s ``sides``: ``{side: {"steps": [{"step", "score",
    "format", "logged"?}, ...], "val": {step: {"strict", "flexible"}}}}`` (validation steps may be strings,
    as JSON keys are):

    >>> from rlkit.viz.plots import plot_learning
    >>> run = {"steps": [{"step": 1, "score": 0.0, "format": 0.1}, {"step": 2, "score": 0.1, "format": 0.5}],
    ...        "val": {"0": {"strict": 0.0, "flexible": 0.01}, "2": {"strict": 0.02, "flexible": 0.03}}}
    >>> fig = plot_learning({"rlkit": run, "verl": run})
    >>> [ax.get_title() for ax in fig.axes]
    ['mean reward per step', 'format rate (strict "#### n" answers)', 'validation accuracy']
    >>> [t.get_text() for t in fig.axes[2].get_xticklabels()]
    ['rlkit\\nstep 0', 'rlkit\\nstep 2', 'verl\\nstep 0', 'verl\\nstep 2']
    >>> run["steps"][0]["logged"] = {"response_length/mean": 300.0}
    >>> fig = plot_learning({"rlkit": run, "verl": run})
    >>> fig.axes[3].get_title(), [float(y) for y in fig.axes[3].lines[0].get_ydata()]  # step 2 logged nothing
    ('mean response length (tokens)', [300.0, nan])
    """
    length = "response_length/mean"
    with_length = any(length in r.get("logged", {}) for side in sides.values() for r in side["steps"])
    panels = 4 if with_length else 3
    fig = _new_figure((13 * panels / 3, 3.6))
    ax_score, ax_format, ax_val = (fig.add_subplot(1, panels, i) for i in (1, 2, 3))
    ax_len = fig.add_subplot(1, panels, 4) if with_length else None
    for name, side in sides.items():
        _learning_lines(ax_score, ax_format, side["steps"], label=name)
        if ax_len is not None:
            ax_len.plot([r["step"] for r in side["steps"]],
                        [r.get("logged", {}).get(length, math.nan) for r in side["steps"]], label=name)
    _step_axes(ax_score, ax_format, legend_size=8)
    if ax_len is not None:
        ax_len.set_title("mean response length (tokens)", fontsize=9)
        _step_axes(ax_len, legend_size=8)
    labels, strict, flexible = [], [], []
    for name, side in sides.items():
        for step, v in sorted(side["val"].items(), key=lambda kv: int(kv[0])):
            labels.append(f"{name}\nstep {step}")
            strict.append(v["strict"])
            flexible.append(v["flexible"])
    x = np.arange(len(labels))
    ax_val.bar(x - 0.2, strict, 0.4, label="strict")
    ax_val.bar(x + 0.2, flexible, 0.4, label="flexible")
    _label_bars(ax_val, list(x - 0.2) + list(x + 0.2), strict + flexible, "{:.1%}", [""] * (2 * len(x)))
    ax_val.set_xticks(x, labels, fontsize=8)
    ax_val.set_title("validation accuracy", fontsize=9)
    ax_val.legend(fontsize=8)
    return fig


def plot_learning_spread(runs: dict):
    """Several learning runs (one per seed) on one figure: mean reward and format rate per step, one colour per
    side and one line style per run, so the spread between seeds shows next to the gap between sides.

    Fed plain data: ``{run label: sides}``, each ``sides`` as :func:`plot_learning` takes it (``{side: {"steps":
    [{"step", "score", "format"}, ...]}}``), e.g. each run's ``learning.json`` ``sides``:

    >>> from rlkit.viz.plots import plot_learning_spread
    >>> run = {"steps": [{"step": 1, "score": 0.0, "format": 0.1}, {"step": 2, "score": 0.1, "format": 0.5}]}
    >>> fig = plot_learning_spread({"seed 1": {"rlkit": run, "verl": run}, "seed 2": {"rlkit": run, "verl": run}})
    >>> [ax.get_title() for ax in fig.axes]
    ['mean reward per step', 'format rate (strict "#### n" answers)']
    >>> [line.get_label() for line in fig.axes[1].lines]
    ['rlkit, seed 1', 'verl, seed 1', 'rlkit, seed 2', 'verl, seed 2']
    """
    fig = _new_figure((10, 3.6))
    ax_score, ax_format = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours, styles = {}, ("-", "--", ":", "-.")
    for i, (label, sides) in enumerate(runs.items()):
        for name, side in sides.items():
            _learning_lines(ax_score, ax_format, side["steps"], label=f"{name}, {label}", linewidth=1.2,
                            color=colours.setdefault(name, f"C{len(colours) % 10}"), linestyle=styles[i % len(styles)])
    _step_axes(ax_score, ax_format, legend_size=7)
    return fig


def _learning_lines(ax_score, ax_format, steps: list[dict], **line) -> None:
    """One run's mean reward (a gap where it is ``None``) and format rate per step, drawn with ``line``'s style."""
    x = [r["step"] for r in steps]
    ax_score.plot(x, [r["score"] if r["score"] is not None else math.nan for r in steps], **line)
    ax_format.plot(x, [r["format"] for r in steps], **line)
    ax_score.set_title("mean reward per step", fontsize=9)
    ax_format.set_title('format rate (strict "#### n" answers)', fontsize=9)


def _step_axes(*axes, legend_size: int) -> None:
    """Axes over training steps: labelled, integer ticks, a legend."""
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=legend_size)
        _integer_ticks(ax.xaxis)


def plot_peers(summaries: dict, phases: Sequence[str] | None = None, title: str = ""):
    """Frameworks side by side on one card: where each side's step goes (one stacked bar per side, a segment
    per phase, ``other`` for the step's time outside them) and tokens/s/GPU, labelled with each side's ratio
    to the first.

    Fed plain data, e.g. ``rlkit.bench.peers``' ``summary``: ``{side: {"step_s_median", "throughput_median",
    "phase_s_median": {phase: seconds}}}``; ``phases`` in stacking order (default: as they first appear; timers
    inside a phase, named with a ``/``, are left out):

    >>> from rlkit.viz.plots import plot_peers
    >>> fig = plot_peers({"rlkit": {"step_s_median": 10.0, "throughput_median": 6000.0,
    ...                             "phase_s_median": {"gen": 3.0, "update_actor": 6.0}},
    ...                   "verl": {"step_s_median": 40.0, "throughput_median": 1500.0,
    ...                            "phase_s_median": {"gen": 8.0, "update_actor": 30.0, "agent_loop/x": 7.0}}})
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['gen', 'update_actor', 'other']
    >>> [t.get_text() for t in fig.axes[1].texts]
    [' 6,000', ' 1,500 (rlkit 4.00x)']
    """
    names = list(summaries)
    if phases is None:
        phases = list(dict.fromkeys(p for s in summaries.values() for p in s.get("phase_s_median", {})))
    phases = [p for p in phases if "/" not in p and any(p in s.get("phase_s_median", {}) for s in summaries.values())]
    fig = _new_figure((12, 0.7 * len(names) + 2.0))
    ax_time, ax_tps = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    y = np.arange(len(names))[::-1]
    steps = np.array([s.get("step_s_median") or 0.0 for s in summaries.values()])
    left = np.zeros(len(names))
    for i, phase in enumerate(phases):
        secs = np.array([s.get("phase_s_median", {}).get(phase) or 0.0 for s in summaries.values()])
        ax_time.barh(y, secs, left=left, color=f"C{i % 10}", label=phase)
        left += secs
    ax_time.barh(y, np.maximum(0.0, steps - left), left=left, color="#d9d9d9", label="other")  # outside the phases
    for yi, s in zip(y, summaries.values()):
        if s.get("step_s_median") is not None:
            ax_time.text(s["step_s_median"], yi, f" {s['step_s_median']:.1f} s", va="center", fontsize=8)
    ax_time.set_yticks(y, names)
    ax_time.set_xlabel("seconds per step (median)")
    ax_time.set_xlim(0, steps.max(initial=0.0) * 1.2 or 1.0)
    ax_time.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: covers no bar
    ax_time.set_title(title or "where a step goes", fontsize=9)
    tps = [s.get("throughput_median") or 0.0 for s in summaries.values()]
    ax_tps.barh(y, tps, color="#1f77b4")
    for i, (yi, v) in enumerate(zip(y, tps)):
        note = f" {v:,.0f}" + (f" ({names[0]} {tps[0] / v:.2f}x)" if i and v else "")
        ax_tps.text(v, yi, note, va="center", fontsize=8)
    ax_tps.set_yticks(y, names)
    ax_tps.set_xlabel("tokens/s/GPU (median)")
    ax_tps.set_xlim(0, max(tps + [0.0]) * 1.45 or 1.0)
    ax_tps.set_title("throughput", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- summary
def plot_summary(history_df: pd.DataFrame | None, mem_df: pd.DataFrame | None = None,
                 rollouts_df: pd.DataFrame | None = None):
    """One figure: score/reward curves, response length, per-GPU memory 'used' timeline (if
    ``mem_df``) and the latest step's response-length histogram (if ``rollouts_df``)."""
    drawers = []
    history = None
    if history_df is not None:
        history = _require_frame(history_df, "history_df")
        for title, ms in (("score / reward", ("critic/score/mean", "critic/rewards/mean")),
                          ("response length", ("response_length/mean", "response_length/max"))):
            cols = [c for c in ms if c in history.columns and pd.to_numeric(history[c], errors="coerce").notna().any()]
            if cols:
                drawers.append((False, lambda ax, cols=cols, title=title: _draw_metric(ax, history, cols, title)))
    if mem_df is not None:
        _require_frame(mem_df, "mem_df", MEMORY_COLUMNS)

        def draw_mem(ax):
            _draw_memory_timeline(ax, mem_df, "used")
            ax.set_title("GPU memory used per phase", fontsize=9, pad=14)
        drawers.append((True, draw_mem))
    if rollouts_df is not None:
        rollouts = _require_frame(rollouts_df, "rollouts_df", ["response_length"])
        sel, desc = _select_steps(rollouts, "latest" if "step" in rollouts.columns else None)
        drawers.append((False, lambda ax: _draw_length_hist(ax, sel, desc=desc)))
    if not drawers:
        raise ValueError("nothing to summarise: give a history with score/reward or response length, "
                         "a memory frame, or a rollouts frame")
    # wide panels (the memory timeline) take a full row; others pair up
    rows: list[list] = []
    pending: list = []
    for wide, d in drawers:
        if wide:
            rows.append([d])
        else:
            pending.append(d)
            if len(pending) == 2:
                rows.append(pending)
                pending = []
    if pending:
        rows.append(pending)
    ncols = 2 if any(len(r) == 2 for r in rows) else 1
    fig = _new_figure((11.0 if ncols == 2 or any(len(r) == 1 for r in rows) else 6.0, 3.3 * len(rows)))
    gs = fig.add_gridspec(len(rows), ncols)
    for i, row in enumerate(rows):
        if len(row) == 1:
            row[0](fig.add_subplot(gs[i, :]))
        else:
            for j, d in enumerate(row):
                d(fig.add_subplot(gs[i, j]))
    if history is not None and "critic/score/mean" in history.columns and len(history):
        last = history.iloc[-1]
        step = _fmt_step(last["step"]) if "step" in history.columns else str(len(history) - 1)
        score = pd.to_numeric(pd.Series([last["critic/score/mean"]]), errors="coerce").iloc[0]
        fig.suptitle(f"step {step}: score {score:.3f}" if pd.notna(score) else f"step {step}", fontsize=11)
    return fig
