"""Reward registry, custom reward files and batch scoring."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rlkit.rewards as rewards
from rlkit.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    default_compute_score,
    load_custom_reward_function,
    register_reward,
    score_responses,
)
from rlkit.rewards import gsm8k as gsm8k_reward

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_registry():
    saved = dict(REWARD_FUNCTIONS)
    yield REWARD_FUNCTIONS
    REWARD_FUNCTIONS.clear()
    REWARD_FUNCTIONS.update(saved)


# --------------------------------------------------------------------- registry


def test_builtin_gsm8k():
    assert REWARD_FUNCTIONS["openai/gsm8k"] is gsm8k_reward.compute_score
    assert default_compute_score("openai/gsm8k", "so #### 72", "72") == 1.0
    assert default_compute_score("openai/gsm8k", "so #### 1,080", "1080") == 1.0
    assert default_compute_score("openai/gsm8k", "so #### 71", "72") == 0.0
    assert default_compute_score("openai/gsm8k", "no answer", "72", extra_info={"split": "test"}) == 0.0
    assert isinstance(default_compute_score("openai/gsm8k", "#### 72", "72"), float)


def test_unknown_data_source_message():
    with pytest.raises(NotImplementedError) as exc:
        default_compute_score("my/unknown_set", "#### 1", "1")
    msg = str(exc.value)
    assert "'my/unknown_set'" in msg
    assert "'openai/gsm8k'" in msg
    assert "custom_reward_function.path" in msg


def test_register_reward(clean_registry):
    @register_reward("test/exact")
    def exact(solution_str, ground_truth):
        return solution_str.strip() == ground_truth

    assert clean_registry["test/exact"] is exact
    assert default_compute_score("test/exact", " yes ", "yes") == 1.0
    assert default_compute_score("test/exact", "no", "yes") == 0.0

    seen = []

    @register_reward(["test/a", "test/b"])
    def with_info(solution_str, ground_truth, extra_info=None):
        seen.append(extra_info)
        return {"score": 0.5, "acc": 1}

    assert clean_registry["test/a"] is with_info and clean_registry["test/b"] is with_info
    assert default_compute_score("test/b", "x", "y", extra_info={"k": 3}) == {"score": 0.5, "acc": 1}
    assert seen == [{"k": 3}]


def test_register_reward_replacing_warns(clean_registry):
    @register_reward("test/x")
    def first(solution_str, ground_truth):
        return 1.0

    with pytest.warns(UserWarning, match="replacing"):

        @register_reward("test/x")
        def second(solution_str, ground_truth):
            return 2.0

    assert default_compute_score("test/x", "", "") == 2.0


def test_register_reward_bad_name():
    with pytest.raises(ValueError):
        register_reward("")
    with pytest.raises(TypeError):
        register_reward("test/not_callable")(42)


def test_rewards_import_is_light():
    code = "import sys, rlkit.rewards; print(sorted(m for m in ('torch','pandas','pyarrow','numpy','transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
        env={**_env_with_repo()},
    )
    assert out.stdout.strip() == "[]"


def _env_with_repo():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------- custom reward files


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


CUSTOM = """
    import re
    from math import sqrt

    THRESHOLD = 3

    def helper(x):
        return x

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
        return float(solution_str == ground_truth) + bonus

    def my_score(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": 0.25, "length": len(solution_str)}
"""


def test_load_custom_reward_function(tmp_path):
    path = _write(tmp_path, "my_reward.py", CUSTOM)
    fn = load_custom_reward_function(path)
    assert fn("ds", "a", "a") == 1.0
    assert fn(data_source="ds", solution_str="a", ground_truth="b", extra_info=None) == 0.0
    other = load_custom_reward_function(str(path), name="my_score")
    assert other("ds", "abc", "x") == {"score": 0.25, "length": 3}
    with_kwargs = load_custom_reward_function(path, reward_kwargs={"bonus": 0.5})
    assert with_kwargs("ds", "a", "a") == 1.5
    # the module is registered under a stable name derived from the path
    module = sys.modules[fn.__module__]
    assert fn.__module__.startswith("rlkit_custom_reward_my_reward_")
    assert module.compute_score("d", "1", "1") == 1.0
    # loading again re-executes the file (edits are picked up)
    path.write_text(textwrap.dedent(CUSTOM).replace("+ bonus", "+ bonus + 10"), encoding="utf-8")
    assert load_custom_reward_function(path)("ds", "a", "a") == 11.0


def test_load_custom_reward_function_errors(tmp_path):
    path = _write(tmp_path, "my_reward.py", CUSTOM)
    with pytest.raises(FileNotFoundError) as exc:
        load_custom_reward_function(tmp_path / "missing.py")
    assert "missing.py" in str(exc.value)

    with pytest.raises(AttributeError) as exc:
        load_custom_reward_function(path, name="score_fn")
    msg = str(exc.value)
    assert "'score_fn'" in msg and "my_reward.py" in msg
    assert "compute_score, helper, my_score" in msg  # only callables defined in the file
    assert "sqrt" not in msg and "THRESHOLD" not in msg

    with pytest.raises(TypeError, match="THRESHOLD"):
        load_custom_reward_function(path, name="THRESHOLD")

    broken = _write(tmp_path, "broken.py", "def compute_score(:\n")
    with pytest.raises(ImportError) as exc:
        load_custom_reward_function(broken)
    assert "broken.py" in str(exc.value) and isinstance(exc.value.__cause__, SyntaxError)

    with pytest.raises(FileNotFoundError):
        load_custom_reward_function(tmp_path)  # a folder


def test_load_custom_reward_function_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path, "home_reward.py", CUSTOM)
    fn = load_custom_reward_function("~/home_reward.py")
    assert fn("d", "1", "1") == 1.0


# --------------------------------------------------------------------- score_responses


def test_score_responses_with_default_fn():
    """A number is also the sample's ``acc`` (verl 0.9's reward loop: ``reward_extra_info["acc"] = score``)."""
    scores, extras = score_responses(
        default_compute_score,
        ["openai/gsm8k"] * 4,
        ["#### 72", "#### 1,080", "#### 5", "no idea"],
        ["72", "1080", "6", "3"],
        [{"index": i} for i in range(4)],
    )
    assert scores == [1.0, 1.0, 0.0, 0.0]
    assert extras == {"acc": [1.0, 1.0, 0.0, 0.0]}


def test_score_responses_numbers_and_dicts_in_one_batch():
    """Per sample, as verl: a number gets ``acc``; a dict keeps its own keys (here none: ``acc`` is None there)."""
    def fn(data_source, solution_str, ground_truth, extra_info):
        return {"score": 0.5, "pred": solution_str} if solution_str == "d" else 2.0

    scores, extras = score_responses(fn, ["x", "x"], ["n", "d"], ["", ""])
    assert scores == [2.0, 0.5]
    assert extras == {"acc": [2.0, None], "pred": [None, "d"]}


def test_score_responses_dict_extras():
    def fn(data_source, solution_str, ground_truth, extra_info):
        out = {"score": len(solution_str), "acc": solution_str == ground_truth}
        if extra_info is not None and extra_info.get("with_pred"):
            out["pred"] = solution_str
        return out

    scores, extras = score_responses(fn, ["d", "d", "d"], ["a", "bb", "ccc"], ["a", "x", "y"], [None, {"with_pred": 1}, {}])
    assert scores == [1.0, 2.0, 3.0]
    assert all(isinstance(s, float) for s in scores)
    assert extras == {"acc": [1.0, 0.0, 0.0], "pred": [None, "bb", None]}


def test_score_responses_keyword_call_and_none_extra_infos():
    calls = []

    def fn(**kwargs):
        calls.append(kwargs)
        return True

    scores, _ = score_responses(fn, ["d1", "d2"], ["r1", "r2"], ["g1", "g2"], None)
    assert scores == [1.0, 1.0]
    assert calls == [
        {"data_source": "d1", "solution_str": "r1", "ground_truth": "g1", "extra_info": None},
        {"data_source": "d2", "solution_str": "r2", "ground_truth": "g2", "extra_info": None},
    ]


def test_score_responses_numpy_and_tensor_scores():
    import numpy as np
    import torch

    values = [np.float32(0.5), torch.tensor(0.25), 3]
    scores, _ = score_responses(lambda **kw: values[int(kw["solution_str"])], ["d"] * 3, ["0", "1", "2"], ["g"] * 3, None)
    assert scores == [0.5, 0.25, 3.0]


def test_reward_error_on_exception():
    def fn(data_source, solution_str, ground_truth, extra_info):
        if ground_truth == "boom":
            raise ZeroDivisionError("division by zero in my reward")
        return 1.0

    response = "A" * 200 + "B" * 50
    with pytest.raises(RewardError) as exc:
        score_responses(fn, ["d0", "my/data"], ["ok", response], ["g", "boom"], [None, None])
    err = exc.value
    assert isinstance(err, RuntimeError)
    assert err.index == 1
    assert err.data_source == "my/data"
    assert err.solution_str == response
    assert err.ground_truth == "boom"
    assert isinstance(err.__cause__, ZeroDivisionError)
    msg = str(err)
    assert "sample 1" in msg and "'my/data'" in msg and "'boom'" in msg
    assert "ZeroDivisionError" in msg and "division by zero in my reward" in msg
    assert repr("A" * 200) in msg  # exactly the first 200 characters
    assert "AB" not in msg
    assert "fn" in msg  # names the reward function


@pytest.mark.parametrize(
    "bad, reason",
    [
        (float("nan"), "finite"),
        (math.inf, "finite"),
        ("1.0", "finite"),
        (None, "finite"),
        ([1.0, 2.0], "finite"),
        ({"acc": 1.0}, "'score'"),
        ({"score": float("nan")}, "finite"),
    ],
)
def test_reward_error_on_bad_return(bad, reason):
    with pytest.raises(RewardError) as exc:
        score_responses(lambda **kw: bad, ["d", "d"], ["x", "y"], ["g", "h"], None)
    assert exc.value.index == 0
    assert reason in str(exc.value)
    assert exc.value.ground_truth == "g"


def test_score_responses_length_mismatch():
    with pytest.raises(ValueError, match="different lengths"):
        score_responses(default_compute_score, ["openai/gsm8k"], ["a", "b"], ["1", "2"], None)


def test_public_api():
    for name in rewards.__all__:
        assert hasattr(rewards, name), name
