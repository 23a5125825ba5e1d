"""Memory snapshots, the recorder's tidy frame, verl's peak metrics and trace files - no GPU needed:
NVML is a fake ``pynvml`` module and torch's CUDA counters are monkeypatched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest
import torch

from rlkit.diagnostics import memory
from rlkit.diagnostics.memory import (
    FRAME_COLUMNS,
    GPUMemory,
    MemoryRecorder,
    MemorySnapshot,
    ProcessMemory,
    TraceFormatError,
    gpu_memory_lines,
    load_trace,
    save_trace,
    snapshot,
    trace_frame,
)

GiB = 2**30
OTHER_PID = os.getppid()  # a real process with a readable name, standing in for "another process"


class FakeNVMLError(Exception):
    pass


def fake_pynvml(gpus, calls=None, procs_api="default", init_error=None):
    """A pynvml stand-in. ``gpus``: list of dicts name, uuid, total, used, procs [(pid, bytes|None)]."""
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    calls = calls if calls is not None else {}

    def count(name):
        calls[name] = calls.get(name, 0) + 1

    def nvmlInit():
        count("init")
        if init_error:
            raise FakeNVMLError(init_error)

    m.nvmlInit = nvmlInit
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetName = lambda h: gpus[h[1]]["name"].encode()  # old bindings return bytes
    m.nvmlDeviceGetUUID = lambda h: gpus[h[1]]["uuid"]

    def mem(h):
        g = gpus[h[1]]
        return types.SimpleNamespace(total=g["total"], used=g["used"], free=g["total"] - g["used"])

    m.nvmlDeviceGetMemoryInfo = mem

    def procs(h):
        count("procs")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in gpus[h[1]].get("procs", [])]

    def fails(h):
        raise FakeNVMLError("Function Not Found")

    if procs_api == "default":
        m.nvmlDeviceGetComputeRunningProcesses = procs
    elif procs_api == "v2-only":
        m.nvmlDeviceGetComputeRunningProcesses = fails
        m.nvmlDeviceGetComputeRunningProcesses_v3 = fails
        m.nvmlDeviceGetComputeRunningProcesses_v2 = procs
    return m


TWO_GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa1111-0000", "total": 80 * GiB, "used": 3 * GiB,
     "procs": [(os.getpid(), 2 * GiB), (OTHER_PID, 1 * GiB)]},
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-bbbb2222-0000", "total": 80 * GiB, "used": 21 * GiB,
     "procs": [(OTHER_PID, 20 * GiB), (424242, None)]},
]


@pytest.fixture(autouse=True)
def fresh_nvml(monkeypatch):
    memory._reset_nvml_cache()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    memory._reset_nvml_cache()


def use_nvml(monkeypatch, gpus, **kw):
    calls = {}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus, calls, **kw))
    return calls


def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails


def fake_torch_cuda(monkeypatch, n=2, allocated=(5 * GiB, 1 * GiB), reserved=(6 * GiB, 1 * GiB),
                    peak_allocated=(7 * GiB, 2 * GiB), peak_reserved=(8 * GiB, 2 * GiB), free=None, total=80 * GiB):
    c = torch.cuda
    monkeypatch.setattr(c, "is_initialized", lambda: True)
    monkeypatch.setattr(c, "device_count", lambda: n)
    monkeypatch.setattr(c, "current_device", lambda: 0)
    monkeypatch.setattr(c, "memory_allocated", lambda i=None: allocated[i])
    monkeypatch.setattr(c, "memory_reserved", lambda i=None: reserved[i])
    monkeypatch.setattr(c, "max_memory_allocated", lambda i=None: peak_allocated[i])
    monkeypatch.setattr(c, "max_memory_reserved", lambda i=None: peak_reserved[i])
    if free is not None:
        monkeypatch.setattr(c, "mem_get_info", lambda i=None: (free[i], total))
        monkeypatch.setattr(c, "get_device_properties",
                            lambda i: types.SimpleNamespace(name=f"Fake GPU {i}", uuid=f"{i:04d}-uuid"))


def forbid_cuda_init(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("snapshot() touched CUDA in a process without a context")

    for name in ("init", "_lazy_init", "mem_get_info", "device_count", "current_device", "memory_allocated",
                 "memory_reserved", "max_memory_allocated", "max_memory_reserved", "is_available",
                 "get_device_properties", "set_device", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, boom)


# ---------------------------------------------------------------------------------------- snapshot
def test_snapshot_structure_with_nvml_and_torch(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS)
    fake_torch_cuda(monkeypatch)
    s = snapshot(rank=3, step=7, phase="gen", event="start")
    assert (s.rank, s.step, s.phase, s.event, s.pid, s.source) == (3, 7, "gen", "start", os.getpid(), "nvml")
    assert s.node and s.host_rss > 0 and abs(s.time - time.time()) < 60
    assert [g.index for g in s.gpus] == [0, 1]
    g0, g1 = s.gpus
    assert (g0.name, g0.uuid, g0.total, g0.used, g0.free) == ("NVIDIA H100 80GB HBM3", "GPU-aaaa1111-0000",
                                                              80 * GiB, 3 * GiB, 77 * GiB)
    assert (g1.used, g1.free) == (21 * GiB, 59 * GiB)
    # processes, with names read from /proc
    assert [(p.pid, p.bytes) for p in g0.processes] == [(os.getpid(), 2 * GiB), (OTHER_PID, GiB)]
    assert g0.processes[0].name and g0.processes[1].name
    # usedGpuMemory None -> 0 bytes and a note; a vanished pid has no name
    assert (g1.processes[1].pid, g1.processes[1].bytes, g1.processes[1].name) == (424242, 0, None)
    assert any("424242" in n and "0 bytes" in n for n in s.notes)
    # torch counters per device index
    assert (g0.torch_allocated, g0.torch_reserved, g0.torch_peak_allocated, g0.torch_peak_reserved) == \
        (5 * GiB, 6 * GiB, 7 * GiB, 8 * GiB)
    assert (g1.torch_allocated, g1.torch_reserved) == (GiB, GiB)


def test_snapshot_dict_round_trip(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS)
    fake_torch_cuda(monkeypatch)
    s = snapshot(rank=1, step=2, phase="update_actor", event="end")
    d = s.to_dict()
    json.dumps(d)  # JSON-able
    assert d["gpus"][1]["processes"][0] == {"pid": OTHER_PID, "name": s.gpus[1].processes[0].name, "bytes": 20 * GiB}
    assert MemorySnapshot.from_dict(d) == s
    with pytest.raises(ValueError, match=r"gpus\[0\]\.free"):
        MemorySnapshot.from_dict({**d, "gpus": [{**d["gpus"][0], "free": "lots"}]})


def test_nvml_init_is_cached(monkeypatch):
    calls = use_nvml(monkeypatch, TWO_GPUS)
    for _ in range(5):
        snapshot()
    assert calls["init"] == 1 and calls["procs"] == 10


def test_process_list_falls_back_to_v2(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS, procs_api="v2-only")
    s = snapshot()
    assert [p.bytes for p in s.gpus[1].processes] == [20 * GiB, 0]


def test_process_list_unreadable_is_noted(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS, procs_api="none")
    s = snapshot()
    assert s.source == "nvml" and s.gpus[0].processes == []
    assert any("process list unreadable" in n for n in s.notes)


def test_cuda_visible_devices_by_index_and_uuid(monkeypatch):
    three = [dict(TWO_GPUS[0]), dict(TWO_GPUS[1]),
             {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-cccc3333-0000", "total": 80 * GiB, "used": 0}]
    use_nvml(monkeypatch, three)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    s = snapshot()
    assert [(g.index, g.uuid) for g in s.gpus] == [(0, "GPU-cccc3333-0000"), (1, "GPU-aaaa1111-0000")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-cccc")
    assert [g.uuid for g in snapshot().gpus] == ["GPU-bbbb2222-0000", "GPU-cccc3333-0000"]
    # CUDA stops at the first invalid entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")
    s = snapshot()
    assert [g.uuid for g in s.gpus] == ["GPU-bbbb2222-0000"]
    assert any("'7'" in n for n in s.notes)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert snapshot().gpus == []
    # devices= picks visible indices
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [g.index for g in snapshot(devices=[2]).gpus] == [2]


def test_snapshot_does_not_initialise_cuda(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    forbid_cuda_init(monkeypatch)
    s = snapshot()
    assert s.source == "nvml" and len(s.gpus) == 2
    assert all(g.torch_allocated is None and g.torch_peak_reserved is None for g in s.gpus)
    assert any("not initialised" in n and "torch_* fields are None" in n for n in s.notes)


def test_real_torch_is_not_initialised_by_snapshot():
    code = ("import torch; from rlkit.diagnostics.memory import snapshot; snapshot(); snapshot(devices=[0]); "
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cpu_degrades_to_source_none(monkeypatch):
    no_nvml(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    forbid_cuda_init(monkeypatch)
    s = snapshot(rank=2)
    assert s.source == "none" and s.gpus == [] and s.host_rss > 0
    text = " ".join(s.notes)
    assert "pip install nvidia-ml-py" in text and "NVML" in text


def test_gpu_memory_lines_come_from_the_snapshot(monkeypatch):
    """The one reader behind error messages (engine OOM, a dead worker): NVML, never a new CUDA context."""
    use_nvml(monkeypatch, TWO_GPUS)
    forbid_cuda_init(monkeypatch)
    assert gpu_memory_lines() == ["GPU 0: free 77.00 GiB, used 3.00 GiB of 80.00 GiB",
                                  "GPU 1: free 59.00 GiB, used 21.00 GiB of 80.00 GiB"]
    assert gpu_memory_lines(devices=[1]) == ["GPU 1: free 59.00 GiB, used 21.00 GiB of 80.00 GiB"]


def test_gpu_memory_lines_say_why_nothing_was_read(monkeypatch):
    no_nvml(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    forbid_cuda_init(monkeypatch)
    (line,) = gpu_memory_lines()
    assert line.startswith("(GPU memory unavailable: ") and "pip install nvidia-ml-py" in line


def test_nvml_init_failure_is_noted(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS, init_error="Driver Not Loaded")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    s = snapshot()
    assert s.source == "none" and "Driver Not Loaded" in " ".join(s.notes)


def test_torch_fallback_without_nvml(monkeypatch):
    no_nvml(monkeypatch)
    # device 1 has nothing reserved and is not current: no context there, so it must not be read
    fake_torch_cuda(monkeypatch, reserved=(6 * GiB, 0), free=(70 * GiB, 79 * GiB))
    s = snapshot()
    assert s.source == "torch"
    assert [(g.index, g.free, g.used, g.total, g.uuid) for g in s.gpus] == [(0, 70 * GiB, 10 * GiB, 80 * GiB,
                                                                             "GPU-0000-uuid")]
    assert s.gpus[0].processes == [] and s.gpus[0].torch_reserved == 6 * GiB
    assert any("NVML unavailable" in n for n in s.notes) and any("GPU 1: skipped" in n for n in s.notes)


def test_hundred_snapshots_are_cheap_on_cpu():
    snapshot()  # first call pays the imports
    t0 = time.perf_counter()
    for _ in range(100):
        snapshot()
    assert time.perf_counter() - t0 < 1.0


def test_hundred_snapshots_are_cheap_with_nvml(monkeypatch):
    use_nvml(monkeypatch, TWO_GPUS)
    fake_torch_cuda(monkeypatch)
    snapshot()
    t0 = time.perf_counter()
    for _ in range(100):
        snapshot()
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------- recorder/frame
def make_snap(step=1, phase="gen", event="start", rank=0, t=1000.0, rss=3 * GiB, source="nvml", pid=100,
              alloc=(4 * GiB, 2 * GiB), peak_alloc=(5 * GiB, 3 * GiB), peak_res=(6 * GiB, 4 * GiB)):
    gpus = [
        GPUMemory(index=i, name="H100", uuid=f"GPU-{i}", total=80 * GiB, used=(10 + i) * GiB, free=(70 - i) * GiB,
                  processes=[ProcessMemory(pid, "python", 5 * GiB), ProcessMemory(200 + i, "other", (i + 1) * GiB)],
                  torch_allocated=alloc[i], torch_reserved=alloc[i] + GiB,
                  torch_peak_allocated=peak_alloc[i], torch_peak_reserved=peak_res[i])
        for i in range(2)]
    return MemorySnapshot(time=t, node="node0", rank=rank, pid=pid, host_rss=rss, gpus=gpus, source=source,
                          notes=[], step=step, phase=phase, event=event)


def test_tidy_frame():
    rec = MemoryRecorder()
    rec.extend([make_snap(), make_snap(event="end", t=1001.0).to_dict()])  # objects or dicts from workers
    df = rec.to_frame()
    assert list(df.columns) == FRAME_COLUMNS
    assert list(df.columns[:8]) == ["step", "phase", "event", "node", "rank", "gpu", "metric", "bytes"]
    assert len(df) == 2 * (1 + 2 * 8)
    one = df[(df.event == "start")]
    assert set(one.metric) == {"host_rss", "total", "used", "free", "torch_allocated", "torch_reserved",
                               "torch_peak_allocated", "torch_peak_reserved", "other_processes"}
    host = one[one.metric == "host_rss"]
    assert list(host.gpu) == [-1] and list(host.bytes) == [3 * GiB]
    get = lambda gpu, metric: int(one[(one.gpu == gpu) & (one.metric == metric)].bytes.iloc[0])  # noqa: E731
    assert get(1, "free") == 69 * GiB and get(0, "torch_allocated") == 4 * GiB
    assert get(0, "other_processes") == GiB and get(1, "other_processes") == 2 * GiB  # own pid 100 excluded
    assert one.step.iloc[0] == 1 and (one.time == 1000.0).all()


def test_frame_skips_unknown_values():
    s = make_snap(source="torch")
    for g in s.gpus:
        g.torch_allocated = g.torch_reserved = g.torch_peak_allocated = g.torch_peak_reserved = None
    df = trace_frame([s])
    assert set(df.metric) == {"host_rss", "total", "used", "free"}  # no process list, no torch counters
    empty = trace_frame([])
    assert list(empty.columns) == FRAME_COLUMNS and len(empty) == 0


def test_recorder_records_and_clears(monkeypatch):
    no_nvml(monkeypatch)
    rec = MemoryRecorder(rank=4)
    rec.record(step=0, phase="gen", event="start")
    rec.step = 1
    rec.on_phase("update_actor", "end")  # PhaseTimer callback
    assert [(r.step, r.phase, r.event, r.rank) for r in rec.records] == [(0, "gen", "start", 4),
                                                                          (1, "update_actor", "end", 4)]
    df = rec.to_frame()
    assert list(df.metric) == ["host_rss", "host_rss"]
    rec.clear()
    assert rec.records == [] and len(rec.to_frame()) == 0


def test_peak_metrics_like_verl():
    rec = MemoryRecorder()
    rec.extend([make_snap(t=1.0, rss=3 * GiB, peak_alloc=(5 * GiB, 9 * GiB)),
                make_snap(t=3.0, rss=int(2.5 * GiB), peak_res=(6 * GiB, 11 * GiB)),
                make_snap(t=2.0, rss=7 * GiB)])
    m = rec.peak_metrics()
    assert m["perf/max_memory_allocated_gb"] == pytest.approx(9.0)
    assert m["perf/max_memory_reserved_gb"] == pytest.approx(11.0)
    assert m["perf/cpu_memory_used_gb"] == pytest.approx(2.5)  # the latest snapshot's host RSS
    assert MemoryRecorder().peak_metrics() == {}


# ------------------------------------------------------------------------------------------- traces
def test_trace_round_trip(tmp_path):
    recs = [make_snap(), make_snap(step=2, event="end", t=1002.5)]
    path = save_trace(tmp_path / "sub" / "trace.json", recs, meta={"run": "demo"})
    loaded, meta = load_trace(path)
    assert loaded == recs
    assert meta["run"] == "demo" and "rlkit_version" in meta
    doc = json.loads(path.read_text())
    assert doc["format"] == "rlkit-memory-trace" and doc["version"] == 1
    assert trace_frame(loaded).equals(trace_frame(recs))
    # a recorder saves too; overwriting leaves no temporary file behind
    rec = MemoryRecorder()
    rec.extend(recs[:1])
    save_trace(path, rec)
    assert load_trace(path)[0] == recs[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["trace.json"]


def test_save_trace_is_atomic_on_bad_meta(tmp_path):
    path = save_trace(tmp_path / "t.json", [make_snap()])
    before = path.read_text()
    with pytest.raises(TypeError):
        save_trace(path, [make_snap(step=9)], meta={"bad": object()})
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.json"]


def _write(tmp_path, content):
    p = tmp_path / "trace.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def _good(tmp_path):
    return json.loads(save_trace(tmp_path / "good.json", [make_snap()]).read_text())


@pytest.mark.parametrize("case,pattern", [
    ("not json", r"not valid JSON"),
    ("list", r"top level is a list"),
    ("format", r"format is 'something-else'"),
    ("no records", r"missing key 'records'"),
    ("records type", r"'records' must be a list"),
    ("bad field type", r"records\[0\]\.gpus\[0\]\.free: expected an integer"),
    ("missing field", r"records\[0\]: missing key 'host_rss'"),
    ("bad version", r"'version' must be a positive integer"),
])
def test_malformed_traces(tmp_path, case, pattern):
    good = _good(tmp_path)
    if case == "not json":
        content = "{this is not json"
    elif case == "list":
        content = [good]
    elif case == "format":
        content = {**good, "format": "something-else"}
    elif case == "no records":
        content = {k: v for k, v in good.items() if k != "records"}
    elif case == "records type":
        content = {**good, "records": {"0": good["records"][0]}}
    elif case == "bad field type":
        rec = json.loads(json.dumps(good["records"][0]))
        rec["gpus"][0]["free"] = "77 GiB"
        content = {**good, "records": [rec]}
    elif case == "missing field":
        rec = dict(good["records"][0])
        del rec["host_rss"]
        content = {**good, "records": [rec]}
    else:
        content = {**good, "version": "one"}
    path = _write(tmp_path, content)
    with pytest.raises(TraceFormatError, match=pattern) as info:
        load_trace(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_newer_trace_version_says_upgrade(tmp_path):
    good = _good(tmp_path)
    path = _write(tmp_path, {**good, "version": 2, "meta": {"rlkit_version": "0.9.0"}})
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    msg = str(info.value)
    assert str(path) in msg and "version 2" in msg and "0.9.0" in msg and "pip install -U rlkit" in msg
    assert "reads trace versions up to 1" in msg


def test_modules_stay_free_of_plotting():
    code = ("import sys, rlkit.diagnostics.memory, rlkit.diagnostics.balance; "
            "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'rlkit.viz', 'pandas'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ sanitising
def leaky_snap():
    """A snapshot as a Ray worker on a shared host would record it: IP host name, paths in the notes."""
    s = make_snap()
    s.node = "10.1.2.3"
    s.notes = ["model loaded from /home/alice/models/Qwen2.5-0.5B (cwd /work/alice/run1)",
               "worker on ip-10-1-2-3 reached 10.1.2.3:6379 and [fe80::1ff:fe23:4567:890a]:8265"]
    return s


def test_sanitize_paths_ips_and_user_names():
    from rlkit.diagnostics.memory import sanitize

    assert sanitize('File "/work/main/rlkit/training/worker.py", line 90') == \
        'File "<path>/rlkit/training/worker.py", line 90'
    assert sanitize("cwd=/home/alice/proj/run1 model /root/models/Qwen2.5-0.5B") == \
        "cwd=<path>/run1 model <path>/Qwen2.5-0.5B"
    assert sanitize("/home/alice") == "<path>" and sanitize("cd ~alice/x") == "cd ~/x"
    assert sanitize("saved to /tmp/t.json, scratch in /tmp") == "saved to <path>/t.json, scratch in <path>"
    assert sanitize(r"C:\Users\bob\runs\trace.json") == r"<path>\trace.json"
    assert sanitize("/usr/lib/python3.12/site-packages/torch/cuda/__init__.py") == "<path>/torch/cuda/__init__.py"
    # the same address gets the same name everywhere; dashed EC2 host names and IPv6 too
    assert sanitize("(pid=2774, ip=192.0.2.2) then 192.0.2.2:6379, ip-10-0-0-5, 2001:db8::7334") == \
        "(pid=2774, ip=node0) then node0:6379, node1, node2"
    # names already in use are skipped
    assert sanitize({"node": "10.0.0.5", "other": ["node0"]}) == {"node": "node1", "other": ["node0"]}
    # left alone: relative paths, ratios, units, URLs, versions, times, GPU labels, numbers
    kept = ("r0/gpu0", "57.14/77.14", "min free / local free", "tokens/s/GPU", "+/- 3", "http://example.com/a/b",
            "SGLang 0.5.15.post1, driver 580.159.04", "14:03:12", "vm:GPU 1 (rank 1)", "n/a")
    for text in kept:
        assert sanitize(text) == text, text
    assert sanitize({"a": [1, 2.5, None, True], 3: ("x",)}) == {"a": [1, 2.5, None, True], 3: ["x"]}
    # once is enough: a result read back and sanitised again (an earlier result file) comes out the same
    for text in ('File "/work/main/rlkit/training/worker.py"', "x=/tmp/a/b.parquet y=/m", r"C:\Users\bob\t.json",
                 "/usr/lib/python3.12/site-packages/torch/cuda/__init__.py", "ip 10.0.0.5"):
        assert sanitize(sanitize(text)) == sanitize(text), text


def test_saved_trace_has_no_paths_or_ips_and_round_trips(tmp_path):
    import re

    recs = [leaky_snap(), make_snap(step=2, event="end", t=1002.5)]
    meta = {"error": 'File "/home/alice/rlkit/rlkit/rollout/sglang.py", line 168 (ip=10.1.2.3)', "gib": 24.6}
    path = save_trace(tmp_path / "trace.json", recs, meta=meta)
    text = path.read_text()
    for bad in ("/home", "/work", "/tmp", "alice", "10.1.2.3", "ip-10", "fe80"):
        assert bad not in text, bad
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", text)
    loaded, m = load_trace(path)
    # the host's IP (also named in the notes and meta) -> node1, as the other record's node is node0
    assert loaded[0].node == "node1" and loaded[1].node == "node0"
    assert loaded[0].notes == ["model loaded from <path>/Qwen2.5-0.5B (cwd <path>/run1)",
                               "worker on node1 reached node1:6379 and [node2]:8265"]
    assert m["error"] == 'File "<path>/rlkit/rollout/sglang.py", line 168 (ip=node1)'
    assert m["gib"] == 24.6 and "IP addresses" in m["sanitized"]
    # every number survives: the frames match once the node name is mapped
    want = trace_frame(recs).replace({"node": {"10.1.2.3": "node1"}})
    assert trace_frame(loaded).equals(want)
    assert loaded[1] == recs[1]  # nothing to strip: unchanged
    # the caller's objects are not modified
    assert recs[0].node == "10.1.2.3" and meta["error"].startswith('File "/home/alice')
    # opting out keeps the readings as they were
    raw = save_trace(tmp_path / "raw.json", recs, meta=meta, sanitized=False)
    assert load_trace(raw)[0] == recs and "sanitized" not in load_trace(raw)[1]


def test_old_unsanitised_trace_still_loads(tmp_path):
    """A trace written before sanitising (no meta["sanitized"], raw node and notes) reads as before."""
    recs = [leaky_snap()]
    doc = {"format": "rlkit-memory-trace", "version": 1, "meta": {"rlkit_version": "0.1.0", "created": 5.0},
           "records": [r.to_dict() for r in recs]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    loaded, meta = load_trace(path)
    assert loaded == recs and meta == {"rlkit_version": "0.1.0", "created": 5.0}
    # saving it again strips it
    again = save_trace(tmp_path / "new.json", loaded, meta=meta)
    assert "10.1.2.3" not in again.read_text() and load_trace(again)[0][0].node == "node0"


def test_shipped_trace_is_sanitised():
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "data" / "gpu" / "tp2_imbalance_trace.json"
    text = path.read_text()
    # (rlkit/training/worker.py, kept package-relative, is no "/work" folder)
    assert not re.search(r"/(home|root|work|tmp)\b", text), re.search(r".{40}/(home|root|work|tmp)\b.{40}", text)
    assert not re.search(r"(?<![\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w])", text)
    records, meta = load_trace(path)
    assert len(records) == 49 and "sanitized" in meta
    pre = [r for r in records if r.phase == "engine_preflight"][-1]
    assert [g.free for g in pre.gpus] == [85014085632, 58598752256]  # the readings are kept
