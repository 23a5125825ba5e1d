"""rlkit.viz.plots on small hand-made frames (Agg, no GPU)."""
from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from rlkit.viz import plots
from rlkit.viz.plots import (plot_balance, plot_memory_bars, plot_memory_timeline, plot_response_lengths,
                             plot_summary, plot_training)

GIB = 1 << 30
PHASES = ["gen", "reward", "update_actor"]
SEGMENTS = ["torch allocated", "reserved, not allocated", "other processes", "free"]


def mem_frame(steps=(1, 2), phases=PHASES, gpus=((0, 0), (1, 1)), torch_nan_rank=None, host=True):
    """Tidy memory frame: 80 GiB GPUs, used grows with the phase index."""
    rows, t = [], 0.0
    for step in steps:
        for pi, phase in enumerate(phases):
            for event in ("start", "end"):
                t += 1.0
                for rank, gpu in gpus:
                    used = (10 + 5 * pi + step + (event == "end")) * GIB
                    alloc, reserved = 0.5 * used, 0.6 * used
                    if rank == torch_nan_rank:
                        alloc = reserved = np.nan
                    vals = {"total": 80 * GIB, "used": used, "free": 80 * GIB - used,
                            "torch_allocated": alloc, "torch_reserved": reserved,
                            "other_processes": 0.3 * used}
                    for metric, b in vals.items():
                        rows.append(dict(step=step, phase=phase, event=event, node="node0", rank=rank, gpu=gpu,
                                         metric=metric, bytes=b, time=t))
                    if host:
                        rows.append(dict(step=step, phase=phase, event=event, node="node0", rank=rank, gpu=-1,
                                         metric="host_rss", bytes=3 * GIB, time=t))
    return pd.DataFrame(rows)


def history_frame(n=6, with_val=True, drop=()):
    steps = np.arange(1, n + 1)
    df = pd.DataFrame({
        "step": steps,
        "critic/score/mean": np.linspace(0.1, 0.6, n),
        "critic/rewards/mean": np.linspace(0.1, 0.6, n),
        "actor/ppo_kl": np.linspace(0, 0.01, n),
        "actor/pg_clipfrac": np.linspace(0, 0.1, n),
        "actor/entropy": np.linspace(1.0, 0.5, n),
        "response_length/mean": np.linspace(200, 150, n),
        "response_length/max": np.linspace(400, 300, n),
        "perf/throughput": np.full(n, 1000.0),
        "timing_s/gen": np.full(n, 3.0),
        "timing_s/update_actor": np.full(n, 2.0),
    })
    if with_val:
        df["val-core/openai/gsm8k/reward/mean@1"] = [0.2 if i % 3 == 0 else np.nan for i in range(n)]
    return df.drop(columns=list(drop))


def rollouts_frame(steps=(1, 2), per_step=20):
    rng = np.random.default_rng(0)
    rows = []
    for s in steps:
        for i in range(per_step):
            L = int(rng.integers(20, 512))
            rows.append(dict(step=s, uid=f"u{i // 4}", data_source="openai/gsm8k", prompt=f"q{i}",
                             response="a" * 10, ground_truth="42", score=float(i % 2), reward=float(i % 2),
                             response_length=L, finish_reason="length" if L > 400 else "stop"))
    return pd.DataFrame(rows)


def balance_dict():
    return {"ok": False, "ratio": 0.9, "groups": [
        {"ranks": [0, 1], "free_bytes": [70 * GIB, 40 * GIB], "ratios": [40 / 70, 1.0], "failing": [0],
         "short_ranks": [1], "missing_gib": {0: 23.0}, "labels": ["node0/gpu0", "node0/gpu1"]},
        {"ranks": [2, 3], "free_bytes": [70 * GIB, 69 * GIB], "ratios": [69 / 70, 1.0], "failing": [],
         "short_ranks": [], "missing_gib": {}},
    ], "evidence": ["..."], "advice": ["..."]}


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ----------------------------------------------------------------------------- import hygiene
def test_import_is_light():
    code = ("import sys, rlkit.viz; "
            "bad = [m for m in ('matplotlib', 'ipywidgets', 'pandas') if m in sys.modules]; "
            "assert not bad, bad; print(sorted(rlkit.viz.__all__)[:2])")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_viz_imports_no_other_rlkit_module():
    code = ("import sys, rlkit.viz as v; v.plots; v.tables; v.dashboard; "
            "other = [m for m in sys.modules if m.startswith('rlkit.') and not m.startswith('rlkit.viz')]; "
            "assert not other, other")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_lazy_exports():
    import rlkit.viz as viz

    assert viz.plot_memory_bars is plot_memory_bars
    assert callable(viz.Dashboard) and callable(viz.rollouts_html)
    with pytest.raises(AttributeError):
        viz.nope


# ----------------------------------------------------------------------------- memory bars
def test_memory_bars_segments_and_legend():
    fig = plot_memory_bars(mem_frame())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 4
    assert legend_texts(ax) == SEGMENTS
    title = ax.get_title()
    assert "step 2" in title and "update_actor" in title and "end" in title
    assert [t.get_text() for t in ax.get_xticklabels()] == ["r0/gpu0", "r1/gpu1"]
    assert ax.get_ylabel() == "memory (GiB)"
    # stack of one bar sums to the GPU total (80 GiB)
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights[0::2]) == pytest.approx(80.0)


def test_memory_bars_values():
    table, info = plots.memory_snapshot_table(mem_frame(), step=1, phase="gen", event="start")
    assert info == {"step": 1, "phase": "gen", "event": "start", "host_rss": {"r0/host": 3.0, "r1/host": 3.0},
                    "time": 1.0}
    used = 11.0
    row = table.loc["r0/gpu0"]
    assert row["torch allocated"] == pytest.approx(0.5 * used)
    assert row["reserved, not allocated"] == pytest.approx(0.1 * used)
    assert row["other processes"] == pytest.approx(0.4 * used)
    assert row["free"] == pytest.approx(80 - used)


def test_memory_bars_selection_and_errors():
    mem = mem_frame()
    ax = plot_memory_bars(mem, step=1, phase="gen").axes[0]
    assert "step 1" in ax.get_title() and "gen" in ax.get_title()
    with pytest.raises(ValueError, match="steps present"):
        plot_memory_bars(mem, step=7)
    with pytest.raises(ValueError, match="phases present"):
        plot_memory_bars(mem, phase="nope")
    with pytest.raises(ValueError, match="empty"):
        plot_memory_bars(mem.iloc[:0])
    with pytest.raises(ValueError, match="lacks columns"):
        plot_memory_bars(mem.drop(columns=["metric"]))
    # a phase that only has a start snapshot so far: phase=None falls back to the last finished one
    cur = pd.concat([mem, mem[(mem.step == 2) & (mem.phase == "gen") & (mem.event == "start")].assign(phase="ref")])
    assert "update_actor" in plot_memory_bars(cur).axes[0].get_title()
    assert "ref (start)" in plot_memory_bars(cur, phase="ref", event=None).axes[0].get_title()


def test_memory_bars_missing_torch_numbers_noted():
    mem = mem_frame(torch_nan_rank=1)
    ax = plot_memory_bars(mem).axes[0]
    assert len(ax.patches) == 8
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "torch numbers missing" in texts and "r1/gpu1" in texts
    table, _ = plots.memory_snapshot_table(mem)
    assert table.loc["r1/gpu1", "torch allocated"] == 0
    assert table.loc["r1/gpu1", "other processes"] == pytest.approx(table.loc["r1/gpu1", "used"])
    # torch metrics absent altogether
    bare = mem[~mem.metric.str.startswith("torch")]
    assert "torch numbers missing" in " ".join(t.get_text() for t in plot_memory_bars(bare).axes[0].texts)


def test_memory_bars_derives_free_and_multi_node_labels():
    mem = mem_frame(gpus=((0, 0),), host=False)
    mem2 = mem.assign(node="node1", rank=1)
    both = pd.concat([mem, mem2])
    both = both[both.metric != "free"]  # free derived from total - used
    ax = plot_memory_bars(both).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["node0/r0/gpu0", "node1/r1/gpu0"]
    assert len(ax.patches) == 8


# ----------------------------------------------------------------------------- timeline
def test_memory_timeline_lines_ticks_separators():
    fig = plot_memory_timeline(mem_frame(steps=(1, 2, 3)))
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    n = 3 * len(PHASES) * 2
    assert len(ax.lines[0].get_xdata()) == n
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "gen (start)" in labels and "update_actor" in labels
    seps = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(seps) == 1 and len(seps[0].get_segments()) == 2  # between 3 steps
    assert {"step 1", "step 2", "step 3"} <= {t.get_text() for t in ax.texts}
    # values in GiB, first snapshot of rank 0: step 1, gen, start -> 11 GiB
    assert ax.lines[0].get_ydata()[0] == pytest.approx(11.0)


def test_memory_timeline_thins_ticks_and_other_metrics():
    mem = mem_frame(steps=tuple(range(1, 16)))
    ax = plot_memory_timeline(mem, max_ticks=20).axes[0]
    assert len(ax.get_xticks()) <= 20
    ax = plot_memory_timeline(mem, metric="host_rss").axes[0]
    assert len(ax.lines) == 2 and ax.lines[0].get_label() == "r0/host"
    with pytest.raises(ValueError, match="metrics present"):
        plot_memory_timeline(mem, metric="nope")
    with pytest.raises(ValueError, match="empty"):
        plot_memory_timeline(pd.DataFrame(columns=list(plots.MEMORY_COLUMNS)))


def test_memory_timeline_orders_by_time_not_rows():
    mem = mem_frame(steps=(1,), gpus=((0, 0),), host=False)
    ax = plot_memory_timeline(mem.iloc[::-1]).axes[0]
    assert ax.get_xticklabels()[0].get_text() == "gen (start)"


# ----------------------------------------------------------------------------- balance
def test_balance_threshold_line_and_red_failing_bars():
    fig = plot_balance(balance_dict())
    ax_ratio, ax_free = fig.axes
    hlines = [l for l in ax_ratio.lines if list(l.get_ydata()) == [0.9, 0.9]]
    assert len(hlines) == 1
    assert len(ax_ratio.patches) == 4 and len(ax_free.patches) == 4
    colors = [to_hex(p.get_facecolor()) for p in ax_ratio.patches]
    assert colors[0] == plots.FAIL_COLOR and all(c != plots.FAIL_COLOR for c in colors[1:])
    assert ax_ratio.patches[0].get_height() == pytest.approx(40 / 70)
    # rank 0 (70 GiB free) is where SGLang raises; GPU 1 (40 GiB) is short by 0.9 x 70 - 40 = 23 GiB
    assert "0.57 < 0.9\nSGLang raises here" in [t.get_text() for t in ax_ratio.texts]
    assert "40.0 GiB\nshort by 23.0 GiB" in [t.get_text() for t in ax_free.texts]
    assert [t.get_text() for t in ax_ratio.get_xticklabels()] == ["node0/gpu0", "node0/gpu1", "rank 2", "rank 3"]
    assert ax_free.patches[0].get_height() == pytest.approx(70)
    assert to_hex(ax_free.patches[1].get_facecolor()) == plots.SHORT_COLOR
    assert "FAILED" in ax_ratio.get_title()


def test_balance_into_given_axes_and_derived_fields():
    from matplotlib.figure import Figure as F

    fig = F()
    ax = fig.add_subplot(1, 1, 1)
    d = {"ok": True, "ratio": 0.9, "groups": [{"ranks": [0, 1], "free_bytes": [50 * GIB, 40 * GIB],
                                              "missing_gib": {"1": 1.5}}]}
    assert plot_balance(d, ax=ax) is fig
    assert len(fig.axes) == 1
    colors = [to_hex(p.get_facecolor()) for p in ax.patches]
    assert colors == [plots.FAIL_COLOR, plots.OK_COLOR]  # 40/50 = 0.8 < 0.9 derived
    assert "OK" in ax.get_title()
    with pytest.raises(ValueError, match="no groups"):
        plot_balance({"ok": True, "ratio": 0.9, "groups": []})
    with pytest.raises(ValueError, match="dict"):
        plot_balance([1, 2])


# ----------------------------------------------------------------------------- training
def test_training_grid_counts_available_panels():
    fig = plot_training(history_frame())
    titles = [a.get_title() for a in fig.axes]
    # score, reward, KL, clipfrac, entropy, response length, throughput, val acc (no kl_loss, vf_loss)
    assert len(fig.axes) == 8
    assert "response length" in titles and any("gsm8k/reward/mean@1" in t for t in titles)
    rl = fig.axes[titles.index("response length")]
    assert len(rl.lines) == 2
    val = fig.axes[[i for i, t in enumerate(titles) if "gsm8k/reward/mean@1" in t][0]]
    assert len(val.lines[0].get_xdata()) == 2  # sparse: NaNs dropped


def test_training_missing_columns_and_selection():
    fig = plot_training(history_frame(with_val=False, drop=["actor/entropy", "perf/throughput"]))
    assert len(fig.axes) == 5
    h = history_frame()
    h["actor/kl_loss"] = np.nan  # all-NaN -> skipped
    assert len(plot_training(h).axes) == 8
    fig = plot_training(h, metrics=["critic/score/mean", "timing_s/*", "not/there"])
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    fig = plot_training(h.drop(columns=["step"]), metrics=["actor/entropy"])
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="none of the requested"):
        plot_training(h, metrics=["not/there"])
    with pytest.raises(ValueError, match="empty"):
        plot_training(h.iloc[:0])
    with pytest.raises(ValueError, match="None"):
        plot_training(None)


# ----------------------------------------------------------------------------- response lengths
def test_response_length_histogram():
    r = rollouts_frame()
    ax = plot_response_lengths(r).axes[0]
    assert len(ax.patches) > 0
    assert any(t.startswith("length") for t in legend_texts(ax))  # stacked by finish_reason
    ax = plot_response_lengths(r, step=2, bins=10, by_finish_reason=False).axes[0]
    assert len(ax.patches) == 10 and "step 2" in ax.get_title() and "n=20" in ax.get_title()
    ax = plot_response_lengths(r.drop(columns=["finish_reason", "step"])).axes[0]
    assert len(ax.patches) > 0 and ax.get_legend() is None
    with pytest.raises(ValueError, match="steps present"):
        plot_response_lengths(r, step=99)
    with pytest.raises(ValueError, match="response_length"):
        plot_response_lengths(r.drop(columns=["response_length"]))
    with pytest.raises(ValueError, match="empty"):
        plot_response_lengths(r.iloc[:0])


# ----------------------------------------------------------------------------- summary
def test_summary_panels():
    fig = plot_summary(history_frame(), mem_frame(), rollouts_frame())
    assert len(fig.axes) == 4
    assert "step 6" in fig._suptitle.get_text()
    assert len(plot_summary(history_frame()).axes) == 2
    assert len(plot_summary(None, mem_df=mem_frame()).axes) == 1
    assert len(plot_summary(history_frame(), rollouts_df=rollouts_frame()).axes) == 3
    with pytest.raises(ValueError, match="nothing to summarise"):
        plot_summary(history_frame()[["step", "actor/entropy"]])


def test_figures_render_and_do_not_touch_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = [plot_memory_bars(mem_frame()), plot_memory_timeline(mem_frame()), plot_balance(balance_dict()),
            plot_training(history_frame()), plot_response_lengths(rollouts_frame()),
            plot_summary(history_frame(), mem_frame(), rollouts_frame())]
    import io

    for f in figs:
        buf = io.BytesIO()
        f.savefig(buf, format="png", dpi=40)
        assert buf.getvalue()[:4] == b"\x89PNG"
    assert plt.get_fignums() == before


def test_trace_frame_dtypes_and_setup_snapshots_without_step():
    """trace_frame gives Int64 steps; snapshots taken before the first step have step <NA>."""
    mem = mem_frame()
    init = mem[(mem.step == 1) & (mem.phase == "gen")].assign(step=np.nan, phase="init", time=0.0)
    m = pd.concat([init, mem]).astype({"step": "Int64", "rank": "int64", "gpu": "int64", "time": "float64"})
    ax = plot_memory_timeline(m).axes[0]
    assert ax.get_xticklabels()[0].get_text() == "init (start)"
    assert [t.get_text() for t in ax.texts] == ["step -", "step 1", "step 2"]
    assert "step 2" in plot_memory_bars(m).axes[0].get_title()
    assert len(plot_memory_bars(m, step=1, phase="gen").axes[0].patches) == 8


def test_training_merges_validation_frame():
    h = history_frame(with_val=False)
    val = pd.DataFrame({"step": [0, 3], "val-core/openai/gsm8k/reward/mean@1": [0.1, 0.3]})
    fig = plot_training(h, val_df=val)
    titles = [a.get_title() for a in fig.axes]
    assert len(fig.axes) == 8 and any("val: openai/gsm8k/reward/mean@1" in t for t in titles)
    acc = fig.axes[[i for i, t in enumerate(titles) if "gsm8k/reward/mean@1" in t][0]]
    assert list(acc.lines[0].get_xdata()) == [0, 3]


# ----------------------------------------------------------------------------- units, dates, integer steps
def test_balance_names_short_gpu_and_raising_rank():
    """GPU 1 has less free memory: it is the short one; SGLang raises on rank 0 (more free memory)."""
    d = {"ok": False, "ratio": 0.9, "groups": [
        {"ranks": [0, 1], "free_bytes": [int(79.18 * GIB), int(54.57 * GIB)], "labels": ["GPU 0", "GPU 1"],
         "failing": [0], "short_ranks": [1], "missing_gib": {"0": 0.9 * 79.18 - 54.57}}]}
    fig = plot_balance(d)
    ax_ratio, ax_free = fig.axes
    # 0.9 x 79.18 = 71.262 needed on GPU 1, which has 54.57: short by 16.692 GiB
    assert ax_ratio.get_title().splitlines()[1] == "GPU 1 is short by 16.7 GiB; SGLang raises on rank 0 (GPU 0)"
    free_texts = [t.get_text() for t in ax_free.texts]
    assert free_texts[:2] == ["79.2 GiB\nraises", "54.6 GiB\nshort by 16.7 GiB"]
    assert not any("short" in t for t in free_texts[:1])  # the GPU with plenty of memory is not called short
    assert to_hex(ax_free.patches[0].get_facecolor()) == plots.FAIL_COLOR
    assert to_hex(ax_free.patches[1].get_facecolor()) == plots.SHORT_COLOR
    dashed = [c for c in ax_free.collections if isinstance(c, LineCollection)]
    assert dashed[0].get_segments()[0][0][1] == pytest.approx(0.9 * 79.18, abs=1e-6)
    assert ax_free.get_ylabel() == "free memory (GiB)"
    ratio_texts = [t.get_text() for t in ax_ratio.texts]
    assert "0.69 < 0.9\nSGLang raises here" in ratio_texts and "1.00\nshort GPU, passes" in ratio_texts


def test_memory_labels_say_gib():
    mem = mem_frame()
    assert plot_memory_timeline(mem).axes[0].get_ylabel() == "used (GiB)"
    assert plot_memory_timeline(mem, metric="host_rss").axes[0].get_ylabel() == "host_rss (GiB)"
    bars = plot_memory_bars(mem).axes[0]
    # step 2, update_actor, end: used = 10 + 5 x 2 + 2 + 1 = 23 GiB of 80
    assert bars.get_ylabel() == "memory (GiB)" and "23.0/80 GiB" in [t.get_text() for t in bars.texts]


def test_times_are_dates_not_epoch_seconds():
    import matplotlib.dates as mdates

    t0 = 1795706165.0  # 2026-11-26 15:16:05 UTC
    mem = mem_frame().assign(time=lambda d: t0 + d["time"] * 30.0)  # snapshots 30 s apart
    # snapshot bars: the snapshot's time as a UTC date in the title (step 2, update_actor, end: t = 12 x 30 s)
    title = plot_memory_bars(mem).axes[0].get_title()
    assert title.endswith("\n2026-11-26 15:22:05 UTC"), title
    # phase axis: the recording span as dates
    ax = plot_memory_timeline(mem).axes[0]
    assert ax.get_xlabel() == "phase, in snapshot order (recorded 2026-11-26 15:16:35 to 15:22:05 UTC)"
    # time axis: matplotlib dates at the snapshot times, tick labels are dates, never epoch floats
    fig = plot_memory_timeline(mem, x="time")
    ax = fig.axes[0]
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.DateFormatter)
    x0 = ax.lines[0].get_xdata()[0]
    assert mdates.num2date(x0).strftime("%Y-%m-%d %H:%M:%S") == "2026-11-26 15:16:35"
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(l.startswith("2026-11-26\n15:") for l in labels), labels
    assert ax.get_xlabel() == "time (UTC)"
    assert len(ax.lines) == 2 and ax.lines[0].get_ydata()[0] == pytest.approx(11.0)
    assert {"step 1", "step 2"} <= {t.get_text() for t in ax.texts}
    assert plots.fmt_time(t0) == "2026-11-26 15:16:05 UTC"
    with pytest.raises(ValueError, match="needs a 'time' column"):
        plot_memory_timeline(mem.drop(columns=["time"]), x="time")
    with pytest.raises(ValueError, match="x must be one of"):
        plot_memory_timeline(mem, x="wallclock")


def test_step_axes_have_integer_ticks():
    h = history_frame(n=3)  # steps 1..3: matplotlib's default locator would put ticks at 1.25, 1.5, ...
    fig = plot_training(h, metrics=["critic/score/mean"])
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1, 2, 3], ticks
    summary = plot_summary(h)
    summary.canvas.draw()
    for a in summary.axes:
        assert all(float(t).is_integer() for t in a.get_xticks()), a.get_xticks()
    hist = plot_response_lengths(rollouts_frame(per_step=3)).axes[0]
    hist.figure.canvas.draw()
    assert all(float(t).is_integer() for t in hist.get_yticks())  # counts


def test_peers_stacks_each_sides_phases_up_to_its_step_and_labels_the_ratio():
    from rlkit.viz.plots import plot_peers

    summaries = {"rlkit": {"step_s_median": 10.0, "throughput_median": 6000.0,
                           "phase_s_median": {"update_actor": 5.0, "gen": 3.0, "wake": 0.5}},
                 "verl": {"step_s_median": 40.0, "throughput_median": 1500.0,
                          "phase_s_median": {"gen": 8.0, "update_actor": 30.0, "agent_loop/generate": 7.5}}}
    fig = plot_peers(summaries, phases=["gen", "update_actor", "values", "wake"], title="t")
    ax_time, ax_tps = fig.axes
    # stacking order as given; a phase no side has (values) and timers inside a phase (agent_loop/...) left out
    assert [t.get_text() for t in ax_time.get_legend().get_texts()] == ["gen", "update_actor", "wake", "other"]
    bars = [(c.get_label(), [(r.get_x(), r.get_width()) for r in c]) for c in ax_time.containers]
    # rlkit on top (y=1), verl below (y=0); other = step - phases: 10 - 8.5 = 1.5 and 40 - 38 = 2
    assert bars == [("gen", [(0.0, 3.0), (0.0, 8.0)]), ("update_actor", [(3.0, 5.0), (8.0, 30.0)]),
                    ("wake", [(8.0, 0.5), (38.0, 0.0)]), ("other", [(8.5, 1.5), (38.0, 2.0)])]
    assert {t.get_text(): t.get_position()[1] for t in ax_time.get_yticklabels()} == {"rlkit": 1, "verl": 0}
    assert [t.get_text() for t in ax_time.texts] == [" 10.0 s", " 40.0 s"] and ax_time.get_title() == "t"
    assert [t.get_text() for t in ax_tps.texts] == [" 6,000", " 1,500 (rlkit 4.00x)"]
    # a side that logged no throughput gets no ratio (no division by zero)
    summaries["verl"]["throughput_median"] = None
    assert [t.get_text() for t in plot_peers(summaries).axes[1].texts] == [" 6,000", " 0"]
