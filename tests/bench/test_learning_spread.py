"""rlkit.bench.learning_spread: milestones, reward windows, the sign test and the paired spread, by hand; the
refusals; the command line on files; and the committed spread of the two GPU pairs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlkit.bench import learning_spread as ls

REPO = Path(__file__).resolve().parents[2]


def _side(formats, scores=None, responses=10):
    scores = scores or [0.0] * len(formats)
    return {"steps": [{"step": i + 1, "format": f, "score": s, "responses": responses}
                      for i, (f, s) in enumerate(zip(formats, scores))], "val": {}}


def _run(rlkit, verl, seed=1, **setup):
    base = dict(estimator="grpo", prompts=64, n=4, lr=1e-5, kl_coef=0.001, temperature=1.0, format_score=0.1,
                prompt_len=512, response_len=512, mini_batch=64, micro_batch=16, log_prob_micro_batch=32,
                extra_overrides=[], model="<path>/smol.gguf", seed=seed, steps=len(rlkit["steps"]))
    return {"setup": base | setup, "sides": {"rlkit": rlkit, "verl": verl}, "problems": []}


def test_milestones_are_the_first_step_at_or_over_each_level():
    steps = _side([0.1, 0.5, 0.94, 0.95, 0.2])["steps"]
    assert ls.milestones(steps) == {"0.5": 2, "0.95": 4}  # 0.5 counts at exactly 0.5; a later dip changes nothing
    assert ls.milestones(steps, levels=(0.99,)) == {"0.99": None}


def test_window_means_by_hand_and_none_for_a_short_run():
    steps = _side([0.0] * 4, scores=[0.1, 0.2, 0.3, 0.6])["steps"]
    assert ls.window_means(steps, windows=((1, 2), (2, 4), (3, 5))) == {
        "1-2": pytest.approx(0.15), "2-4": pytest.approx((0.2 + 0.3 + 0.6) / 3), "3-5": None}
    assert ls.window_means(steps) == {"1-10": None, "11-30": None, "31-60": None}


def test_sign_test_by_hand():
    assert ls.sign_test(2, 0) == 0.5  # 2 * (1/4)
    assert ls.sign_test(1, 0) == 1.0  # one run says nothing
    assert ls.sign_test(5, 0) == pytest.approx(2 / 32)
    assert ls.sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert ls.sign_test(3, 3) == 1.0 and ls.sign_test(0, 0) == 1.0
    assert ls.sign_test(1, 4) == ls.sign_test(4, 1) == pytest.approx(2 * (1 + 5) / 32)


def test_spread_by_hand():
    a = _run(_side([0.1, 0.5, 0.96]), _side([0.6, 0.97, 1.0]), seed=1)  # 0.5: 2 vs 1, 0.95: 3 vs 2
    b = _run(_side([0.5, 0.95, 1.0]), _side([0.2, 0.4, 0.5]), seed=2)  # 0.5: 1 vs 3, 0.95: 2 vs never
    res = ls.spread({"a": a, "b": b})
    assert res["runs"]["a"]["seed"] == 1 and res["runs"]["b"]["steps"] == 3
    assert res["runs"]["a"]["sides"]["rlkit"]["first_step_format"] == 1  # 0.1 of 10 responses
    assert res["runs"]["b"]["sides"]["verl"]["first_step_format"] == 2
    assert res["sides"]["rlkit"]["0.95"] == {"values": [3, 2], "mean": 2.5, "min": 2, "max": 3}
    assert res["sides"]["verl"]["0.95"] == {"values": [2, None], "mean": 2, "min": 2, "max": 2}
    assert res["paired"]["0.5"] == {"rlkit_minus_verl": [1, -2], "verl_first": 1, "rlkit_first": 1, "ties": 0,
                                    "sign_test_p": 1.0}
    # run b: rlkit reached 95% and verl never did, so rlkit was first there, by an unknown number of steps
    assert res["paired"]["0.95"] == {"rlkit_minus_verl": [1, None], "verl_first": 1, "rlkit_first": 1, "ties": 0,
                                     "sign_test_p": 1.0}
    neither = ls.spread({"c": _run(_side([0.1, 0.2]), _side([0.1, 0.3]))})["paired"]["0.5"]
    assert neither == {"rlkit_minus_verl": [None], "verl_first": 0, "rlkit_first": 0, "ties": 0, "sign_test_p": 1.0}


def test_spread_refuses_runs_that_do_not_compare():
    good = _run(_side([0.5]), _side([0.5]))
    one_sided = {**good, "sides": {"rlkit": good["sides"]["rlkit"]}}
    with pytest.raises(SystemExit, match=r"b: no verl side"):
        ls.spread({"a": good, "b": one_sided})
    with pytest.raises(SystemExit, match=r"b: the learning harness recorded problems.*other prompts"):
        ls.spread({"a": good, "b": {**good, "problems": ["step 3: other prompts"]}})
    with pytest.raises(SystemExit, match=r"b: other settings than a's \(lr=0.0001 against 1e-05\)"):
        ls.spread({"a": good, "b": _run(_side([0.5]), _side([0.5]), lr=1e-4)})
    clip = ["actor_rollout_ref.actor.clip_ratio=0.3"]
    with pytest.raises(SystemExit, match=r"extra_overrides=\['actor_rollout_ref.actor.clip_ratio=0.3'\] against \[\]"):
        ls.spread({"a": good, "b": _run(_side([0.5]), _side([0.5]), extra_overrides=clip)})
    # the seed, the number of steps and keys that change only speed (verl's fused log-probs) may differ
    other = _run(_side([0.5, 1.0]), _side([0.5, 1.0]), seed=7,
                 extra_overrides=["actor_rollout_ref.model.use_fused_kernels=True"])
    assert ls.spread({"a": good, "b": other})["runs"]["b"]["seed"] == 7


def test_command_line_writes_the_spread_and_its_figure(tmp_path, capsys):
    paths = []
    for name, run in (("seed1", _run(_side([0.1, 0.5, 0.96]), _side([0.6, 0.97, 1.0]))),
                      ("seed2", _run(_side([0.5, 0.95]), _side([0.2, 0.5]), seed=2))):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "learning.json")
        paths[-1].write_text(json.dumps(run))
    res = ls.main([str(p) for p in paths] + ["--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "learning_spread.json").read_text()) == res
    assert (tmp_path / "out" / "learning_spread.png").stat().st_size > 0
    assert list(res["runs"]) == ["seed1", "seed2"]  # labelled by folder
    assert "format rate 50%: rlkit minus verl, in steps: [1, -1] (verl first 1, rlkit first 1, ties 0" in \
        capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        ls.main([str(tmp_path / "nothing.json")])
    with pytest.raises(SystemExit, match="two runs in folders named 'seed1'"):
        ls.main([str(paths[0]), str(paths[0])])


def test_the_committed_spread_is_the_two_committed_pairs(tmp_path):
    """data/gpu/learning_spread_h100/ is what the command makes of the two committed learning pairs."""
    gpu = REPO / "data" / "gpu"
    res = ls.main([str(gpu / "learning_verl_h100" / "learning.json"), str(gpu / "learning_seed2_h100" / "learning.json"),
                   "--out", str(tmp_path)])
    committed = json.loads((gpu / "learning_spread_h100" / "learning_spread.json").read_text())
    assert committed == json.loads(json.dumps(res))
    # by hand from the README's two tables: 95% at 23 / 18 (seed 1) and 20 / 17 (seed 2)
    assert res["paired"]["0.95"]["rlkit_minus_verl"] == [5, 3] and res["paired"]["0.95"]["sign_test_p"] == 0.5
    assert not any(math.isnan(v) for r in res["runs"].values() for s in r["sides"].values()
                   for v in s["reward"].values())
