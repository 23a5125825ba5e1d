"""GSM8K rule reward: verl's strict / flexible semantics plus rlkit's numeric method."""
from __future__ import annotations

import json

import pytest

from rlkit.rewards.gsm8k import METHODS, compute_score, extract_solution

# --------------------------------------------------------------------- strict


@pytest.mark.parametrize(
    "response, expected",
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,080", "1080"),  # commas removed
        ("#### 1,2,3", "123"),
        ("#### -3", "-3"),
        ("#### 0.25", "0.25"),
        ("#### 72.0", "72.0"),  # no numeric normalisation in strict
        ("#### 72.", "72."),
        ("first #### 5 then corrected #### 7", "7"),  # last match wins
        ("#### 7 and a final #### 1,000 done", "1000"),
    ],
)
def test_strict_extraction(response, expected):
    assert extract_solution(response, method="strict") == expected


@pytest.mark.parametrize(
    "response",
    [
        "The answer is 72",  # no ####
        "####72",  # needs exactly one space after the hashes
        "#### $72",  # '$' right after '#### ' is not captured by the regex
        "### 72",
        "",
    ],
)
def test_strict_no_answer(response):
    assert extract_solution(response, method="strict") is None
    assert compute_score(response, "72", format_score=0.5) == 0.0


def test_strict_scores():
    assert compute_score("so #### 72", "72") == 1.0
    assert compute_score("so #### 1,080", "1080") == 1.0
    assert compute_score("so #### 73", "72") == 0.0
    assert compute_score("so #### 73", "72", format_score=0.1) == 0.1
    assert compute_score("so #### 72", "72", score=2.5) == 2.5
    assert compute_score("so #### 72.0", "72", format_score=0.1) == 0.1  # string comparison
    assert compute_score("#### -3", "-3") == 1.0
    assert isinstance(compute_score("#### 72", "72"), float)
    assert isinstance(compute_score("nothing", "72"), float)


def test_only_last_300_characters_are_searched():
    # len("#### 72") == 7; 7 + 293 == 300 characters -> fully searched
    inside = "#### 72" + "x" * 293
    assert len(inside) == 300
    assert extract_solution(inside) == "72"
    assert compute_score(inside, "72") == 1.0
    # one more character: the window starts at "### 72", so the answer is lost
    outside = "#### 72" + "x" * 294
    assert extract_solution(outside) is None
    assert compute_score(outside, "72") == 0.0
    # an answer before the window is invisible; the one inside it counts
    long = "#### 1 " + "y" * 1000 + " #### 2"
    assert extract_solution(long) == "2"
    # flexible uses the same window
    assert extract_solution("99 " + "z" * 300, method="flexible") is None
    assert extract_solution("99 " + "z" * 297, method="flexible") == "99"


# --------------------------------------------------------------------- flexible


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The answer is 72", "72"),
        ("I have 5 apples, then 12 more so 17 total", "17"),
        ("so it is 17 . ", "17"),  # a lone '.' is skipped
        ("-5 degrees", "-5"),
        ("#### 42", "42"),
        # verl keeps commas and trailing periods in flexible mode
        ("The answer is 1,080", "1,080"),
        ("The answer is 72.", "72."),
        ("Hmm... 4 ...", "..."),
        ("Hmm. Ok.", "."),  # every token is '.': verl returns the first one
    ],
)
def test_flexible_extraction(response, expected):
    assert extract_solution(response, method="flexible") == expected


def test_flexible_scores():
    assert compute_score("The answer is 72", "72", method="flexible") == 1.0
    assert compute_score("The answer is 72 apples", "72", method="flexible") == 1.0
    assert compute_score("The answer is 1,080", "1080", method="flexible", format_score=0.2) == 0.2
    assert compute_score("The answer is 72.", "72", method="flexible", format_score=0.2) == 0.2
    assert compute_score("no digits at all", "72", method="flexible", format_score=0.2) == 0.0
    assert compute_score("Hmm. Ok.", "72", method="flexible", format_score=0.2) == 0.2
    # strict would give nothing here
    assert compute_score("The answer is 72", "72", method="strict") == 0.0


# --------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        ("#### 72", "72", 1.0),
        ("#### 72.0", "72", 1.0),
        ("#### 72.00", "72", 1.0),
        ("#### 72", "72.0", 1.0),
        ("#### 72.", "72", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("#### 1000", "$1,000", 1.0),  # ground truth normalised too
        ("#### -3", "-3.0", 1.0),
        ("#### 0.5", ".5", 1.0),
        ("#### 72.0000001", "72", 1.0),  # within 1e-6
        ("#### 72.00001", "72", 0.25),  # outside 1e-6 -> format_score
        ("#### 71", "72", 0.25),
        ("#### 3", "-3", 0.25),
        ("#### 1.2.3", "123", 0.25),  # not a number -> string comparison
        ("#### 1.2.3", "1.2.3", 1.0),
        ("The answer is 72", "72", 0.0),  # numeric still needs '####'
        ("#### 5 then #### 72.0", "72", 1.0),
    ],
)
def test_numeric(response, ground_truth, expected):
    assert compute_score(response, ground_truth, method="numeric", format_score=0.25) == expected


def test_numeric_extracts_like_strict():
    for response in ["#### 1,080", "a #### 5 b #### 6", "none", "#### $3"]:
        assert extract_solution(response, "numeric") == extract_solution(response, "strict")


# --------------------------------------------------------------------- misc


def test_unknown_method():
    with pytest.raises(ValueError) as exc:
        extract_solution("#### 1", method="lenient")
    msg = str(exc.value)
    assert "'lenient'" in msg and "strict" in msg and "flexible" in msg and "numeric" in msg
    with pytest.raises(ValueError, match="lenient"):
        compute_score("#### 1", "1", method="lenient")
    assert METHODS == ("strict", "flexible", "numeric")


def test_reference_answers_score_one(gsm8k_source):
    """Every original GSM8K test answer earns full strict reward against its own ground truth."""
    from rlkit.datasets.gsm8k import extract_ground_truth

    rows = [json.loads(line) for line in (gsm8k_source / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1319
    scores = [compute_score(r["answer"], extract_ground_truth(r["answer"])) for r in rows]
    assert scores == [1.0] * 1319
    numeric = [compute_score(r["answer"], extract_ground_truth(r["answer"]), method="numeric") for r in rows]
    assert numeric == [1.0] * 1319
