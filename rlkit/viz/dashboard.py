"""A small ipywidgets dashboard fed by plain callables returning DataFrames.

    dash = Dashboard(lambda: exp.history, lambda: mem.frame(), lambda: exp.rollouts)
    dash              # shows the panel in a notebook
    exp.step(); dash.refresh()

Figures are rendered to PNG and put straight into ``Output.outputs`` (no ``with out:`` capture),
so the dashboard also works, and can be tested, without a live kernel.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable

import pandas as pd

from . import plots, tables

Getter = Callable[[], Any]


def _as_getter(source) -> Getter | None:
    if source is None or callable(source):
        return source
    return lambda: source  # a fixed DataFrame


def _fingerprint(df: Any) -> Any:
    """Cheap change detector: shape, columns and a hash of the last rows."""
    if df is None:
        return None
    if not isinstance(df, pd.DataFrame):
        return ("obj", id(df))
    try:
        tail = pd.util.hash_pandas_object(df.tail(64), index=True).to_numpy().tobytes()
    except Exception:  # unhashable cells (lists, dicts): fall back to their repr
        try:
            tail = repr(df.tail(64).to_dict("list")).encode()
        except Exception:
            return ("unknown", object())  # always different -> always redraw
    return (df.shape, tuple(map(str, df.columns)), tail)


def figure_output(fig, dpi: int = 90) -> dict:
    """A Jupyter display_data output (PNG) for a matplotlib Figure; closes it if pyplot owns it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _close(fig)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": "<Figure>"}}


def _close(fig) -> None:
    import sys

    if "matplotlib.pyplot" in sys.modules:  # only figures created through pyplot need closing
        import matplotlib.pyplot as plt

        if plt.fignum_exists(getattr(fig, "number", -1)):
            plt.close(fig)


def _text_output(text: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f'<p style="color:#777"><i>{html.escape(text)}</i></p>'}}


def _set_outputs(out, *outputs: dict) -> None:
    out.outputs = tuple(outputs)


def _ordered_unique(values) -> list:
    return list(dict.fromkeys(v for v in values if not pd.isna(v)))


class Dashboard:
    """Training curves, per-GPU memory (step / phase / event selectors) and newest samples.

    ``get_history``, ``get_memory``, ``get_rollouts`` (and optionally ``get_validation``, e.g.
    ``lambda: pd.DataFrame(exp.val_history)``): callables returning the current DataFrames (a
    DataFrame or None is accepted too). ``refresh()`` re-reads them and redraws only the tabs whose
    data changed.
    """

    SAMPLE_FILTERS = ("all", "correct", "wrong", "truncated")

    def __init__(self, get_history: Getter | None = None, get_memory: Getter | None = None,
                 get_rollouts: Getter | None = None, *, get_validation: Getter | None = None,
                 n_samples: int = 8, max_chars: int = 400,
                 training_metrics=None, dpi: int = 90):
        import ipywidgets as w

        self._get = {"history": _as_getter(get_history), "memory": _as_getter(get_memory),
                     "rollouts": _as_getter(get_rollouts), "validation": _as_getter(get_validation)}
        self.n_samples = n_samples
        self.max_chars = max_chars
        self.training_metrics = training_metrics
        self.dpi = dpi
        self._data: dict[str, Any] = {"history": None, "memory": None, "rollouts": None, "validation": None}
        self._prints: dict[str, Any] = {}
        self._follow_latest = True  # step selector tracks the newest step
        self._follow_phase = True   # phase selector tracks the last phase of the step
        self._updating = False
        self.render_counts = {"training": 0, "memory": 0, "samples": 0}
        self.errors: dict[str, str] = {}

        # (a) training
        self.training_out = w.Output(layout=w.Layout(width="100%"))
        # (b) memory
        self.step_dd = w.Dropdown(description="step", options=[], layout=w.Layout(width="160px"))
        self.phase_dd = w.Dropdown(description="phase", options=[], layout=w.Layout(width="220px"))
        self.event_dd = w.Dropdown(description="event", options=["end", "start"], value="end",
                                   layout=w.Layout(width="160px"))
        self.memory_out = w.Output(layout=w.Layout(width="100%"))
        self.timeline_out = w.Output(layout=w.Layout(width="100%"))
        memory_box = w.VBox([w.HBox([self.step_dd, self.phase_dd, self.event_dd]), self.memory_out,
                             self.timeline_out])
        # (c) samples
        self.filter_dd = w.Dropdown(description="show", options=list(self.SAMPLE_FILTERS), value="all",
                                    layout=w.Layout(width="200px"))
        self.samples_html = w.HTML(value="")
        samples_box = w.VBox([self.filter_dd, self.samples_html])

        self.tabs = w.Tab(children=[self.training_out, memory_box, samples_box])
        self.tabs.titles = ("training", "GPU memory", "samples")
        self.status = w.HTML(value="")
        self.refresh_button = w.Button(description="refresh", icon="refresh", layout=w.Layout(width="110px"))
        self.refresh_button.on_click(lambda _b: self.refresh(force=True))
        self._widget = w.VBox([w.HBox([self.refresh_button, self.status]), self.tabs])

        self.step_dd.observe(self._on_step, names="value")
        self.phase_dd.observe(self._on_phase, names="value")
        self.event_dd.observe(self._on_memory_selection, names="value")
        self.filter_dd.observe(lambda _c: self._render_samples(), names="value")
        self.refresh(force=True)

    # ------------------------------------------------------------------ public
    @property
    def widget(self):
        """The ipywidgets container (VBox: refresh button + status, then the tabs)."""
        return self._widget

    def refresh(self, force: bool = False) -> dict[str, bool]:
        """Re-read the data and redraw what changed. Returns {tab: redrawn}."""
        changed = {}
        for key in ("history", "memory", "rollouts", "validation"):
            getter = self._get[key]
            try:
                df = getter() if getter is not None else None
            except Exception as e:  # a failing source must not kill the other tabs
                self.errors[key] = f"{type(e).__name__}: {e}"
                df = None
            else:
                self.errors.pop(key, None)
            fp = _fingerprint(df)
            changed[key] = force or fp != self._prints.get(key, object())
            self._prints[key] = fp
            self._data[key] = df
        if changed["history"] or changed["validation"]:
            self._render_training()
        if changed["memory"]:
            self._update_selectors()
            self._render_memory()
            self._render_timeline()
        if changed["rollouts"]:
            self._render_samples()
        self._render_status()
        return {"training": changed["history"] or changed["validation"], "memory": changed["memory"],
                "samples": changed["rollouts"]}

    def _ipython_display_(self):
        from IPython.display import display

        display(self._widget)

    # ------------------------------------------------------------------ rendering
    def _render_status(self) -> None:
        parts = []
        h = self._data["history"]
        if isinstance(h, pd.DataFrame) and len(h):
            last = h.iloc[-1]
            if "step" in h.columns:
                parts.append(f"step {plots._fmt_step(last['step'])}")
            for col, name in (("critic/score/mean", "score"), ("response_length/mean", "len")):
                if col in h.columns and pd.notna(last[col]):
                    parts.append(f"{name} {float(last[col]):.3g}")
        for key, err in self.errors.items():
            parts.append(f'<span style="color:#c00">{html.escape(key)}: {html.escape(err)}</span>')
        self.status.value = " &middot; ".join(parts)

    def _render_training(self) -> None:
        self.render_counts["training"] += 1
        df = self._data["history"]
        if not isinstance(df, pd.DataFrame) or df.empty:
            _set_outputs(self.training_out, _text_output("no training history yet"))
            return
        try:
            val = self._data["validation"]
            fig = plots.plot_training(df, metrics=self.training_metrics,
                                      val_df=val if isinstance(val, pd.DataFrame) else None)
        except ValueError as e:
            _set_outputs(self.training_out, _text_output(str(e)))
            return
        _set_outputs(self.training_out, figure_output(fig, self.dpi))

    def _memory_frame(self) -> pd.DataFrame | None:
        df = self._data["memory"]
        if not isinstance(df, pd.DataFrame) or df.empty or not set(plots.MEMORY_COLUMNS) <= set(df.columns):
            return None
        return df

    def _update_selectors(self) -> None:
        mem = self._memory_frame()
        self._updating = True
        try:
            if mem is None:
                self.step_dd.options = []
                self.phase_dd.options = []
                return
            steps = sorted(_ordered_unique(mem["step"].tolist()))
            old = self.step_dd.value
            self.step_dd.options = steps
            if self._follow_latest or old not in steps:
                self.step_dd.value = steps[-1]
            else:
                self.step_dd.value = old
            self._update_phases()
        finally:
            self._updating = False

    def _update_phases(self) -> None:
        mem = self._memory_frame()
        if mem is None or self.step_dd.value is None:
            self.phase_dd.options = []
            return
        at = mem[mem["step"] == self.step_dd.value]
        phases = _ordered_unique(plots._snapshot_order(at)["phase"].tolist())
        events = _ordered_unique(sorted(at["event"].dropna().unique().tolist(), key=lambda e: e != "end"))
        old_phase = self.phase_dd.value
        old_event = self.event_dd.value
        was_updating, self._updating = self._updating, True
        try:
            self.event_dd.options = events or ["end"]
            self.event_dd.value = old_event if old_event in self.event_dd.options else self.event_dd.options[0]
            self.phase_dd.options = phases
            if phases:
                if old_phase in phases and not self._follow_phase:
                    self.phase_dd.value = old_phase
                else:  # the last phase with a snapshot for the chosen event
                    ev = at[at["event"] == self.event_dd.value]
                    ev_phases = plots._snapshot_order(ev)["phase"].tolist() if len(ev) else phases
                    self.phase_dd.value = ev_phases[-1]
        finally:
            self._updating = was_updating

    def _on_step(self, change) -> None:
        if self._updating:
            return
        opts = list(self.step_dd.options)
        self._follow_latest = bool(opts) and change["new"] == opts[-1]
        self._updating = True
        try:
            self._update_phases()
        finally:
            self._updating = False
        self._render_memory()

    def _on_phase(self, change) -> None:
        if self._updating:
            return
        opts = list(self.phase_dd.options)
        self._follow_phase = bool(opts) and change["new"] == opts[-1]
        self._render_memory()

    def _on_memory_selection(self, _change) -> None:
        if self._updating:
            return
        self._render_memory()

    def _render_memory(self) -> None:
        self.render_counts["memory"] += 1
        mem = self._memory_frame()
        if mem is None:
            _set_outputs(self.memory_out, _text_output("no memory snapshots yet"))
            return
        try:
            fig = plots.plot_memory_bars(mem, step=self.step_dd.value, phase=self.phase_dd.value,
                                         event=self.event_dd.value)
        except ValueError as e:
            _set_outputs(self.memory_out, _text_output(str(e)))
            return
        _set_outputs(self.memory_out, figure_output(fig, self.dpi))

    def _render_timeline(self) -> None:
        mem = self._memory_frame()
        if mem is None:
            _set_outputs(self.timeline_out)
            return
        try:
            fig = plots.plot_memory_timeline(mem, metric="used")
        except ValueError as e:
            _set_outputs(self.timeline_out, _text_output(str(e)))
            return
        _set_outputs(self.timeline_out, figure_output(fig, self.dpi))

    def _render_samples(self) -> None:
        self.render_counts["samples"] += 1
        df = self._data["rollouts"]
        if not isinstance(df, pd.DataFrame) or df.empty:
            self.samples_html.value = '<p style="color:#777"><i>no samples yet</i></p>'
            return
        flt = None if self.filter_dd.value == "all" else self.filter_dd.value
        try:
            rows = tables.page_rollouts(df, step="latest" if "step" in df.columns else None,
                                        n=self.n_samples, filter=flt)
            head = ""
            if "step" in df.columns:
                latest = df[df["step"] == df["step"].max()]
                head = (f'<p style="font-size:12px">step {html.escape(plots._fmt_step(df["step"].max()))}: '
                        f"{len(latest)} samples")
                if "score" in latest.columns:
                    s = pd.to_numeric(latest["score"], errors="coerce")
                    head += f", mean score {s.mean():.3f}, correct {(s >= 1).mean():.0%}"
                head += "</p>"
            self.samples_html.value = head + tables.rollouts_html(rows, n=self.n_samples, max_chars=self.max_chars)
        except ValueError as e:
            self.samples_html.value = f'<p style="color:#c00">{html.escape(str(e))}</p>'
