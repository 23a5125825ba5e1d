"""Phase timers: ``with timer.phase("gen"): ...`` records wall seconds per phase of a step."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable


class PhaseTimer:
    """Collects ``{phase: seconds}`` for one step; callbacks run at each phase boundary.

    Callbacks get ``(phase, "start" | "end")``; they are how memory snapshots hook in without the
    controller's loop knowing about them.
    """

    def __init__(self, callbacks: list[Callable[[str, str], None]] | None = None):
        self.timing: dict[str, float] = {}
        self.callbacks = list(callbacks or [])

    @contextmanager
    def phase(self, name: str):
        for cb in self.callbacks:
            cb(name, "start")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start
            for cb in self.callbacks:
                cb(name, "end")
