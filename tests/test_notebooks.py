"""Every notebook runs top to bottom on CPU in its small mode, and produces its figures and widgets.

Notebooks 01 and 03 also: prefer prepared ~/data/gsm8k parquet over any source (and never ask the
hub then), write nothing next to themselves, and are committed executed, with figures (PNG) that a
reader sees on the repository page, including the dashboard's static fallback. Notebook 04 (two CPU
ranks on a local Ray cluster) is committed executed too, and its sharded resume equals the straight run.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SELF_CONTAINED = ("01_quickstart.ipynb", "03_custom_reward.ipynb")  # committed with their outputs
COMMITTED_EXECUTED = SELF_CONTAINED + ("04_distributed.ipynb",)


def run_notebook(name: str, tmp_path: Path, shared_dir: Path, **env_overrides: str | None):
    """Execute a notebook in its small mode; ``env_overrides`` change (or, with None, unset) variables."""
    return run_notebook_nb(nbformat.read(NOTEBOOKS / name, as_version=4), tmp_path, shared_dir, **env_overrides)


def run_notebook_nb(nb, tmp_path: Path, shared_dir: Path, **env_overrides: str | None):
    env = {"RLKIT_NOTEBOOK_SMALL": "1", "RLKIT_SHARED_DIR": str(shared_dir),
           "RLKIT_NOTEBOOK_WORKDIR": str(tmp_path / "work"), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           **env_overrides}
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():  # the kernel inherits this process's environment
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
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


def code_outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def outputs(nb, mime: str) -> int:
    return sum(1 for o in code_outputs(nb) if mime in o.get("data", {}))


def errors(nb) -> list:
    return [o for o in code_outputs(nb) if o.get("output_type") == "error"]


def text_of(nb) -> str:
    """Everything a reader sees in the outputs as text (stream text, text/plain, text/html)."""
    parts = []
    for o in code_outputs(nb):
        if "text" in o:
            parts.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
        for mime in ("text/plain", "text/html"):
            v = o.get("data", {}).get(mime)
            if v is not None:
                parts.append("".join(v) if isinstance(v, list) else v)
    return "\n".join(parts)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with (size, mtime) of files (folders: (-1, 0))."""
    out = {}
    for p in folder.rglob("*"):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


def assert_nothing_written(before: dict, after: dict) -> None:
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k] and before[k][0] != -1)
    assert not new and not changed, f"the notebook wrote under notebooks/: new {new[:10]}, changed {changed[:10]}"


def assert_dashboards_have_png(nb) -> int:
    """Every dashboard output (a widget view shown by a cell calling ``dashboard()``; progress bars are
    widgets too) also carries a PNG, HTML and text fallback; returns how many there are."""
    dashboards = [o for c in nb.cells if c.cell_type == "code" and "dashboard(" in c.source
                  for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {})]
    for o in dashboards:
        data = o["data"]
        assert "image/png" in data, f"widget output without an image/png fallback: {sorted(data)}"
        assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert "text/plain" in data and "<img" in "".join(data.get("text/html", ""))
    return len(dashboards)


@pytest.mark.slow
def test_quickstart(tmp_path, shared_dir):
    before = listing(NOTEBOOKS)
    nb = run_notebook("01_quickstart.ipynb", tmp_path, shared_dir)
    assert not errors(nb)
    assert outputs(nb, "image/png") >= 1  # exp.plot()
    assert outputs(nb, "text/html") >= 2  # rollout tables
    assert outputs(nb, "application/vnd.jupyter.widget-view+json") >= 1  # exp.dashboard()
    assert assert_dashboards_have_png(nb) >= 1  # the dashboard's static fallback
    assert (tmp_path / "work" / "ckpt").is_dir()  # RLKIT_NOTEBOOK_WORKDIR is honoured
    assert_nothing_written(before, listing(NOTEBOOKS))


@pytest.mark.slow
def test_quickstart_prefers_local_parquet_offline(tmp_path, shared_dir, qwen_tokenizer_dir):
    """Prepared ~/data/gsm8k parquet wins over a source folder and the hub; with no work dir given,
    the notebook writes under ~/.cache/rlkit, never next to itself."""
    import rlkit

    home = tmp_path / "home"
    src = tmp_path / "marked-source"
    src.mkdir()
    for split in ("train", "test"):  # a recognisable GSM8K: every question names a marker
        rows = [{"question": f"Marker-{split}-{i} has {i} apples and buys 2 more. How many now?",
                 "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(8)]
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rlkit.datasets.gsm8k(local_dir=home / "data" / "gsm8k", source=src)
    bad_source = tmp_path / "bad-source"  # converting this one would fail: it must not be used
    bad_source.mkdir()
    (bad_source / "train.jsonl").write_text("not json\n")
    (bad_source / "test.jsonl").write_text("not json\n")
    shared = tmp_path / "shared"  # the tiny model's tokenizer only: no data/gsm8k to fall back on
    (shared / "tokenizers").mkdir(parents=True)
    (shared / "tokenizers" / "qwen2.5").symlink_to(qwen_tokenizer_dir, target_is_directory=True)

    before = listing(NOTEBOOKS)
    nb = run_notebook("01_quickstart.ipynb", tmp_path, shared_dir, HOME=str(home), RLKIT_NOTEBOOK_WORKDIR=None,
                      RLKIT_SHARED_DIR=str(shared), RLKIT_GSM8K_SOURCE=str(bad_source),
                      HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".config" / "matplotlib"))
    assert not errors(nb), errors(nb)[:1]
    text = text_of(nb)
    assert "data: ~/data/gsm8k (prepared parquet)" in text
    assert "Marker-train-" in text  # the rollouts came from the prepared parquet
    assert (home / ".cache" / "rlkit" / "notebooks" / "01_quickstart" / "ckpt").is_dir()  # the default work dir
    assert_nothing_written(before, listing(NOTEBOOKS))


@pytest.mark.slow
@pytest.mark.parametrize("name", SELF_CONTAINED)
def test_without_local_data_the_hub_is_asked_with_offline_advice(name, tmp_path, shared_dir):
    """No ~/data/gsm8k and no source: the data cell asks the hub, and offline says how to run offline."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    data_cell = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "rlkit.datasets.gsm8k(" in c.source)
    nb.cells = [c for c in nb.cells[:data_cell + 1] if c.cell_type == "markdown" or "rlkit.datasets.gsm8k(" in c.source
                or c.source.lstrip().startswith("# Parameters")]
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="DatasetUnavailableError"):
        run_notebook_nb(nb, tmp_path, shared_dir, HOME=str(home), RLKIT_SHARED_DIR=None, RLKIT_GSM8K_SOURCE=None,
                        RLKIT_NOTEBOOK_SMALL=None, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                        MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".config" / "matplotlib"))
    text = text_of(nb)
    assert "data: openai/gsm8k from the Hugging Face hub" in text
    assert "To run offline" in text and "--local_dir ~/data/gsm8k --source" in text


@pytest.mark.slow
def test_memory_balance(tmp_path, shared_dir):
    nb = run_notebook("02_memory_balance.ipynb", tmp_path, shared_dir)
    assert not errors(nb)
    assert outputs(nb, "image/png") >= 3  # bars, timeline, imbalance chart
    assert outputs(nb, "text/html") >= 1  # the balance report


@pytest.mark.slow
def test_custom_reward(tmp_path, shared_dir):
    before = listing(NOTEBOOKS)
    home = tmp_path / "home"  # no ~/data/gsm8k there: the data comes from $RLKIT_SHARED_DIR/data/gsm8k
    home.mkdir()
    nb = run_notebook("03_custom_reward.ipynb", tmp_path, shared_dir, HOME=str(home), RLKIT_GSM8K_SOURCE=None,
                      MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".config" / "matplotlib"))
    assert not errors(nb)
    assert outputs(nb, "text/html") >= 1
    assert outputs(nb, "image/png") >= 1  # exp.plot()
    assert "data: prepared from " in text_of(nb)
    assert (tmp_path / "work" / "gsm8k" / "train.parquet").is_file()  # converted into the work dir
    assert_nothing_written(before, listing(NOTEBOOKS))


@pytest.mark.slow
def test_distributed(tmp_path, shared_dir):
    """Two CPU ranks on a local Ray cluster (needs 2 CPUs): plan, steps, per-rank memory, the TP rule
    on the recorded trace, a sharded save and a resume equal to the straight run, shutdown."""
    pytest.importorskip("ray")
    before = listing(NOTEBOOKS)
    nb = run_notebook("04_distributed.ipynb", tmp_path, shared_dir, RAY_ADDRESS=None)
    assert not errors(nb), errors(nb)[:1]
    assert outputs(nb, "image/png") >= 2  # per-rank memory timeline, TP balance chart
    text = text_of(nb)
    assert "= world 2;" in text and "TP groups [0] [1]" in text  # ParallelPlan.describe()
    assert "WorkerGroup(1 node(s) x 2 = 2 ranks, CPU, running)" in text
    assert "ranks [0, 1]" in text  # both ranks recorded memory
    assert "SGLang raises on rank 0" in text
    assert "2 ranks, sharded" in text and "ranks/rank_1.pt" in text
    assert re.search(r"step \d+: \d+ metrics, largest \|difference\| 0\.00e\+00; identical responses: True", text), text[-3000:]
    assert re.search(r"free now: (\{[^}]*\}) of \1", text)  # shutdown gave the ranks' bundles back
    assert (tmp_path / "work" / "tiny-model").is_dir() and not list((tmp_path / "work").glob("ckpt-*"))  # temp ckpt removed
    assert_nothing_written(before, listing(NOTEBOOKS))


# ---------------------------------------------------------------- the committed notebooks
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|tmp|home|Users|var/folders)/")


@pytest.mark.parametrize("name", COMMITTED_EXECUTED)
def test_committed_notebook_has_figures(name):
    """What the repository page shows: executed cells, figures as PNG, dashboards with a PNG fallback,
    no paths of the machine that ran them, and a reasonable size."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "commit the notebook executed (every code cell run)"
    assert not errors(nb)
    assert outputs(nb, "image/png") >= 1
    assert_dashboards_have_png(nb)
    if name.startswith("01"):
        assert assert_dashboards_have_png(nb) >= 1
    raw = path.read_text(encoding="utf-8")
    found = sorted(set(ABSOLUTE_PATH.findall(raw)))
    assert not found, f"{name} outputs contain absolute paths of the machine that ran them: {found}"
    assert path.stat().st_size < 2_000_000, f"{name} is {path.stat().st_size} bytes; keep it under 2 MB"
    assert "outputs below were produced" in nb.cells[0].source.lower()
