"""Metric sinks named by ``trainer.logger``: ``console``, ``jsonl``, ``tensorboard``, each also taking
the validation samples of ``trainer.log_val_generations`` (:func:`pick_val_generations`); and
:func:`dump_generations`, the per-response files of ``trainer.rollout_data_dir`` /
``trainer.validation_data_dir``."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

LOGGERS = ("console", "jsonl", "tensorboard")
# What `trainer.logger=['console']` prints per step, in this order (plus every val-core/ metric);
# every metric goes to `jsonl` and `tensorboard`. RLKIT_CONSOLE=all prints them all on the console.
CONSOLE_KEYS = (
    "critic/score/mean", "critic/rewards/mean", "critic/advantages/max", "response_length/mean",
    "response_length/clip_ratio", "actor/pg_loss", "actor/entropy", "actor/ppo_kl", "actor/kl_loss",
    "actor/grad_norm", "critic/vf_loss", "critic/grad_norm", "timing_s/gen", "timing_s/update_actor", "timing_s/step",
)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _finite(v):
    """``v``, or None for a float JSON cannot hold (nan, inf)."""
    return v if not isinstance(v, float) or math.isfinite(v) else None


class ConsoleLogger:
    """verl-like: one line per step, ``step:N - key:value - ...``.

    ``keys``: the metrics to print, in that order (plus every ``val-core/`` metric); None prints all.
    """

    def __init__(self, stream=None, keys=None):
        self.stream = stream or sys.stdout
        self.keys = tuple(keys) if keys is not None else None

    def log(self, metrics: dict, step: int) -> None:
        if self.keys is None:
            items = list(metrics.items())
        else:
            items = [(k, metrics[k]) for k in self.keys if k in metrics]
            items += [(k, v) for k, v in metrics.items() if k.startswith("val-core/")]
        parts = [f"step:{step}"] + [f"{k}:{_fmt(v)}" for k, v in items]
        print(" - ".join(parts), file=self.stream, flush=True)

    def log_generations(self, samples: list, step: int) -> None:
        """Each ``(input, output, score)`` sample as a block: a ``val/generations`` header line, then
        the input and output text as they are (several lines each)."""
        for i, (inp, out, score) in enumerate(samples, 1):
            print(f"val/generations step:{step} sample:{i}/{len(samples)} score:{_fmt(score)}\n"
                  f"[input]\n{inp}\n[output]\n{out}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class JsonlLogger:
    """One JSON object per step appended to ``path`` (``{"step": N, **metrics}``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def log_generations(self, samples: list, step: int) -> None:
        """One row per sample, marked by its ``val/generations`` key (its 1-based place, as verl numbers
        its table's columns): ``{"step", "val/generations", "input", "output", "score"}``."""
        for i, (inp, out, score) in enumerate(samples, 1):
            row = {"step": step, "val/generations": i, "input": inp, "output": out, "score": _finite(score)}
            self._f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
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

    def log_generations(self, samples: list, step: int) -> None:
        """The samples as one markdown text under ``val/generations``, laid out as verl's tensorboard
        logger lays them out."""
        text = f"**Generation Results - Step {step}**\n\n" + "".join(
            f"### Sample {i}\n**Input:** {inp}\n\n**Output:** {out}\n\n**Score:** {score}\n\n---\n\n"
            for i, (inp, out, score) in enumerate(samples, 1))
        self.writer.add_text("val/generations", text, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Tracking:
    """Fan metrics out to every logger in ``trainer.logger``."""

    def __init__(self, names, log_dir: str | os.PathLike):
        self.loggers = []
        for name in names:
            if name == "console":
                full = os.environ.get("RLKIT_CONSOLE") == "all"
                self.loggers.append(ConsoleLogger(keys=None if full else CONSOLE_KEYS))
            elif name == "jsonl":
                self.loggers.append(JsonlLogger(Path(log_dir) / "metrics.jsonl"))
            elif name == "tensorboard":
                self.loggers.append(TensorboardLogger(Path(log_dir) / "tensorboard"))
            else:
                raise ValueError(f"unknown logger {name!r}; valid: {', '.join(LOGGERS)}")

    def log(self, metrics: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def log_generations(self, samples: list, step: int) -> None:
        """``trainer.log_val_generations``: the ``(input, output, score)`` samples of a validation
        (:func:`pick_val_generations`) to every logger; nothing when there are none."""
        if samples:
            for lg in self.loggers:
                lg.log_generations(samples, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def pick_val_generations(inputs: list[str], outputs: list[str], scores: list[float], n: int) -> list[tuple]:
    """The ``n`` validation samples ``trainer.log_val_generations=n`` logs, picked as verl picks them:
    the ``(input, output, score)`` triples sorted by input (a stable sort: equal inputs keep their
    order), shuffled by ``numpy.random.RandomState(42)``, the first ``n`` kept (all when fewer).
    The same inputs give the same samples at every validation.

    >>> from rlkit.loggers import pick_val_generations
    >>> pick_val_generations(["c", "a", "b", "d"], ["C", "A", "B", "D"], [0.0, 1.0, 0.5, 0.0], 2)
    [('b', 'B', 0.5), ('d', 'D', 0.0)]
    >>> pick_val_generations(["a"], ["A"], [1.0], 0)
    []
    """
    import numpy as np

    samples = sorted(zip(inputs, outputs, scores, strict=True), key=lambda s: s[0])
    np.random.RandomState(42).shuffle(samples)
    return samples[:n]


# ---------------------------------------------------------------------- generation dumps
def dump_generations(directory: str | os.PathLike, step: int, inputs: list[str], outputs: list[str], gts: list,
                     scores: list[float], extras: dict[str, list] | None = None, *,
                     key: str = "trainer.rollout_data_dir") -> Path:
    """Write ``<directory>/<step>.jsonl`` as verl's ``_dump_generations`` does: one JSON object per
    response with ``input``, ``output``, ``gts``, ``score`` and ``step``, then every ``extras`` list
    that has one value per response (a reward's extra keys; verl lets them replace a base key of the
    same name), ``ensure_ascii=False``, UTF-8.

    The folder is created if missing. The file of the same step is replaced (a rerun of that step)
    and nothing else in the folder is touched; it is written to a temporary file beside it and
    renamed, so an interrupted write leaves the previous file whole. ``key`` names the config key in
    errors. Values JSON cannot hold (numpy arrays, tensors) are written as lists, others as text.

    >>> import json, tempfile
    >>> from rlkit.loggers import dump_generations
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = dump_generations(d, 3, ["1+1="], ["2"], ["2"], [1.0], {"acc": [True], "short": []})
    ...     print(path.name, json.loads(path.read_text()))
    3.jsonl {'input': '1+1=', 'output': '2', 'gts': '2', 'score': 1.0, 'step': 3, 'acc': True}
    """
    n = len(inputs)
    columns = {"input": inputs, "output": outputs, "gts": gts, "score": scores}
    if any(len(v) != n for v in columns.values()):
        raise ValueError(f"dump_generations needs one value per response, got "
                         f"{ {k: len(v) for k, v in columns.items()} }")
    columns["step"] = [step] * n
    columns.update({k: v for k, v in (extras or {}).items() if len(v) == n})  # verl: lists of the right length
    folder = Path(directory).expanduser()
    path = folder / f"{step}.jsonl"
    tmp = folder / f".{step}.jsonl.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "w", encoding="utf-8")
        try:
            with f:
                for i in range(n):
                    row = {k: v[i] for k, v in columns.items()}
                    f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # our own temporary file, never the user's
            raise
    except OSError as e:
        why = "it or a parent is a file" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise OSError(e.errno, f"{key}={directory}: cannot write {path}: {why}. Fix: point {key} at a "
                               f"writable folder (created if missing), or set {key}=null to write none") from e
    return path


def _jsonable(value):
    """What ``json.dumps`` cannot write itself: arrays and tensors as (nested) lists, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
