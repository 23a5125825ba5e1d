"""Metric sinks named by ``trainer.logger``: ``console``, ``jsonl``, ``tensorboard``."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

LOGGERS = ("console", "jsonl", "tensorboard")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


class ConsoleLogger:
    """verl-like: one line per step, ``step:N - key:value - ...``."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def log(self, metrics: dict, step: int) -> None:
        parts = [f"step:{step}"] + [f"{k}:{_fmt(v)}" for k, v in metrics.items()]
        print(" - ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class JsonlLogger:
    """One JSON object per step appended to ``path`` (``{"step": N, **metrics}``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorboardLogger:
    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard package missing
            raise ImportError("trainer.logger=['tensorboard'] needs `pip install tensorboard`") from e
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Tracking:
    """Fan metrics out to every logger in ``trainer.logger``."""

    def __init__(self, names, log_dir: str | os.PathLike):
        self.loggers = []
        for name in names:
            if name == "console":
                self.loggers.append(ConsoleLogger())
            elif name == "jsonl":
                self.loggers.append(JsonlLogger(Path(log_dir) / "metrics.jsonl"))
            elif name == "tensorboard":
                self.loggers.append(TensorboardLogger(Path(log_dir) / "tensorboard"))
            else:
                raise ValueError(f"unknown logger {name!r}; valid: {', '.join(LOGGERS)}")

    def log(self, metrics: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
