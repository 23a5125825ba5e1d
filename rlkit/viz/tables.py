"""HTML tables and paging for rollout samples (plain pandas in, str / DataFrame out)."""
from __future__ import annotations

import html
import re
from typing import Any, Callable

import pandas as pd

SCORE_COLORS = {"correct": "#c7e9c0", "partial": "#fdd49e", "wrong": "#fcbba1"}
FILTER_KEYWORDS = {
    "correct": "score >= 1",
    "wrong": "score <= 0",
    "truncated": 'finish_reason == "length"',
}
TEXT_COLUMNS = (("prompt", "prompt"), ("response", "response"), ("ground_truth", "ground truth"))

_TABLE_STYLE = "border-collapse:collapse;font-size:12px;table-layout:fixed;width:100%"
_CELL_STYLE = ("border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left;"
               "white-space:pre-wrap;word-break:break-word;font-family:monospace")
_HEAD_STYLE = "border:1px solid #ddd;padding:4px 6px;background:#f3f3f3;text-align:left"


def _as_text(value: Any) -> str:
    """Text of a cell; chat prompts (lists of {"role", "content"}) become "role: content" lines."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return ""
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in value)
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays of messages (parquet)
        try:
            return _as_text(value.tolist())
        except Exception:
            pass
    return str(value)


def truncate(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` characters, ending with an ellipsis when cut."""
    if max_chars is None or max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 1)].rstrip() + "\u2026"


def score_color(score: Any) -> str | None:
    """Background colour for a score: green >= 1, amber 0 < s < 1, red <= 0, None when not a number."""
    try:
        s = float(score)
    except (TypeError, ValueError):
        return None
    if s != s:
        return None
    if s >= 1:
        return SCORE_COLORS["correct"]
    if s > 0:
        return SCORE_COLORS["partial"]
    return SCORE_COLORS["wrong"]


def _fmt_score(score: Any) -> str:
    try:
        s = float(score)
    except (TypeError, ValueError):
        return html.escape(_as_text(score))
    return "" if s != s else f"{s:g}"


def rollouts_html(df: pd.DataFrame, n: int | None = 8, max_chars: int | None = 400) -> str:
    """An HTML table of the first ``n`` rows: (step,) prompt, response, ground truth, score.

    Text is HTML-escaped and cut to ``max_chars`` with an ellipsis; the score cell is green for
    score >= 1, amber for 0 < score < 1 and red for score <= 0. A row whose ``finish_reason`` is
    ``"length"`` gets a "truncated" mark under its score. An empty frame gives a short note.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"rollouts must be a pandas DataFrame, got {type(df).__name__}")
    text_cols = [(c, t) for c, t in TEXT_COLUMNS if c in df.columns]
    if not text_cols and "score" not in df.columns:
        raise ValueError(f"rollouts frame has none of prompt/response/ground_truth/score; columns: {list(df.columns)}")
    if df.empty:
        return '<p style="color:#777"><i>no rollouts to show</i></p>'
    rows = df if n is None else df.head(n)
    show_step = "step" in df.columns
    widths = {"prompt": "35%", "response": "45%", "ground_truth": "12%"}
    head = []
    if show_step:
        head.append(f'<th style="{_HEAD_STYLE};width:4em">step</th>')
    for c, title in text_cols:
        head.append(f'<th style="{_HEAD_STYLE};width:{widths[c]}">{title}</th>')
    if "score" in df.columns:
        head.append(f'<th style="{_HEAD_STYLE};width:5em">score</th>')
    body = []
    for _, row in rows.iterrows():
        cells = []
        if show_step:
            cells.append(f'<td style="{_CELL_STYLE}">{html.escape(_as_text(row["step"]))}</td>')
        for c, _title in text_cols:
            cells.append(f'<td style="{_CELL_STYLE}">{html.escape(truncate(_as_text(row[c]), max_chars))}</td>')
        if "score" in df.columns:
            color = score_color(row["score"])
            bg = f";background:{color}" if color else ""
            mark = ""
            if "finish_reason" in df.columns and str(row["finish_reason"]) == "length":
                mark = '<br><span style="font-size:10px;color:#a00">truncated</span>'
            cells.append(f'<td class="score" style="{_CELL_STYLE}{bg}">{_fmt_score(row["score"])}{mark}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if n is not None and len(df) > n:
        more = f'<p style="color:#777;font-size:11px">showing {n} of {len(df)} rows</p>'
    return (f'<table class="rlkit-rollouts" style="{_TABLE_STYLE}"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{more}')


def _apply_filter(df: pd.DataFrame, filter: Any) -> pd.DataFrame:
    if filter is None:
        return df
    if callable(filter):
        if df.empty:
            return df
        mask = df.apply(lambda row: bool(filter(row)), axis=1)
        return df[mask.astype(bool)]
    if not isinstance(filter, str):
        raise ValueError(f"filter must be a callable(row) -> bool, a pandas query string or one of "
                         f"{sorted(FILTER_KEYWORDS)}; got {type(filter).__name__}")
    expr = filter.strip()
    if expr in FILTER_KEYWORDS:
        need = "finish_reason" if expr == "truncated" else "score"
        if need not in df.columns:
            raise ValueError(f"filter {expr!r} needs a {need!r} column; columns: {list(df.columns)}")
        if expr == "truncated":
            return df[df["finish_reason"].astype(str) == "length"]
        score = pd.to_numeric(df["score"], errors="coerce")
        return df[score >= 1] if expr == "correct" else df[score <= 0]
    if re.fullmatch(r"\w+", expr) and not (expr in df.columns and pd.api.types.is_bool_dtype(df[expr])):
        raise ValueError(f"unknown filter keyword {expr!r}; valid keywords: {sorted(FILTER_KEYWORDS)} "
                         f"(or pass a pandas query string such as 'score > 0', or a callable(row) -> bool)")
    try:
        return df.query(expr)
    except Exception as e:
        raise ValueError(f"bad filter query {expr!r}: {e}. Valid keywords: {sorted(FILTER_KEYWORDS)}") from e


def page_rollouts(df: pd.DataFrame, step=None, n: int = 5, filter: str | Callable | None = None,
                  page: int = 0) -> pd.DataFrame:
    """Page ``page`` (0-based, ``n`` rows each) of the rollouts, optionally for one step and filtered.

    ``step``: None (all steps), a step value, a list of steps, or ``"latest"``.
    ``filter``: a callable(row) -> bool, a pandas query string (``"score > 0 and response_length > 200"``)
    or a keyword: ``"correct"`` (score >= 1), ``"wrong"`` (score <= 0), ``"truncated"``
    (finish_reason == "length"). A page past the end is an empty frame. The original index is kept.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"rollouts must be a pandas DataFrame, got {type(df).__name__}")
    if n is None or int(n) <= 0:
        raise ValueError(f"n must be a positive number of rows, got {n!r}")
    if int(page) < 0:
        raise ValueError(f"page must be >= 0, got {page!r}")
    out = df
    if step is not None:
        if "step" not in df.columns:
            raise ValueError("step given but the rollouts frame has no 'step' column")
        if isinstance(step, str) and step == "latest":
            step = df["step"].max() if len(df) else None
            out = df[df["step"] == step] if step is not None else df
        elif isinstance(step, (list, tuple, set, range)):
            out = df[df["step"].isin(list(step))]
        else:
            out = df[df["step"] == step]
    out = _apply_filter(out, filter)
    start = int(page) * int(n)
    return out.iloc[start:start + int(n)].copy()
