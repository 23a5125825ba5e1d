"""GPU and host memory snapshots, a per-phase recorder and memory-trace files.

One :class:`MemorySnapshot` holds, for the calling process at one moment, every visible GPU's
NVML total/used/free, the processes using each GPU, this process's ``torch.cuda`` allocator
counters and the host RSS:

>>> from rlkit.diagnostics.memory import MemoryRecorder, snapshot
>>> snap = snapshot(rank=0, step=3, phase="gen", event="start")
>>> rec = MemoryRecorder()
>>> _ = rec.record(step=3, phase="gen", event="start")
>>> list(rec.to_frame().columns)
['step', 'phase', 'event', 'node', 'rank', 'gpu', 'metric', 'bytes', 'time']

Readings degrade instead of failing, and say why in ``notes``:

* NVML (``pip install nvidia-ml-py``, imported as ``pynvml``) gives total/used/free and the
  per-process list (``source="nvml"``).
* Without NVML, ``torch.cuda.mem_get_info`` is used on devices where this process already has a
  CUDA context (``source="torch"``; no process list).
* Otherwise ``source="none"`` and ``gpus`` is empty.

:func:`snapshot` never creates a CUDA context: the torch counters are read only when
``torch.cuda.is_initialized()``. NVML is initialised once per process and its static device facts
are cached, so a snapshot costs well under a few milliseconds per GPU.

NVML lists devices in PCI-bus order; ``GPUMemory.index`` is the CUDA/torch index as seen by this
process (``CUDA_VISIBLE_DEVICES`` applied, by index or ``GPU-<uuid prefix>``). In a container NVML
may report host PIDs; then this process is not recognised in the process list and its own usage
counts under ``other_processes`` (a note says so when detected).

This module is pure data: stdlib, torch, and pandas / pynvml / psutil imported lazily.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

__all__ = [
    "ProcessMemory",
    "GPUMemory",
    "MemorySnapshot",
    "snapshot",
    "gpu_memory_lines",
    "MemoryRecorder",
    "save_trace",
    "load_trace",
    "sanitize",
    "trace_frame",
    "peak_metrics",
    "TraceFormatError",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "FRAME_COLUMNS",
    "FRAME_METRICS",
]

GiB = 1024**3
TRACE_FORMAT = "rlkit-memory-trace"
TRACE_VERSION = 1
FRAME_COLUMNS = ["step", "phase", "event", "node", "rank", "gpu", "metric", "bytes", "time"]
FRAME_METRICS = ("total", "used", "free", "torch_allocated", "torch_reserved", "torch_peak_allocated",
                 "torch_peak_reserved", "other_processes")
NVML_INSTALL = "pip install nvidia-ml-py"
_NVML_NOT_AVAILABLE = (1 << 64) - 1  # NVML_VALUE_NOT_AVAILABLE for unsigned long long


# ---------------------------------------------------------------------------------------------- data
@dataclass
class ProcessMemory:
    """One process's memory on one GPU, as NVML reports it (includes its CUDA context)."""

    pid: int
    name: str | None
    bytes: int


@dataclass
class GPUMemory:
    """One visible GPU. ``index`` is the torch/CUDA index in the recording process."""

    index: int
    name: str
    uuid: str | None
    total: int
    used: int
    free: int
    processes: list[ProcessMemory] = field(default_factory=list)
    torch_allocated: int | None = None
    torch_reserved: int | None = None
    torch_peak_allocated: int | None = None
    torch_peak_reserved: int | None = None


@dataclass
class MemorySnapshot:
    """Memory of one process (``rank``) at one moment: its visible GPUs and its host RSS."""

    time: float
    node: str
    rank: int
    pid: int
    host_rss: int
    gpus: list[GPUMemory]
    source: str  # "nvml" | "torch" | "none"
    notes: list[str]
    step: int | None = None
    phase: str | None = None
    event: str | None = None  # "start" | "end"

    def to_dict(self) -> dict:
        """Plain JSON-able dict (nested GPUs and processes are dicts too)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MemorySnapshot":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` naming the first bad field."""
        return _snapshot_from_dict(d, "snapshot")

    def gpu(self, index: int) -> GPUMemory | None:
        """The GPU record with torch index ``index`` (None when not in this snapshot)."""
        for g in self.gpus:
            if g.index == index:
                return g
        return None


# -------------------------------------------------------------------------------- dict validation
def _type_error(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{where}: expected {expected}, got {type(value).__name__} {value!r:.60}")


def _get(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    return d[key]


def _int(d: dict, key: str, where: str, optional: bool = False) -> int | None:
    v = d.get(key) if optional else _get(d, key, where)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(f"{where}.{key}", "an integer" + (" or null" if optional else ""), v)
    return v


def _num(d: dict, key: str, where: str) -> float:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(f"{where}.{key}", "a number", v)
    return float(v)


def _str(d: dict, key: str, where: str, optional: bool = False) -> str | None:
    v = d.get(key) if optional else _get(d, key, where)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise _type_error(f"{where}.{key}", "a string" + (" or null" if optional else ""), v)
    return v


def _list(d: dict, key: str, where: str) -> list:
    v = _get(d, key, where)
    if not isinstance(v, list):
        raise _type_error(f"{where}.{key}", "a list", v)
    return v


def _dict(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise _type_error(where, "an object", v)
    return v


def _snapshot_from_dict(d: Any, where: str) -> MemorySnapshot:
    d = _dict(d, where)
    gpus = []
    for i, g in enumerate(_list(d, "gpus", where)):
        gw = f"{where}.gpus[{i}]"
        g = _dict(g, gw)
        procs = []
        for j, p in enumerate(_list(g, "processes", gw)):
            pw = f"{gw}.processes[{j}]"
            p = _dict(p, pw)
            procs.append(ProcessMemory(pid=_int(p, "pid", pw), name=_str(p, "name", pw, optional=True),
                                       bytes=_int(p, "bytes", pw)))
        gpus.append(GPUMemory(
            index=_int(g, "index", gw), name=_str(g, "name", gw), uuid=_str(g, "uuid", gw, optional=True),
            total=_int(g, "total", gw), used=_int(g, "used", gw), free=_int(g, "free", gw), processes=procs,
            torch_allocated=_int(g, "torch_allocated", gw, True), torch_reserved=_int(g, "torch_reserved", gw, True),
            torch_peak_allocated=_int(g, "torch_peak_allocated", gw, True),
            torch_peak_reserved=_int(g, "torch_peak_reserved", gw, True)))
    notes = _list(d, "notes", where)
    for i, n in enumerate(notes):
        if not isinstance(n, str):
            raise _type_error(f"{where}.notes[{i}]", "a string", n)
    source = _str(d, "source", where)
    if source not in ("nvml", "torch", "none"):
        raise ValueError(f"{where}.source: expected 'nvml', 'torch' or 'none', got {source!r}")
    return MemorySnapshot(
        time=_num(d, "time", where), node=_str(d, "node", where), rank=_int(d, "rank", where),
        pid=_int(d, "pid", where), host_rss=_int(d, "host_rss", where), gpus=gpus, source=source,
        notes=list(notes), step=_int(d, "step", where, optional=True), phase=_str(d, "phase", where, optional=True),
        event=_str(d, "event", where, optional=True))


def _as_snapshot(s: Any, where: str = "snapshot") -> MemorySnapshot:
    if isinstance(s, MemorySnapshot):
        return s
    return _snapshot_from_dict(s, where)


# ------------------------------------------------------------------------------------ NVML access
class _NVMLState:
    """NVML initialised once per process; static per-device facts cached."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.pid: int | None = None
        self.module = None  # the pynvml module when usable
        self.error: str | None = None  # why NVML is unusable
        self.count = 0
        self.handles: list = []
        self.names: list[str] = []
        self.uuids: list[str | None] = []
        self.totals: list[int | None] = []

    def get(self):
        """The initialised pynvml module or None (then ``self.error`` says why)."""
        if self.pid == os.getpid():
            return self.module
        with self.lock:
            if self.pid == os.getpid():
                return self.module
            self.reset()
            try:
                import pynvml  # nvidia-ml-py
            except ImportError as e:
                self.error = f"pynvml is not installed ({e}); `{NVML_INSTALL}` for per-GPU and per-process readings"
            else:
                try:
                    pynvml.nvmlInit()
                    self.count = int(pynvml.nvmlDeviceGetCount())
                    for i in range(self.count):
                        h = pynvml.nvmlDeviceGetHandleByIndex(i)
                        self.handles.append(h)
                        self.names.append(_text(_safe(pynvml.nvmlDeviceGetName, h)) or f"GPU {i}")
                        self.uuids.append(_text(_safe(pynvml.nvmlDeviceGetUUID, h)))
                        self.totals.append(None)
                    self.module = pynvml
                except Exception as e:  # NVMLError: no driver / library (CPU host with the package installed)
                    self.error = (f"NVML failed to initialise ({type(e).__name__}: {e}); no NVIDIA driver here? "
                                  f"NVML comes with the driver, the Python binding with `{NVML_INSTALL}`")
                    self.handles, self.names, self.uuids, self.totals, self.count = [], [], [], [], 0
            self.pid = os.getpid()
            return self.module


_NVML = _NVMLState()


def _reset_nvml_cache() -> None:
    """Forget the cached NVML state (tests; or after installing nvidia-ml-py in a running kernel)."""
    with _NVML.lock:
        _NVML.reset()


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return str(v)


def _visible_nvml_indices(uuids: list[str | None], notes: list[str]) -> list[int]:
    """NVML indices of the GPUs CUDA shows this process, in CUDA index order.

    Follows CUDA's parsing of ``CUDA_VISIBLE_DEVICES``: comma-separated indices or ``GPU-<uuid prefix>``;
    enumeration stops at the first invalid, unknown or repeated entry. MIG entries are not mapped.
    """
    n = len(uuids)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(n))
    out: list[int] = []
    for raw in env.split(","):
        entry = raw.strip()
        idx = None
        if entry.upper().startswith("MIG-"):
            notes.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG device; rlkit does not map MIG devices "
                         "to NVML (not recorded)")
            break
        if entry.upper().startswith("GPU-"):
            hits = [i for i, u in enumerate(uuids) if u and u.lower().startswith(entry.lower())]
            if len(hits) == 1:
                idx = hits[0]
        else:
            try:
                v = int(entry)
            except ValueError:
                v = -1
            if 0 <= v < n:
                idx = v
        if idx is None or idx in out:
            if entry:
                notes.append(f"CUDA_VISIBLE_DEVICES={env!r}: entry {entry!r} does not name a distinct GPU; CUDA "
                             "ignores it and every entry after it")
            break
        out.append(idx)
    return out


# ---------------------------------------------------------------------------------- small readers
def _host_rss(notes: list[str]) -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        notes.append("host RSS unreadable (no /proc/self/status and no psutil); host_rss=0")
        return 0


def _process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or None
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:
        return None


def _nvml_processes(nvml, handle, gpu_label: str, notes: list[str]) -> list[ProcessMemory]:
    names = ["nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v3",
             "nvmlDeviceGetComputeRunningProcesses_v2"]
    infos, errors = None, []
    for fname in names:
        fn = getattr(nvml, fname, None)
        if fn is None:
            continue
        try:
            infos = fn(handle)
            break
        except Exception as e:  # NVMLError_FunctionNotFound on older drivers, etc.
            errors.append(f"{fname}: {e}")
    if infos is None:
        notes.append(f"{gpu_label}: process list unreadable ({'; '.join(errors) or 'no NVML process API'})")
        return []
    procs, unknown = [], []
    for info in infos or []:
        pid = int(getattr(info, "pid", -1))
        used = getattr(info, "usedGpuMemory", None)
        if used is None or int(used) >= _NVML_NOT_AVAILABLE:
            unknown.append(pid)
            used = 0
        procs.append(ProcessMemory(pid=pid, name=_process_name(pid), bytes=int(used)))
    if unknown:
        notes.append(f"{gpu_label}: NVML gives no memory figure for pid(s) {unknown} (recorded as 0 bytes; "
                     "usual without permission to query other processes, or under MIG)")
    return procs


def _torch_counters(index: int) -> tuple[int, int, int, int] | None:
    try:
        return (int(torch.cuda.memory_allocated(index)), int(torch.cuda.memory_reserved(index)),
                int(torch.cuda.max_memory_allocated(index)), int(torch.cuda.max_memory_reserved(index)))
    except Exception:
        return None


def _torch_ready() -> bool:
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- snapshot
def snapshot(rank: int = 0, step: int | None = None, phase: str | None = None, event: str | None = None,
             devices: Sequence[int] | None = None) -> MemorySnapshot:
    """Read this process's view of GPU and host memory now.

    Args:
        rank: the worker's rank, stored as is.
        step, phase, event: labels for the PPO step / phase / "start" or "end".
        devices: torch indices to record (default: every GPU visible to this process).

    Never creates a CUDA context; cheap enough to call at every phase boundary.
    """
    notes: list[str] = []
    now = time.time()
    pid = os.getpid()
    host_rss = _host_rss(notes)
    torch_ready = _torch_ready()
    wanted = None if devices is None else {int(d) for d in devices}
    nvml = _NVML.get()
    gpus: list[GPUMemory] = []
    if nvml is not None:
        source = "nvml"
        gpus = _read_nvml(nvml, pid, torch_ready, wanted, notes)
    elif torch_ready:
        source = "torch"
        notes.append(f"NVML unavailable: {_NVML.error}. Using torch.cuda.mem_get_info on devices where this "
                     "process has a CUDA context; no per-process list.")
        gpus = _read_torch(wanted, notes)
    else:
        source = "none"
        why = ("this torch build has no CUDA" if torch.version.cuda is None else
               "torch.cuda is not initialised in this process, and snapshot() never creates a CUDA context")
        notes.append(f"no GPU readings: NVML unavailable ({_NVML.error}) and {why}. Install nvidia-ml-py "
                     f"(`{NVML_INSTALL}`) on a GPU machine to record GPU memory.")
    if source == "nvml" and not torch_ready:
        notes.append(f"torch.cuda is not initialised in this process (pid {pid}): torch_* fields are None "
                     "(snapshot() never creates a CUDA context)")
    return MemorySnapshot(time=now, node=_hostname(), rank=int(rank), pid=pid, host_rss=host_rss, gpus=gpus,
                          source=source, notes=notes, step=step, phase=phase, event=event)


def gpu_memory_lines(devices: Sequence[int] | None = None) -> list[str]:
    """One line per GPU, ``GPU 0: free 70.10 GiB, used 9.08 GiB of 79.18 GiB``, from :func:`snapshot` (so it
    never creates a CUDA context); one line saying why when nothing could be read. For error messages.

    >>> from rlkit.diagnostics.memory import gpu_memory_lines
    >>> isinstance(gpu_memory_lines(), list)
    True
    """
    snap = snapshot(devices=devices)
    if not snap.gpus:
        return [f"(GPU memory unavailable: {' '.join(snap.notes) or 'no GPU'})"]
    return [f"GPU {g.index}: free {g.free / GiB:.2f} GiB, used {g.used / GiB:.2f} GiB of {g.total / GiB:.2f} GiB"
            for g in snap.gpus]


_HOST: list[str] = []


def _hostname() -> str:
    if not _HOST:
        _HOST.append(socket.gethostname())
    return _HOST[0]


def _read_nvml(nvml, pid: int, torch_ready: bool, wanted: set[int] | None, notes: list[str]) -> list[GPUMemory]:
    visible = _visible_nvml_indices(_NVML.uuids, notes)
    torch_count = _safe(torch.cuda.device_count) if torch_ready else 0
    if torch_ready and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len(set(_NVML.names)) > 1:
        notes.append("GPUs of different kinds and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA may number them "
                     "fastest-first, unlike NVML; set CUDA_DEVICE_ORDER=PCI_BUS_ID for a reliable mapping")
    gpus = []
    for index, nv in enumerate(visible):
        if wanted is not None and index not in wanted:
            continue
        label = f"GPU {index}" + (f" (NVML {nv})" if nv != index else "")
        handle = _NVML.handles[nv]
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            total, used, free = int(mem.total), int(mem.used), int(mem.free)
        except Exception as e:
            notes.append(f"{label}: NVML memory info unreadable ({type(e).__name__}: {e}); GPU not recorded")
            continue
        procs = _nvml_processes(nvml, handle, label, notes)
        g = GPUMemory(index=index, name=_NVML.names[nv], uuid=_NVML.uuids[nv], total=total, used=used, free=free,
                      processes=procs)
        if torch_ready and torch_count and index < torch_count:
            counters = _torch_counters(index)
            if counters is not None:
                g.torch_allocated, g.torch_reserved, g.torch_peak_allocated, g.torch_peak_reserved = counters
                if g.torch_reserved and procs and all(p.pid != pid for p in procs):
                    notes.append(f"{label}: this process (pid {pid}) holds {g.torch_reserved / GiB:.2f} GiB but is "
                                 "not in NVML's process list (NVML reports host PIDs inside a container?); "
                                 "its usage counts under other_processes")
        gpus.append(g)
    if wanted is not None:
        missing = sorted(wanted - {g.index for g in gpus} - set(range(len(visible))))
        if missing:
            notes.append(f"devices {missing} are not visible to this process ({len(visible)} visible)")
    return gpus


def _read_torch(wanted: set[int] | None, notes: list[str]) -> list[GPUMemory]:
    count = _safe(torch.cuda.device_count) or 0
    current = _safe(torch.cuda.current_device)
    gpus = []
    for index in range(count):
        if wanted is not None and index not in wanted:
            continue
        counters = _torch_counters(index)
        # mem_get_info on a device without a context would create one (~0.5 GiB): only touch devices this
        # process already uses
        if index != current and not (counters and counters[1] > 0):
            notes.append(f"GPU {index}: skipped, this process has no CUDA context there (reading it would create one)")
            continue
        try:
            free, total = (int(v) for v in torch.cuda.mem_get_info(index))
        except Exception as e:
            notes.append(f"GPU {index}: torch.cuda.mem_get_info failed ({type(e).__name__}: {e})")
            continue
        props = _safe(torch.cuda.get_device_properties, index)
        uuid = getattr(props, "uuid", None) if props is not None else None
        g = GPUMemory(index=index, name=getattr(props, "name", f"GPU {index}") if props is not None else f"GPU {index}",
                      uuid=f"GPU-{uuid}" if uuid is not None else None, total=total, used=total - free, free=free,
                      processes=[])
        if counters is not None:
            g.torch_allocated, g.torch_reserved, g.torch_peak_allocated, g.torch_peak_reserved = counters
        gpus.append(g)
    return gpus


# ---------------------------------------------------------------------------------------- recorder
class MemoryRecorder:
    """Collects snapshots over a run (this process's and those sent by remote workers).

    ``PhaseTimer(callbacks=[recorder.on_phase])`` records at every phase start and end, labelled with
    ``recorder.step`` (set it at the top of each step).
    """

    def __init__(self, rank: int = 0, devices: Sequence[int] | None = None):
        self.records: list[MemorySnapshot] = []
        self.rank = rank
        self.devices = devices
        self.step: int | None = None

    def record(self, step: int | None = None, phase: str | None = None, event: str | None = None,
               rank: int | None = None) -> MemorySnapshot:
        snap = snapshot(rank=self.rank if rank is None else rank, step=step, phase=phase, event=event,
                        devices=self.devices)
        self.records.append(snap)
        return snap

    def on_phase(self, phase: str, event: str) -> None:
        """A :class:`~rlkit.diagnostics.timing.PhaseTimer` callback."""
        self.record(step=self.step, phase=phase, event=event)

    def extend(self, snapshots: Iterable[MemorySnapshot | dict]) -> None:
        """Add snapshots taken elsewhere (remote workers send them as objects or ``to_dict()`` dicts)."""
        self.records.extend(_as_snapshot(s, f"snapshot[{i}]") for i, s in enumerate(snapshots))

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    def to_frame(self):
        """Tidy frame: one row per (snapshot, gpu, metric); see :func:`trace_frame`."""
        return trace_frame(self.records)

    def peak_metrics(self) -> dict[str, float]:
        """verl's memory metrics over the recorded snapshots (GB = bytes / 1024**3, as verl).

        ``perf/max_memory_allocated_gb`` / ``perf/max_memory_reserved_gb``: the largest torch peak counter over
        every record and GPU; ``perf/cpu_memory_used_gb``: the latest snapshot's host RSS (verl logs the node's
        ``psutil.virtual_memory().used`` there). A key is left out when no record has the value.
        """
        return peak_metrics(self.records)


def peak_metrics(records: Iterable[MemorySnapshot | dict]) -> dict[str, float]:
    """See :meth:`MemoryRecorder.peak_metrics`."""
    snaps = [_as_snapshot(s) for s in records]
    out: dict[str, float] = {}
    alloc = [g.torch_peak_allocated if g.torch_peak_allocated is not None else g.torch_allocated
             for s in snaps for g in s.gpus]
    reserved = [g.torch_peak_reserved if g.torch_peak_reserved is not None else g.torch_reserved
                for s in snaps for g in s.gpus]
    alloc = [v for v in alloc if v is not None]
    reserved = [v for v in reserved if v is not None]
    if alloc:
        out["perf/max_memory_allocated_gb"] = max(alloc) / GiB
    if reserved:
        out["perf/max_memory_reserved_gb"] = max(reserved) / GiB
    if snaps:
        latest = max(snaps, key=lambda s: s.time)
        out["perf/cpu_memory_used_gb"] = latest.host_rss / GiB
    return out


def _rows(snaps: Iterable[MemorySnapshot]):
    for s in snaps:
        base = (s.step, s.phase, s.event, s.node, s.rank)
        yield (*base, -1, "host_rss", s.host_rss, s.time)
        for g in s.gpus:
            values = (("total", g.total), ("used", g.used), ("free", g.free),
                      ("torch_allocated", g.torch_allocated), ("torch_reserved", g.torch_reserved),
                      ("torch_peak_allocated", g.torch_peak_allocated),
                      ("torch_peak_reserved", g.torch_peak_reserved))
            for metric, v in values:
                if v is not None:
                    yield (*base, g.index, metric, int(v), s.time)
            if s.source == "nvml":  # the process list is known
                other = sum(p.bytes for p in g.processes if p.pid != s.pid)
                yield (*base, g.index, "other_processes", int(other), s.time)


def trace_frame(records: Iterable[MemorySnapshot | dict]):
    """Tidy pandas frame of snapshots: columns ``step, phase, event, node, rank, gpu, metric, bytes, time``.

    Metrics per GPU: total, used, free, torch_allocated, torch_reserved, torch_peak_allocated,
    torch_peak_reserved (rows only where read) and other_processes (memory of pids other than the snapshot's
    own, only when NVML listed them); one ``host_rss`` row per snapshot with ``gpu = -1``.
    """
    import pandas as pd

    snaps = [_as_snapshot(s, f"records[{i}]") for i, s in enumerate(records)]
    df = pd.DataFrame(list(_rows(snaps)), columns=FRAME_COLUMNS)
    return df.astype({"step": "Int64", "rank": "int64", "gpu": "int64", "bytes": "int64", "time": "float64"})


# -------------------------------------------------------------------------------------- trace files
class TraceFormatError(ValueError):
    """A memory-trace file rlkit cannot read (names the file and the problem)."""


def _rlkit_version() -> str:
    try:
        import rlkit

        return str(getattr(rlkit, "__version__", "unknown"))
    except Exception:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------------------------- sanitising
SANITIZED_NOTE = "absolute paths -> <path>/name, IP addresses -> nodeN (rlkit.diagnostics.memory.sanitize)"
_PATH_MARK = "<path>"
_SEG = r"[\w.@%+~-]*\w[\w.@%+~-]*"  # a path segment holds a letter or digit: "+/- 1" is no path
# an absolute POSIX path: not inside a word, a relative path or a URL ("http://host/x" is left alone), nor the
# rest of one already shortened ("<path>/x" stays: sanitising twice gives what sanitising once gave)
_POSIX_PATH = re.compile(rf"(?<![\w.~/\\-])(?<!{_PATH_MARK})(?:/{_SEG})+/?")
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\\\s\"'<>|:*?]+\\)*[^\\\s\"'<>|:*?]*")
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w]|\.\d)")
_IPV4_DASHED = re.compile(r"(?<![\w-])ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})(?![\w-])")  # ip-10-0-0-5
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|\d{1,3}(?:\.\d{1,3}){3})"
                             r"(?:%[\w.-]+)?(?![\w:])")
_IP = re.compile(f"(?P<dashed>{_IPV4_DASHED.pattern})|(?P<v4>{_IPV4.pattern})|(?P<v6>{_IPV6_CANDIDATE.pattern})")
_NODE_NAME = re.compile(r"node(\d+)")
_HOME_USER = re.compile(r"(?<![\w~])~[A-Za-z_][\w.-]*")  # ~alice/... -> ~/...
_HOMES = ("home", "users")
_KEEP_FROM = ("rlkit",)  # paths into the package keep their package-relative part: <path>/rlkit/x.py
_KEEP_AFTER = ("site-packages", "dist-packages")


def _short_path(parts: list[str], sep: str) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:  # "/tmp", "/workspace": the folder itself says where the file was
        return _PATH_MARK
    if len(parts) == 2 and parts[0].lower() in _HOMES:  # /home/alice: the last part is a user name
        return _PATH_MARK
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in _KEEP_AFTER:
            return _PATH_MARK + sep + sep.join(parts[i + 1:])
    for i in range(len(parts) - 2, -1, -1):  # the innermost: a checkout named rlkit holds the package rlkit
        if parts[i] in _KEEP_FROM:
            return _PATH_MARK + sep + sep.join(parts[i:])
    return _PATH_MARK + sep + parts[-1]


def _valid_ipv4(groups: Sequence[str]) -> bool:
    return all(int(g) <= 255 for g in groups)


def _valid_ipv6(text: str) -> bool:
    addr = text.split("%", 1)[0]
    if "::" not in addr and addr.count(":") != 7:  # "14:03:12" is a time, not an address
        return False
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return False
    return True


class _Sanitizer:
    def __init__(self, taken: set[str]):
        self.names: dict[str, str] = {}
        self.taken = taken

    def node(self, ip: str) -> str:
        if ip not in self.names:
            k = len(self.names)
            while f"node{k}" in self.taken:
                k += 1
            self.names[ip] = f"node{k}"
            self.taken.add(self.names[ip])
        return self.names[ip]

    def _ip(self, m: re.Match) -> str:
        text = m.group(0)
        if m.group("dashed"):
            octets = text[3:].split("-")
            return self.node(".".join(octets)) if _valid_ipv4(octets) else text
        if m.group("v4"):
            return self.node(text) if _valid_ipv4(text.split(".")) else text
        if _valid_ipv6(text):
            return self.node(str(ipaddress.IPv6Address(text.split("%", 1)[0])))
        return text

    def text(self, s: str) -> str:
        s = _IP.sub(self._ip, s)  # one pass: nodeN numbered in order of appearance
        s = _WINDOWS_PATH.sub(lambda m: _short_path(m.group(0)[3:].split("\\"), "\\"), s)
        s = _POSIX_PATH.sub(lambda m: _short_path(m.group(0).split("/"), "/"), s)
        s = _HOME_USER.sub("~", s)
        return s

    def walk(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.walk(k) if isinstance(k, str) else k: self.walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.walk(x) for x in v]
        return v


def _strings(v: Any) -> Iterable[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _strings(k)
            yield from _strings(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _strings(x)


def sanitize(data: Any) -> Any:
    """A copy of JSON-like ``data`` with machine-identifying text removed from every string (keys too).

    * absolute paths (POSIX and ``C:\\...``) become ``<path>/<file name>`` (paths into a package keep their
      package part: ``<path>/rlkit/rollout/sglang.py``, ``<path>/torch/cuda/__init__.py``); home directories
      and the user names in them go with them (``/home/alice`` -> ``<path>``, ``~alice/x`` -> ``~/x``);
    * IPv4 addresses (also AWS-style ``ip-10-0-0-5`` host names) and IPv6 addresses become ``node0``,
      ``node1``, ... - the same address the same name everywhere in ``data``, never a name already used.

    Numbers, booleans and None are kept; lists, tuples and dicts are copied (tuples become lists, as in
    JSON). :func:`save_trace` applies it to the records and the metadata.
    """
    taken = {s for s in _strings(data) if _NODE_NAME.fullmatch(s)}
    return _Sanitizer(taken).walk(data)


def save_trace(path: str | os.PathLike, records: Iterable[MemorySnapshot | dict] | MemoryRecorder,
               meta: dict | None = None, sanitized: bool = True) -> Path:
    """Write snapshots as a JSON memory trace, atomically (temporary file + ``os.replace``).

    ``meta`` (JSON-able) is stored with ``rlkit_version`` and ``created`` added unless given. With
    ``sanitized=True`` (the default) records and meta go through :func:`sanitize` first, so a trace can be
    shared: no absolute paths (user names in home directories included) and no IP addresses; every number is
    kept. ``meta["sanitized"]`` says what was replaced.
    """
    path = Path(path)
    if isinstance(records, MemoryRecorder):
        records = records.records
    snaps = [_as_snapshot(s, f"records[{i}]") for i, s in enumerate(records)]
    meta = dict(meta or {})
    meta.setdefault("rlkit_version", _rlkit_version())
    meta.setdefault("created", time.time())
    body = {"meta": meta, "records": [s.to_dict() for s in snaps]}
    if sanitized:
        json.dumps(body)  # a meta that is not JSON-able fails here, as it would unsanitised
        body = sanitize(body)
        body["meta"]["sanitized"] = SANITIZED_NOTE
    doc = {"format": TRACE_FORMAT, "version": TRACE_VERSION, **body}
    text = json.dumps(doc)  # fails before touching the file when meta is not JSON-able
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_trace(path: str | os.PathLike) -> tuple[list[MemorySnapshot], dict]:
    """Read a trace written by :func:`save_trace`: ``(records, meta)``.

    Raises :class:`TraceFormatError` naming the file and the problem when it is not a readable trace.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"{path}: not a memory trace (not UTF-8 text: {e})") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{path}: not a memory trace (not valid JSON: {e})") from e
    if not isinstance(doc, dict):
        raise TraceFormatError(f"{path}: not a memory trace (top level is a {type(doc).__name__}, "
                               f"expected an object with format={TRACE_FORMAT!r})")
    if doc.get("format") != TRACE_FORMAT:
        raise TraceFormatError(f"{path}: not a memory trace (format is {doc.get('format')!r}, "
                               f"expected {TRACE_FORMAT!r})")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TraceFormatError(f"{path}: bad memory trace: 'version' must be a positive integer, got {version!r}")
    meta = doc.get("meta", {})
    if version > TRACE_VERSION:
        writer = meta.get("rlkit_version") if isinstance(meta, dict) else None
        raise TraceFormatError(
            f"{path}: memory trace version {version} was written by a newer rlkit"
            f"{f' ({writer})' if writer else ''}; this rlkit ({_rlkit_version()}) reads trace versions up to "
            f"{TRACE_VERSION}. Upgrade rlkit{f' to {writer} or later' if writer else ''} "
            "(`pip install -U rlkit`) to read it.")
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{path}: bad memory trace: 'meta' must be an object, got {type(meta).__name__}")
    if "records" not in doc:
        raise TraceFormatError(f"{path}: bad memory trace: missing key 'records'")
    if not isinstance(doc["records"], list):
        raise TraceFormatError(f"{path}: bad memory trace: 'records' must be a list, "
                               f"got {type(doc['records']).__name__}")
    records = []
    for i, r in enumerate(doc["records"]):
        try:
            records.append(_snapshot_from_dict(r, f"records[{i}]"))
        except ValueError as e:
            raise TraceFormatError(f"{path}: bad memory trace: {e}") from e
    return records, meta
