"""Reward functions, looked up by a row's ``data_source`` (verl semantics).

* :data:`REWARD_FUNCTIONS` maps a ``data_source`` to a scorer called as
  ``fn(solution_str, ground_truth)`` (plus ``extra_info=...`` when the scorer
  accepts it). ``"openai/gsm8k"`` -> :func:`rlkit.rewards.gsm8k.compute_score`.
* :func:`register_reward` adds a scorer for a new data source.
* :func:`default_compute_score` is the built-in dispatcher, with the signature
  of a verl ``custom_reward_function``:
  ``(data_source, solution_str, ground_truth, extra_info=None)``.
* :func:`load_custom_reward_function` loads a user's ``.py`` file
  (verl's ``custom_reward_function.path`` / ``.name``).
* :func:`score_responses` scores a batch and turns any failure into a
  :class:`RewardError` that says which sample broke.

This module only imports the standard library.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import math
import numbers
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import gsm8k

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardError",
    "default_compute_score",
    "gsm8k",
    "load_custom_reward_function",
    "register_reward",
    "score_responses",
]

REWARD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "openai/gsm8k": gsm8k.compute_score,
}


class RewardError(RuntimeError):
    """A reward function failed (or returned garbage) on one sample.

    Attributes: ``index`` (position in the batch), ``data_source``,
    ``solution_str`` (the full response) and ``ground_truth``. The original
    exception, if any, is ``__cause__``.
    """

    def __init__(self, message: str, *, index: int, data_source: Any, solution_str: Any, ground_truth: Any):
        super().__init__(message)
        self.index = index
        self.data_source = data_source
        self.solution_str = solution_str
        self.ground_truth = ground_truth


def register_reward(data_source: str | Iterable[str]) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(solution_str, ground_truth[, extra_info])``.

    ``data_source`` may be one name or several. Registering a name again
    replaces the old scorer (re-running a notebook cell is fine); replacing a
    *different* function warns.

    >>> from rlkit.rewards import default_compute_score, register_reward
    >>> @register_reward("my/dataset")
    ... def score(solution_str, ground_truth):
    ...     return float(solution_str.strip() == ground_truth)
    >>> default_compute_score("my/dataset", " 42 ", "42")
    1.0
    """
    names = [data_source] if isinstance(data_source, str) else list(data_source)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"register_reward needs non-empty data_source name(s), got {data_source!r}")

    def decorator(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"register_reward({data_source!r}) must decorate a callable, got {type(fn).__name__}")
        for name in names:
            old = REWARD_FUNCTIONS.get(name)
            if old is not None and _qualname(old) != _qualname(fn):
                warnings.warn(
                    f"register_reward: replacing {_qualname(old)} with {_qualname(fn)} for data_source {name!r}",
                    stacklevel=2,
                )
            REWARD_FUNCTIONS[name] = fn
        return fn

    return decorator


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _accepts_extra_info(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "extra_info" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def default_compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                          **reward_kwargs):
    """Score one response with the scorer registered for ``data_source``.

    ``reward_kwargs`` go to that scorer (``custom_reward_function.reward_kwargs`` without a
    ``path``), e.g. ``format_score=0.1, method="flexible"`` for GSM8K.
    Returns a float (or the dict a registered scorer returned, as verl does).
    Unknown ``data_source`` -> :class:`NotImplementedError`.
    """
    fn = REWARD_FUNCTIONS.get(data_source)
    if fn is None:
        known = ", ".join(repr(k) for k in sorted(REWARD_FUNCTIONS)) or "(none)"
        raise NotImplementedError(
            f"no reward function for data_source {data_source!r}. Known data sources: {known}. "
            "Register one with @rlkit.rewards.register_reward(data_source) or point "
            "custom_reward_function.path (and .name) at a .py file defining "
            "compute_score(data_source, solution_str, ground_truth, extra_info=None)."
        )
    if _accepts_extra_info(fn):
        result = fn(solution_str, ground_truth, extra_info=extra_info, **reward_kwargs)
    else:
        result = fn(solution_str, ground_truth, **reward_kwargs)
    if isinstance(result, dict):
        return result
    if isinstance(result, numbers.Real):
        return float(result)
    try:
        return float(result)
    except (TypeError, ValueError):
        return float(result[0])


def load_custom_reward_function(
    path: str | Path, name: str = "compute_score", reward_kwargs: dict | None = None
) -> Callable[..., Any]:
    """Load function ``name`` from the Python file at ``path``.

    The file is executed as a fresh module on every call (edits are picked up)
    and registered in ``sys.modules`` under a name derived from its path
    (``rlkit_custom_reward_<stem>_<hash>``), so dataclasses and other code
    that looks the module up work. With ``reward_kwargs`` the function is
    wrapped in ``functools.partial``.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"custom reward function file not found: {file} (custom_reward_function.path)")
    if not file.is_file():
        raise FileNotFoundError(f"custom reward function path is not a file: {file}")
    file = file.resolve()
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"rlkit_custom_reward_{file.stem.replace('-', '_').replace('.', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file} as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise ImportError(f"error while importing custom reward file {file}: {type(e).__name__}: {e}") from e

    if not hasattr(module, name):
        found = sorted(
            attr
            for attr, value in vars(module).items()
            if callable(value) and not attr.startswith("_") and getattr(value, "__module__", None) == module_name
        )
        raise AttributeError(
            f"{file} has no function {name!r} (custom_reward_function.name). "
            f"Callables defined there: {', '.join(found) if found else '(none)'}"
        )
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{name!r} in {file} is a {type(fn).__name__}, not a function")
    if reward_kwargs:
        fn = functools.partial(fn, **reward_kwargs)
    return fn


def _fn_name(fn: Callable) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or repr(inner)


def _as_float(value: Any) -> float | None:
    """A finite float from a number / numpy scalar / 0-d tensor, else None."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out if math.isfinite(out) else None


def score_responses(
    fn: Callable[..., Any],
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None] | None = None,
) -> tuple[list[float], dict[str, list]]:
    """Score a batch: ``fn(data_source=, solution_str=, ground_truth=, extra_info=)`` per sample.

    ``fn`` returns a number, or a dict with a ``"score"`` key plus other keys.
    Returns ``(scores, extras)``: ``extras[key]`` is a list aligned with the
    samples (numbers as float, other values unchanged, ``None`` where a sample
    did not return that key). A number is also its sample's ``acc``, as verl
    0.9's reward loop records it: validation then names ``acc`` its core metric
    (``val-core/<data_source>/acc/mean@N``) and the dumps carry an ``acc`` field.

    >>> from rlkit.rewards import score_responses
    >>> score_responses(lambda data_source, solution_str, ground_truth, extra_info: float(solution_str == ground_truth),
    ...                 ["a", "a"], ["4", "5"], ["4", "4"])
    ([1.0, 0.0], {'acc': [1.0, 0.0]})

    Any exception inside ``fn``, a missing ``"score"`` key, or a score that is
    not a finite number raises :class:`RewardError` naming the sample.
    """
    n = len(solution_strs)
    if extra_infos is None:
        extra_infos = [None] * n
    lengths = {
        "data_sources": len(data_sources),
        "solution_strs": n,
        "ground_truths": len(ground_truths),
        "extra_infos": len(extra_infos),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"score_responses: inputs have different lengths: {lengths}")

    name = _fn_name(fn)
    scores: list[float] = []
    extra_rows: list[dict[str, Any]] = []
    keys: dict[str, None] = {}

    for i in range(n):
        ds, resp, gt, info = data_sources[i], solution_strs[i], ground_truths[i], extra_infos[i]

        def fail(reason: str) -> RewardError:
            text = resp if isinstance(resp, str) else repr(resp)
            return RewardError(
                f"reward function {name} {reason} on sample {i} (data_source={ds!r}).\n"
                f"  response (first 200 chars): {text[:200]!r}\n"
                f"  ground_truth: {gt!r}",
                index=i,
                data_source=ds,
                solution_str=resp,
                ground_truth=gt,
            )

        try:
            result = fn(data_source=ds, solution_str=resp, ground_truth=gt, extra_info=info)
        except Exception as e:
            raise fail(f"raised {type(e).__name__}: {e}") from e

        extras: dict[str, Any] = {}
        if isinstance(result, dict):
            if "score" not in result:
                raise fail(f"returned a dict without a 'score' key (keys: {sorted(map(str, result))})")
            raw = result["score"]
            for key, value in result.items():
                if key == "score":
                    continue
                extras[key] = float(value) if isinstance(value, numbers.Real) else value
                keys.setdefault(key, None)
        else:
            raw = result
        value = _as_float(raw)
        if value is None:
            raise fail(f"returned a score that is not a finite number: {raw!r}")
        if not isinstance(result, dict):
            extras["acc"] = value
            keys.setdefault("acc", None)
        scores.append(value)
        extra_rows.append(extras)

    extras_out = {key: [row.get(key) for row in extra_rows] for key in keys}
    return scores, extras_out
