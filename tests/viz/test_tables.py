"""rlkit.viz.tables: HTML rollout tables and paging/filtering."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from rlkit.viz import tables
from rlkit.viz.tables import page_rollouts, rollouts_html


def frame():
    return pd.DataFrame({
        "step": [1, 1, 1, 2, 2, 2, 2],
        "uid": list("abcdefg"),
        "prompt": ["What is 6*7?"] * 7,
        "response": ["<script>alert('x')</script> 42", "x" * 1000, "maybe 41", "42", "41", "#### 42", "..."],
        "ground_truth": ["42"] * 7,
        "score": [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, -1.0],
        "response_length": [10, 512, 4, 2, 2, 3, 512],
        "finish_reason": ["stop", "length", "stop", "stop", "stop", "stop", "length"],
    })


def score_cells(h):
    return re.findall(r'<td class="score" style="[^"]*?(?:background:(#[0-9a-f]+))?">([^<]*)', h)


def test_html_escapes_and_truncates():
    h = rollouts_html(frame(), n=8, max_chars=50)
    assert "<script>" not in h and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in h
    assert "x" * 49 + "\u2026" in h and "x" * 50 not in h
    assert h.count("<tr>") == 1 + 7  # header + rows
    for col in ("prompt", "response", "ground truth", "score"):
        assert f">{col}</th>" in h
    assert "What is 6*7?" in h


def test_html_score_highlight_colors():
    h = rollouts_html(frame(), n=None)
    cells = score_cells(h)
    green, amber, red = (tables.SCORE_COLORS[k] for k in ("correct", "partial", "wrong"))
    assert [c for c, _ in cells] == [green, red, amber, green, red, green, red]
    assert [v for _, v in cells] == ["1", "0", "0.5", "1", "0", "1", "-1"]
    assert h.count(">truncated<") == 2
    assert tables.score_color(float("nan")) is None and tables.score_color("n/a") is None


def test_html_n_empty_and_errors():
    h = rollouts_html(frame(), n=2)
    assert h.count("<tr>") == 3 and "showing 2 of 7 rows" in h
    assert "no rollouts" in rollouts_html(frame().iloc[:0])
    # chat-format prompts and missing columns
    df = frame().drop(columns=["ground_truth", "step"])
    df["prompt"] = [[{"role": "user", "content": "hi <b>"}]] * 7
    h = rollouts_html(df)
    assert "user: hi &lt;b&gt;" in h and "ground truth" not in h
    with pytest.raises(ValueError, match="none of prompt"):
        rollouts_html(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="DataFrame"):
        rollouts_html([1, 2])


def test_truncate():
    assert tables.truncate("abc", 5) == "abc"
    assert tables.truncate("abcdefgh", 5) == "abcd\u2026" and len(tables.truncate("abcdefgh", 5)) == 5
    assert tables.truncate("abcdefgh", None) == "abcdefgh"


def test_page_filters_keywords():
    df = frame()
    assert page_rollouts(df, n=10, filter="correct")["uid"].tolist() == ["a", "d", "f"]
    assert page_rollouts(df, n=10, filter="wrong")["uid"].tolist() == ["b", "e", "g"]
    assert page_rollouts(df, n=10, filter="truncated")["uid"].tolist() == ["b", "g"]
    assert page_rollouts(df, step=2, n=10, filter="correct")["uid"].tolist() == ["d", "f"]
    assert page_rollouts(df, step="latest", n=10)["uid"].tolist() == list("defg")
    assert page_rollouts(df, step=[1], n=10)["uid"].tolist() == list("abc")


def test_page_filters_callable_and_query():
    df = frame()
    got = page_rollouts(df, n=10, filter=lambda r: "42" in r["response"])
    assert got["uid"].tolist() == ["a", "d", "f"]
    got = page_rollouts(df, n=10, filter="score > 0 and response_length < 5")
    assert got["uid"].tolist() == ["c", "d", "f"]
    assert page_rollouts(df.assign(flag=df.score > 0), n=10, filter="flag")["uid"].tolist() == list("acdf")


def test_paging():
    df = frame()
    assert page_rollouts(df, n=3, page=0)["uid"].tolist() == list("abc")
    assert page_rollouts(df, n=3, page=2)["uid"].tolist() == ["g"]
    assert page_rollouts(df, n=3, page=5).empty
    assert page_rollouts(df, n=3, page=1).index.tolist() == [3, 4, 5]  # original index kept


def test_bad_filters():
    df = frame()
    with pytest.raises(ValueError, match=r"unknown filter keyword 'corect'.*'correct', 'truncated', 'wrong'"):
        page_rollouts(df, filter="corect")
    with pytest.raises(ValueError, match="bad filter query"):
        page_rollouts(df, filter="score >> 1")
    with pytest.raises(ValueError, match="bad filter query"):
        page_rollouts(df, filter="nosuchcol > 1")
    with pytest.raises(ValueError, match="finish_reason"):
        page_rollouts(df.drop(columns=["finish_reason"]), filter="truncated")
    with pytest.raises(ValueError, match="callable"):
        page_rollouts(df, filter=3)
    with pytest.raises(ValueError, match="page"):
        page_rollouts(df, page=-1)
    with pytest.raises(ValueError, match="n must be"):
        page_rollouts(df, n=0)
    with pytest.raises(ValueError, match="no 'step' column"):
        page_rollouts(df.drop(columns=["step"]), step=1)
