"""A small ipywidgets dashboard fed by plain callables returning DataFrames.

    dash = Dashboard(lambda: exp.history, lambda: mem.frame(), lambda: exp.rollouts)
    dash              # shows the panel in a notebook
    exp.step(); dash.refresh()

Figures are rendered to PNG and put straight into ``Output.outputs`` (no ``with out:`` capture),
so the dashboard also works, and can be tested, without a live kernel.

Static fallback: displaying a dashboard emits one output that carries the widget view *and*
``image/png`` (all figures stacked into one image), ``text/html`` (the figures as embedded PNGs
plus the newest samples) and ``text/plain``. A live Jupyter with the widget front end shows the
panel; an exported notebook, nbconvert HTML, GitHub's notebook view or a terminal IPython shows
the images or the text. ``refresh()`` updates that output in place, so a saved notebook keeps the
latest figures. ``dash.static()`` / ``dash.to_html()`` / ``dash.to_png()`` / ``dash.save(path)``
give the same fallback explicitly.
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


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _output_parts(out) -> list[tuple[str, str]]:
    """("png", base64) / ("text", message) for each display_data in an ``Output`` widget."""
    parts = []
    for o in getattr(out, "outputs", ()):
        data = o.get("data", {})
        if "image/png" in data:
            parts.append(("png", data["image/png"]))
        elif "text/plain" in data:
            parts.append(("text", str(data["text/plain"])))
    return parts


def stack_pngs(pngs: list[bytes], gap: int = 8) -> bytes:
    """One PNG with ``pngs`` stacked vertically (left-aligned, white background)."""
    import numpy as np
    from matplotlib import image as mpimg

    if not pngs:
        raise ValueError("stack_pngs needs at least one PNG")
    if len(pngs) == 1:
        return pngs[0]
    arrays = []
    for png in pngs:
        a = mpimg.imread(io.BytesIO(png), format="png")  # float32 in [0, 1], RGB or RGBA
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.shape[-1] == 3:
            a = np.concatenate([a, np.ones(a.shape[:2] + (1,), dtype=a.dtype)], axis=-1)
        arrays.append(a)
    width = max(a.shape[1] for a in arrays)
    height = sum(a.shape[0] for a in arrays) + gap * (len(arrays) - 1)
    canvas = np.ones((height, width, 4), dtype=np.float32)
    y = 0
    for a in arrays:
        canvas[y:y + a.shape[0], :a.shape[1]] = a
        y += a.shape[0] + gap
    buf = io.BytesIO()
    mpimg.imsave(buf, canvas, format="png")
    return buf.getvalue()


class StaticDashboard:
    """The dashboard as plain images and HTML (what an exported notebook or GitHub shows).

    ``png``: every figure stacked into one PNG (bytes, or None when there is no figure yet);
    ``html``: the figures as embedded PNGs plus the newest samples; ``text``: one-line summary.
    Displays as an image/HTML in any notebook front end; ``save(path)`` writes .html or .png.
    """

    def __init__(self, text: str, html: str, png: bytes | None):
        self.text, self.html, self.png = text, html, png

    def mimebundle(self) -> dict:
        data = {"text/plain": self.text, "text/html": self.html}
        if self.png is not None:
            data["image/png"] = base64.b64encode(self.png).decode("ascii")
        return data

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.mimebundle()

    def __repr__(self) -> str:
        return self.text

    def save(self, path) -> "Path":
        """Write ``path``: ``.png`` the stacked figures, anything else a standalone HTML page."""
        from pathlib import Path

        path = Path(path)
        if path.suffix.lower() == ".png":
            if self.png is None:
                raise ValueError("the dashboard has no figure yet (no training history or memory data); "
                                 "save it as .html to keep the text")
            path.write_bytes(self.png)
        else:
            path.write_text('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>rlkit dashboard</title>'
                            f"</head><body>{self.html}</body></html>\n", encoding="utf-8")
        return path


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
        self._display_handles: list = []  # IPython DisplayHandles of the shown outputs (updated on refresh)

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
        if self._display_handles and any(changed.values()):
            self._update_displays()
        return {"training": changed["history"] or changed["validation"], "memory": changed["memory"],
                "samples": changed["rollouts"]}

    # ------------------------------------------------------------------ display and static fallback
    def static(self) -> StaticDashboard:
        """The current figures as one stacked PNG plus an HTML page with them and the newest samples."""
        sections, pngs = [], []
        for title, outs in (("training", (self.training_out,)),
                            ("GPU memory", (self.memory_out, self.timeline_out))):
            body = []
            for kind, value in (p for out in outs for p in _output_parts(out)):
                if kind == "png":
                    pngs.append(base64.b64decode(value))
                    body.append(f'<img src="data:image/png;base64,{value}" alt="{html.escape(title)}" '
                                f'style="max-width:100%">')
                else:
                    body.append(f'<p style="color:#777"><i>{html.escape(value)}</i></p>')
            if title == "GPU memory" and self.step_dd.value is not None:
                title += (f" (step {plots._fmt_step(self.step_dd.value)}, phase {self.phase_dd.value}, "
                          f"event {self.event_dd.value})")
            sections.append(f"<h4>{html.escape(title)}</h4>" + "".join(body))
        sections.append("<h4>samples</h4>" + self.samples_html.value)
        status = f'<p style="font-size:12px">{self.status.value}</p>' if self.status.value else ""
        page = ('<div class="rlkit-dashboard"><p><b>rlkit dashboard</b> (static copy: run the notebook '
                "with ipywidgets for the interactive panel)</p>" + status + "".join(sections) + "</div>")
        return StaticDashboard(self._text_summary(n_figures=len(pngs)), page, stack_pngs(pngs) if pngs else None)

    def to_html(self) -> str:
        """The static fallback as an HTML fragment (figures embedded as base64 PNGs, newest samples)."""
        return self.static().html

    def to_png(self) -> bytes | None:
        """Every current figure stacked into one PNG (None when there is no figure yet)."""
        return self.static().png

    def save(self, path):
        """Write the static fallback: ``.png`` the stacked figures, anything else a standalone HTML page."""
        return self.static().save(path)

    def _latest_parts(self) -> list[str]:
        """'step N', 'score x', 'len y' of the newest history row (empty before the first step)."""
        parts = []
        h = self._data["history"]
        if isinstance(h, pd.DataFrame) and len(h):
            last = h.iloc[-1]
            if "step" in h.columns:
                parts.append(f"step {plots._fmt_step(last['step'])}")
            for col, name in (("critic/score/mean", "score"), ("response_length/mean", "len")):
                if col in h.columns and pd.notna(last[col]):
                    parts.append(f"{name} {float(last[col]):.3g}")
        return parts

    def _text_summary(self, n_figures: int) -> str:
        parts = self._latest_parts()
        parts += [f"{key}: {err}" for key, err in self.errors.items()]
        head = "rlkit Dashboard" + (f" ({', '.join(parts)})" if parts else " (no data yet)")
        return (f"{head}: {n_figures} figure(s): training curves, GPU memory, newest samples. "
                "The interactive panel needs Jupyter with ipywidgets.")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Widget view plus image/png, text/html and text/plain fallbacks."""
        data = self.static().mimebundle()
        widget = self._widget._repr_mimebundle_() or {}
        if WIDGET_MIME in widget:
            data[WIDGET_MIME] = widget[WIDGET_MIME]
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data

    def _ipython_display_(self):
        from IPython.display import display

        handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
        if handle is not None:
            self._display_handles.append(handle)

    def _update_displays(self) -> None:
        bundle = self._repr_mimebundle_()
        for handle in self._display_handles:
            try:
                handle.update(bundle, raw=True)
            except Exception:  # no kernel any more (e.g. a closed front end): nothing to update
                pass

    # ------------------------------------------------------------------ rendering
    def _render_status(self) -> None:
        parts = self._latest_parts()
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
