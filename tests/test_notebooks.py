"""Every notebook runs top to bottom on CPU in its small mode, and produces its figures and widgets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, tmp_path: Path, shared_dir: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {"RLKIT_NOTEBOOK_SMALL": "1", "RLKIT_SHARED_DIR": str(shared_dir),
           "RLKIT_NOTEBOOK_WORKDIR": str(tmp_path / "work"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs(nb, mime: str) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if mime in o.get("data", {}))


def errors(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.slow
def test_quickstart(tmp_path, shared_dir):
    nb = run_notebook("01_quickstart.ipynb", tmp_path, shared_dir)
    assert not errors(nb)
    assert outputs(nb, "image/png") >= 1  # exp.plot()
    assert outputs(nb, "text/html") >= 2  # rollout tables
    assert outputs(nb, "application/vnd.jupyter.widget-view+json") >= 1  # exp.dashboard()


@pytest.mark.slow
def test_memory_balance(tmp_path, shared_dir):
    nb = run_notebook("02_memory_balance.ipynb", tmp_path, shared_dir)
    assert not errors(nb)
    assert outputs(nb, "image/png") >= 3  # bars, timeline, imbalance chart
    assert outputs(nb, "text/html") >= 1  # the balance report


@pytest.mark.slow
def test_custom_reward(tmp_path, shared_dir):
    nb = run_notebook("03_custom_reward.ipynb", tmp_path, shared_dir)
    assert not errors(nb)
    assert outputs(nb, "text/html") >= 1
