"""Rule-based GSM8K reward, with the same semantics as verl's ``gsm8k`` scorer.

A response is scored by extracting a final answer and comparing it to the
ground truth stored in ``reward_model.ground_truth`` (a plain number string
such as ``"72"`` or ``"1080"``, see :mod:`rlkit.datasets.gsm8k`).

Only the **last 300 characters** of the response are searched (the answer is
at the end; this also bounds the regex cost on very long responses).

Methods
-------
``"strict"`` (default, verl's default)
    The answer must be written as ``#### <number>`` (one space after the
    hashes). The *last* such occurrence wins; ``,`` and ``$`` are removed
    from it and it is compared to the ground truth **as a string**, so
    ``#### 72.0`` does *not* match ``72``.
``"flexible"``
    The last number-like token (regex ``-?[0-9.,]+``) in the window that is
    not just ``"."``, compared **as a string, unchanged** (exactly like verl:
    commas are *not* removed, so ``"1,080"`` does not match ``"1080"`` and a
    trailing period as in ``"is 72."`` gives ``"72."``, which does not match
    ``"72"``). verl quirk kept on purpose: if every token is ``"."`` the
    extracted answer is ``"."`` (scored ``format_score``, not 0).
``"numeric"`` (rlkit addition, not in verl)
    Extraction is the same as ``strict`` (the ``####`` rule, last match,
    ``,``/``$`` removed) but the comparison is numeric with an absolute
    tolerance of ``1e-6``: ``#### 72.00`` matches ``72``, ``#### $1,000``
    matches ``1000``, ``#### -3`` matches ``-3.0``. The ground truth is
    normalised the same way; if either side is not a number the comparison
    falls back to string equality.

Scores: no extractable answer -> ``0.0``; correct -> ``score``; extracted but
wrong -> ``format_score``.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["extract_solution", "compute_score", "METHODS", "SOLUTION_CLIP_CHARS"]

SOLUTION_CLIP_CHARS = 300
METHODS = ("strict", "flexible", "numeric")
NUMERIC_TOLERANCE = Decimal("1e-6")

_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
_NUMBER_RE = re.compile(r"(\-?[0-9\.\,]+)")
_FLEXIBLE_INVALID = ("", ".")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown GSM8K reward method {method!r}; expected one of {list(METHODS)}")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """Return the final answer found in ``solution_str`` (a string) or ``None``.

    See the module docstring for the rules of each method. ``numeric``
    extracts exactly like ``strict``.
    """
    _check_method(method)
    if len(solution_str) > SOLUTION_CLIP_CHARS:
        solution_str = solution_str[-SOLUTION_CLIP_CHARS:]

    if method in ("strict", "numeric"):
        found = _STRICT_RE.findall(solution_str)
        if not found:
            return None
        return found[-1].replace(",", "").replace("$", "")

    # flexible
    found = _NUMBER_RE.findall(solution_str)
    if not found:
        return None
    for candidate in reversed(found):
        if candidate not in _FLEXIBLE_INVALID:
            return candidate
    # Every token was "." - verl ends its loop on the first token; keep that.
    return found[0]


def _to_decimal(text: str) -> Decimal | None:
    cleaned = str(text).strip().replace(",", "").replace("$", "")
    try:
        value = Decimal(cleaned)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _numbers_equal(answer: str, ground_truth: str) -> bool:
    a = _to_decimal(answer)
    b = _to_decimal(ground_truth)
    if a is None or b is None:
        return str(answer).strip() == str(ground_truth).strip()
    return abs(a - b) <= NUMERIC_TOLERANCE


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """Score one response against a GSM8K ground truth.

    Returns ``0.0`` if no answer can be extracted, ``score`` if the answer is
    correct and ``format_score`` otherwise. ``method`` is ``"strict"``,
    ``"flexible"`` (both string comparison, as in verl) or ``"numeric"``
    (``####`` extraction, numeric comparison with tolerance 1e-6).
    """
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    if method == "numeric":
        correct = _numbers_equal(answer, ground_truth)
    else:
        correct = answer == ground_truth
    return float(score) if correct else float(format_score)
