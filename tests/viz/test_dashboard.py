"""rlkit.viz.dashboard.Dashboard without a live kernel (Agg, plain data)."""
from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

ipywidgets = pytest.importorskip("ipywidgets")

from rlkit.viz.dashboard import Dashboard

GIB = 1 << 30


def mem_frame(steps=(1, 2), phases=("gen", "reward", "update_actor")):
    rows, t = [], 0.0
    for step in steps:
        for pi, phase in enumerate(phases):
            for event in ("start", "end"):
                t += 1
                for rank in (0, 1):
                    used = (10 + 5 * pi + step) * GIB
                    for metric, b in {"total": 80 * GIB, "used": used, "free": 80 * GIB - used,
                                      "torch_allocated": used / 2, "torch_reserved": used * 0.6}.items():
                        rows.append(dict(step=step, phase=phase, event=event, node="n0", rank=rank, gpu=rank,
                                         metric=metric, bytes=b, time=t))
    return pd.DataFrame(rows)


def history_frame(n=3):
    return pd.DataFrame({"step": np.arange(1, n + 1), "critic/score/mean": np.linspace(0, 0.5, n),
                         "response_length/mean": np.linspace(100, 90, n), "actor/entropy": np.ones(n)})


def rollouts_frame(steps=(1, 2)):
    return pd.DataFrame([dict(step=s, uid=f"u{i}", prompt=f"question {s}-{i}", response=f"answer <b>{s}-{i}</b>",
                              ground_truth="42", score=float(i % 2), response_length=10 + i,
                              finish_reason="length" if i == 3 else "stop")
                         for s in steps for i in range(4)])


class Source:
    def __init__(self):
        self.history, self.memory, self.rollouts = history_frame(), mem_frame(), rollouts_frame()
        self.calls = 0

    def dashboard(self, **kw):
        return Dashboard(lambda: self.history, lambda: self.memory, lambda: self.rollouts, **{"dpi": 40, **kw})


def png_outputs(out):
    return [o for o in out.outputs if "image/png" in o.get("data", {})]


def test_construction_widgets_and_outputs():
    src = Source()
    d = src.dashboard()
    assert isinstance(d.widget, ipywidgets.VBox)
    tabs = d.tabs
    assert isinstance(tabs, ipywidgets.Tab) and tabs.titles == ("training", "GPU memory", "samples")
    training, memory, samples = tabs.children
    assert isinstance(training, ipywidgets.Output)
    assert isinstance(memory, ipywidgets.VBox) and isinstance(samples, ipywidgets.VBox)
    assert all(isinstance(c, ipywidgets.Dropdown) for c in memory.children[0].children)
    assert isinstance(memory.children[1], ipywidgets.Output)
    assert isinstance(samples.children[1], ipywidgets.HTML)
    for out in (d.training_out, d.memory_out, d.timeline_out):
        pngs = png_outputs(out)
        assert len(pngs) == 1 and base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    html = d.samples_html.value
    assert "question 2-0" in html and "question 1-0" not in html  # newest step only
    assert "&lt;b&gt;2-0&lt;/b&gt;" in html
    assert "step 3" in d.status.value


def test_selectors_list_steps_and_phases():
    d = Source().dashboard()
    assert list(d.step_dd.options) == [1, 2] and d.step_dd.value == 2
    assert list(d.phase_dd.options) == ["gen", "reward", "update_actor"] and d.phase_dd.value == "update_actor"
    assert list(d.event_dd.options) == ["end", "start"]
    n = d.render_counts["memory"]
    d.step_dd.value = 1
    assert d.render_counts["memory"] == n + 1
    d.phase_dd.value = "gen"
    assert d.render_counts["memory"] == n + 2 and len(png_outputs(d.memory_out)) == 1
    d.event_dd.value = "start"
    assert d.render_counts["memory"] == n + 3 and len(png_outputs(d.memory_out)) == 1


def test_refresh_is_cheap_when_unchanged_and_follows_new_data():
    src = Source()
    d = src.dashboard()
    counts = dict(d.render_counts)
    assert d.refresh() == {"training": False, "memory": False, "samples": False}
    assert d.render_counts == counts
    src.memory = mem_frame(steps=(1, 2, 3))
    src.rollouts = rollouts_frame(steps=(1, 2, 3))
    assert d.refresh() == {"training": False, "memory": True, "samples": True}
    assert list(d.step_dd.options) == [1, 2, 3] and d.step_dd.value == 3  # follows the newest step
    assert "question 3-0" in d.samples_html.value
    # a user-picked older step and phase stay selected across refreshes
    d.step_dd.value = 1
    d.phase_dd.value = "reward"
    src.memory = mem_frame(steps=(1, 2, 3, 4))
    d.refresh()
    assert d.step_dd.value == 1 and d.phase_dd.value == "reward"
    assert d.refresh(force=True) == {"training": True, "memory": True, "samples": True}


def test_sample_filter_dropdown():
    d = Source().dashboard()
    d.filter_dd.value = "correct"
    assert "question 2-1" in d.samples_html.value and "question 2-0" not in d.samples_html.value
    d.filter_dd.value = "truncated"
    assert "question 2-3" in d.samples_html.value and "question 2-1" not in d.samples_html.value


def test_missing_and_failing_sources():
    d = Dashboard(None, None, None)
    assert "no training history" in d.training_out.outputs[0]["data"]["text/plain"]
    assert "no memory snapshots" in d.memory_out.outputs[0]["data"]["text/plain"]
    assert "no samples" in d.samples_html.value
    assert list(d.step_dd.options) == []

    def boom():
        raise RuntimeError("source down")

    d = Dashboard(boom, mem_frame(), pd.DataFrame())  # fixed frames are accepted as well
    assert "source down" in d.status.value and "history" in d.errors
    assert len(png_outputs(d.memory_out)) == 1
    # a history without plottable metrics shows the reason instead of raising
    d = Dashboard(lambda: pd.DataFrame({"step": [1], "foo": ["x"]}))
    assert "none of the requested" in d.training_out.outputs[0]["data"]["text/plain"]


def test_ipython_display_and_no_pyplot_leak():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    d = Source().dashboard()
    d.refresh(force=True)
    assert plt.get_fignums() == before
    assert callable(d._ipython_display_)


def test_validation_source_adds_panel():
    val = pd.DataFrame({"step": [1, 3], "val-core/openai/gsm8k/reward/mean@1": [0.1, 0.3]})
    d = Dashboard(history_frame, get_validation=lambda: val)
    assert len(png_outputs(d.training_out)) == 1
    assert d.refresh() == {"training": False, "memory": False, "samples": False}


# ---------------------------------------------------------------- static fallback (no widget front end)
def is_png(b64: str) -> bool:
    return base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(b64: str) -> tuple[int, int]:
    import struct

    raw = base64.b64decode(b64)
    return struct.unpack(">II", raw[16:24])  # IHDR: width, height


def test_mimebundle_has_widget_view_and_static_fallbacks():
    d = Source().dashboard()
    bundle = d._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == d.widget.model_id
    assert is_png(bundle["image/png"])
    # the three figures (training, memory bars, memory timeline) stacked into one image
    heights = [png_size(o["data"]["image/png"])[1] for out in (d.training_out, d.memory_out, d.timeline_out)
               for o in png_outputs(out)]
    assert png_size(bundle["image/png"])[1] >= sum(heights)
    html = bundle["text/html"]
    assert html.count('<img src="data:image/png;base64,') == 3
    assert "question 2-0" in html and "&lt;b&gt;2-0&lt;/b&gt;" in html  # newest samples, escaped
    assert "rlkit Dashboard" in bundle["text/plain"] and "step 3" in bundle["text/plain"]
    assert set(d._repr_mimebundle_(include={"image/png"})) == {"image/png"}
    assert "image/png" not in d._repr_mimebundle_(exclude={"image/png"})


def capture_displays(monkeypatch):
    """What IPython's display machinery publishes (data, kwargs), without a front end."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    published = []
    monkeypatch.setattr(shell.display_pub, "publish",
                        lambda data, metadata=None, **kw: published.append((data, kw)))
    return shell, published


def test_ipython_display_publishes_the_fallbacks(monkeypatch):
    shell, published = capture_displays(monkeypatch)
    d = Source().dashboard()
    shell.display_formatter.format(d)  # what IPython does with a cell's last value
    assert published, "displaying a Dashboard published nothing"
    data, kw = published[-1]
    assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/html", "text/plain"} <= set(data)
    assert is_png(data["image/png"])
    assert kw.get("transient", {}).get("display_id")  # refresh() can update this output in place


def test_fallback_follows_refresh_and_updates_displayed_output(monkeypatch):
    _shell, published = capture_displays(monkeypatch)
    src = Source()
    d = src.dashboard()
    d._ipython_display_()
    first, kw = published[-1]
    display_id = kw["transient"]["display_id"]
    n = len(published)
    d.refresh()  # nothing changed: no update
    assert len(published) == n
    src.history = history_frame(5)
    src.rollouts = rollouts_frame(steps=(1, 2, 3))
    d.refresh()
    assert len(published) == n + 1
    data, kw = published[-1]
    assert kw.get("update") and kw["transient"]["display_id"] == display_id
    assert data["image/png"] != first["image/png"] and is_png(data["image/png"])
    assert "step 5" in data["text/plain"] and "question 3-0" in data["text/html"]
    assert d._repr_mimebundle_()["image/png"] == data["image/png"]


def test_static_views_and_save(tmp_path):
    d = Source().dashboard()
    st = d.static()
    assert st.png[:8] == b"\x89PNG\r\n\x1a\n" and st.png == d.to_png()
    assert st.html == d.to_html() and "question 2-0" in st.html
    assert repr(st) == st.text and set(st._repr_mimebundle_()) == {"text/plain", "text/html", "image/png"}
    assert d.save(tmp_path / "dash.png").read_bytes() == st.png
    page = d.save(tmp_path / "dash.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 3


def test_static_fallback_without_data():
    d = Dashboard(None, None, None)
    bundle = d._repr_mimebundle_()
    assert "image/png" not in bundle  # nothing to draw: text only
    assert "no training history yet" in bundle["text/html"] and "no data yet" in bundle["text/plain"]
    assert d.to_png() is None
    with pytest.raises(ValueError, match="no figure yet"):
        d.save("unused.png")
