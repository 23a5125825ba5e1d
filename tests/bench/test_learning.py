"""rlkit.bench.learning: the curves read back from dumps (by hand), the two sides' commands, and the rlkit side
run for real on a CPU (tiny random model, hf rollout) through the same harness."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkit.bench import e2e, learning, peers


def _dump(folder: Path, step: int, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{step}.jsonl").write_text("".join(json.dumps(dict(r, step=step)) + "\n" for r in rows))


def test_curves_by_hand(tmp_path):
    side = tmp_path / "side"
    _dump(side / "rollouts", 1, [{"input": "q", "output": "x", "gts": "3", "score": 0.0},
                                 {"input": "q", "output": "#### 4", "gts": "3", "score": 0.1}])
    _dump(side / "rollouts", 2, [{"input": "q", "output": "#### 3", "gts": "3", "score": 1.0},
                                 {"input": "q", "output": "#### 4", "gts": "3", "score": 0.1}])
    _dump(side / "val", 0, [{"input": "q", "output": "so 3", "gts": "3", "score": 0.0},
                            {"input": "q", "output": "#### 5", "gts": "3", "score": 0.1},
                            {"input": "q", "output": "nothing", "gts": "3", "score": 0.0},
                            {"input": "q", "output": "#### 3", "gts": "3", "score": 1.0}])
    (side / "rollouts" / "notes.txt").write_text("not a step")
    rows = [{"step": 1, "critic/score/mean": 0.05, "response_length/mean": 212.5, "actor/grad_norm": 0.3, "x": 1},
            {"step": 2, "critic/score/mean": 0.55}]
    c = learning.curves(side, rows)
    # shared reward (format_score 0.1): "x" 0, "#### 4" 0.1 -> 0.05; "#### 3" 1, "#### 4" 0.1 -> 0.55
    # logged: the LOGGED keys the side wrote at that step (step 2 wrote none of them)
    assert c["steps"] == [dict(step=1, score=0.05, responses=2, score_dumped=0.05, score_shared=0.05, format=0.5,
                               prompts=learning.prompts_digest([{"gts": "3"}, {"gts": "3"}]),
                               inputs=learning.inputs_digest([{"input": "q"}, {"input": "q"}]),
                               logged={"response_length/mean": 212.5, "actor/grad_norm": 0.3}),
                          dict(step=2, score=0.55, responses=2, score_dumped=0.55, score_shared=0.55, format=1.0,
                               prompts=learning.prompts_digest([{"gts": "3"}, {"gts": "3"}]),
                               inputs=learning.inputs_digest([{"input": "q"}, {"input": "q"}]), logged={})]
    # strict: only "#### 3" is right (1 of 4); flexible also takes the last number of "so 3" (2 of 4)
    assert c["val"] == {0: dict(strict=0.25, flexible=0.5, n=4, format=0.5)}
    assert learning.curves(tmp_path / "missing", []) == {"steps": [], "val": {}}
    assert learning.curves(side, rows, format_score=0.0)["steps"][0]["score_shared"] == 0.0


def test_from_logs_names_a_side_that_scored_with_another_reward_and_prompts_that_differ(tmp_path):
    """verl 0.9.1 ignored the top-level custom_reward_function (its built-in scorer gave a formatted wrong answer
    0) and, with loader workers, drew other prompts: both are written down and the run exits non-zero."""
    for name, gts, score in (("rlkit", "3", 0.1), ("verl", "5", 0.0)):
        _dump(tmp_path / name / "rollouts", 1, [{"input": "q", "output": "#### 4", "gts": gts, "score": score}])
        row = {"critic/score/mean": score}  # verl's file logger nests a step's metrics under "data"
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps(dict(step=1, data=row) if name == "verl" else
                                                                  dict(step=1, **row)) + "\n")
    with pytest.raises(SystemExit) as e:
        learning.main(["--model", "/m", "--out", str(tmp_path), "--from-logs"])
    msg = str(e.value)
    assert "not a like-for-like comparison" in msg and "rlkit:" not in msg
    assert "verl: the dumped rewards differ from the shared reward at 1 of 1 steps (first: step 1, 0 vs 0.1)" in msg
    assert "different prompts at 1 of 1 steps (first: step 1)" in msg
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert len(saved["problems"]) == 2 and saved["same_prompts"] == {"steps": 1, "same": 0, "first_different": 1}


def _commands(tmp_path, *argv):
    return learning.main(["--model", "/m", "--data", "/d", "--out", str(tmp_path), "--dry-run", *argv])


def test_both_sides_run_one_grpo_setting_with_their_own_dumps_and_the_same_reward(tmp_path, capsys):
    plan = _commands(tmp_path, "--steps", "60", "--prompts", "64", "--n", "4")
    keys = {name: {peers.key(a): a.split("=", 1)[1] for a in side["argv"][3:]} for name, side in plan.items()}
    rl, vl = keys["rlkit"], keys["verl"]
    for k in ("data.train_batch_size", "actor_rollout_ref.rollout.n", "algorithm.adv_estimator",
              "trainer.total_training_steps", "actor_rollout_ref.actor.optim.lr", "data.seed",
              "actor_rollout_ref.actor.ppo_mini_batch_size", "reward.custom_reward_function.path",
              "reward.custom_reward_function.reward_kwargs.format_score", "trainer.val_before_train",
              "trainer.test_freq", "data.dataloader_num_workers",
              "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.kl_loss_coef",
              "actor_rollout_ref.rollout.temperature", "actor_rollout_ref.model.path"):
        assert rl[k] == vl[k], k
    assert (rl["data.train_batch_size"], rl["actor_rollout_ref.rollout.n"], rl["algorithm.adv_estimator"]) == \
        ("64", "4", "grpo")
    assert rl["actor_rollout_ref.actor.ppo_mini_batch_size"] == "64"  # one update per step
    assert (rl["trainer.val_before_train"], rl["trainer.test_freq"]) == ("True", "60")
    # verl 0.9.1's main_ppo reads the reward function from its `reward` group only
    assert rl["reward.custom_reward_function.path"] == str(tmp_path / learning.REWARD_FILE)
    assert rl["reward.custom_reward_function.reward_kwargs.format_score"] == "0.1"
    assert not any(k.startswith("custom_reward_function") for k in rl)
    assert rl["data.dataloader_num_workers"] == "0"  # verl's prompt order without loader workers
    assert not any(k.startswith("critic.") for k in rl)
    for name, k in keys.items():
        assert k["trainer.rollout_data_dir"] == str(tmp_path / name / "rollouts")
        assert k["trainer.validation_data_dir"] == str(tmp_path / name / "val")
    assert "# verl: output to" in capsys.readouterr().out
    assert not tmp_path.joinpath(learning.REWARD_FILE).exists()  # a dry run writes nothing


def test_refusals(tmp_path):
    with pytest.raises(SystemExit, match="choose from rlkit, verl"):
        _commands(tmp_path, "--sides", "rlkit,trl")
    with pytest.raises(SystemExit, match="--model /nope: no such file or folder"):
        learning.main(["--model", "/nope", "--out", str(tmp_path)])


def test_rlkit_side_runs_on_cpu(tmp_path, gsm8k_source, qwen_tokenizer_dir):
    from rlkit.datasets import gsm8k

    gsm8k(local_dir=tmp_path / "gsm8k", source=str(gsm8k_source))
    model, _ = e2e.make_model("tiny", str(qwen_tokenizer_dir), tmp_path / "model")
    out = tmp_path / "learning"
    over = ["actor_rollout_ref.rollout.name=hf", "trainer.device=cpu", "data.val_max_samples=6",
            "data.max_response_length=16", "data.max_prompt_length=256"]
    res = learning.main(["--model", str(model), "--sides", "rlkit", "--data", str(tmp_path / "gsm8k"), "--out",
                         str(out), "--steps", "2", "--prompts", "4", "--n", "2",
                         *[f"--override={o}" for o in over]])
    side = res["sides"]["rlkit"]
    assert [s["step"] for s in side["steps"]] == [1, 2] and all(s["responses"] == 8 for s in side["steps"])
    assert all(s["score"] == pytest.approx(s["score_dumped"]) for s in side["steps"])
    assert all(s["score_shared"] == pytest.approx(s["score_dumped"]) for s in side["steps"])  # the reward group
    assert res["problems"] == []
    assert sorted(side["val"]) == ["0", "2"] and all(v["n"] == 6 for v in side["val"].values())
    saved = json.loads((out / "learning.json").read_text())
    assert saved["sides"] == res["sides"] and str(tmp_path) not in (out / "learning.json").read_text()
    assert (out / "learning.png").stat().st_size > 5000
    log = (out / "rlkit.log").read_text()
    assert "Traceback" not in log


def test_a_side_stopped_early_resumes_from_its_checkpoint_and_keeps_its_earlier_rows(tmp_path, gsm8k_source,
                                                                                       qwen_tokenizer_dir):
    """--save-freq: a first sitting of 1 step (as a timeout would stop it), then the rerun continues at step 2 from
    the checkpoint without validating again; the curves hold both sittings' steps and both validation passes."""
    from rlkit.datasets import gsm8k

    gsm8k(local_dir=tmp_path / "gsm8k", source=str(gsm8k_source))
    model, _ = e2e.make_model("tiny", str(qwen_tokenizer_dir), tmp_path / "model")
    out = tmp_path / "learning"
    over = ["actor_rollout_ref.rollout.name=hf", "trainer.device=cpu", "data.val_max_samples=4",
            "data.max_response_length=8", "data.max_prompt_length=256"]
    argv = ["--model", str(model), "--sides", "rlkit", "--data", str(tmp_path / "gsm8k"), "--out", str(out),
            "--prompts", "4", "--n", "2", "--save-freq", "1", *[f"--override={o}" for o in over]]
    first = learning.main(argv + ["--steps", "1"])["sides"]["rlkit"]
    recorded = json.loads((out / "learning.json").read_text())
    assert [s["step"] for s in first["steps"]] == [1] and sorted(first["val"]) == ["0", "1"]
    assert (out / "rlkit" / "global_step_1").is_dir()
    second = learning.main(argv + ["--steps", "2"])["sides"]["rlkit"]
    assert [s["step"] for s in second["steps"]] == [1, 2]
    assert second["steps"][0] == first["steps"][0]  # step 1 comes from the first sitting's row and dump
    assert all(s["score"] == pytest.approx(s["score_dumped"]) for s in second["steps"])
    assert sorted(second["val"]) == ["0", "1", "2"]
    log = (out / "rlkit.log").read_text()
    assert "resum" in log.lower() and "Traceback" not in log
    assert (out / "rlkit.earlier.log").exists() and (out / "rlkit" / "metrics.earlier.jsonl").exists()
    plan = learning.main(argv + ["--steps", "2", "--dry-run"])["rlkit"]["argv"]
    assert "trainer.val_before_train=False" in plan and "trainer.resume_mode=auto" in plan
    again = learning.main(argv + ["--steps", "2", "--from-logs"])  # runs nothing: the same curves from the files
    assert again["sides"]["rlkit"] == second and again["card"] == recorded["card"]
    assert again["versions"] == recorded["versions"]


def test_from_logs_without_a_recorded_run_says_the_machine_is_unknown(tmp_path):
    side = tmp_path / "rlkit"
    _dump(side / "rollouts", 1, [{"input": "q", "output": "#### 3", "gts": "3", "score": 1.0}])
    (side / "metrics.jsonl").write_text(json.dumps({"step": 1, "critic/score/mean": 1.0}) + "\n")
    res = learning.main(["--model", "/m", "--out", str(tmp_path), "--sides", "rlkit", "--from-logs"])
    assert res["sides"]["rlkit"]["steps"] == [dict(step=1, score=1.0, responses=1, score_dumped=1.0,
                                                    score_shared=1.0, format=1.0,
                                                    prompts=learning.prompts_digest([{"gts": "3"}]),
                                                    inputs=learning.inputs_digest([{"input": "q"}]), logged={})]
    assert res["card"].startswith("not recorded") and res["date"] is None
    assert (tmp_path / "learning.png").exists() and not (tmp_path / learning.REWARD_FILE).exists()


def test_two_sides_from_logs_say_whether_they_drew_the_same_prompts(tmp_path):
    """Step 1: both sides drew prompts with answers 3 and 5 (in another order); step 2: verl's differ."""
    for name, step2 in (("rlkit", ["7", "8"]), ("verl", ["7", "9"])):
        side = tmp_path / name
        _dump(side / "rollouts", 1, [{"input": f"q{g}", "output": f"#### {g}", "gts": g, "score": 1.0}
                                     for g in (["3", "5"] if name == "rlkit" else ["5", "3"])])
        _dump(side / "rollouts", 2, [{"input": "q", "output": "x", "gts": g, "score": 0.0} for g in step2])
        rows = [{"step": s, "critic/score/mean": m} for s, m in ((1, 1.0), (2, 0.0))]
        lines = [json.dumps({"step": r["step"], "data": r} if name == "verl" else r) for r in rows]
        (side / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="different prompts at 1 of 2 steps"):
        learning.main(["--model", "/m", "--out", str(tmp_path), "--from-logs"])
    res = json.loads((tmp_path / "learning.json").read_text())
    assert res["same_prompts"] == {"steps": 2, "same": 1, "first_different": 2}
    assert len(res["problems"]) == 1  # the rewards agree with the shared one on both sides
    assert [s["score"] for s in res["sides"]["verl"]["steps"]] == [1.0, 0.0]
    # step 1 holds the same texts in another order; step 2 drew other prompts, so its texts are not compared
    assert res["same_inputs"] == {"steps": 1, "same": 1, "first_different": None}


def test_two_sides_that_render_the_same_prompts_into_other_texts_are_not_a_like_for_like_comparison(tmp_path):
    """The same ground truths at every step, but verl's prompts carry a system prompt rlkit's lack at step 2 (as a
    side rendering the chat template another way would show): written down, and the run exits non-zero."""
    for name in ("rlkit", "verl"):
        side = tmp_path / name
        for step in (1, 2):
            text = "system\nYou are a helpful AI assistant\nuser\nq" if name == "verl" and step == 2 else "user\nq"
            _dump(side / "rollouts", step, [{"input": text, "output": "#### 3", "gts": "3", "score": 1.0}])
        rows = [{"step": s, "critic/score/mean": 1.0} for s in (1, 2)]
        lines = [json.dumps({"step": r["step"], "data": r} if name == "verl" else r) for r in rows]
        (side / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as e:
        learning.main(["--model", "/m", "--out", str(tmp_path), "--from-logs"])
    assert "the sides turned the same prompts into different texts at 1 of 2 steps (first: step 2)" in str(e.value)
    res = json.loads((tmp_path / "learning.json").read_text())
    assert res["same_prompts"] == {"steps": 2, "same": 2, "first_different": None}
    assert res["same_inputs"] == {"steps": 2, "same": 1, "first_different": 2} and len(res["problems"]) == 1


def _side_from_logs(out: Path, name: str, gts: list[str]) -> dict:
    """A side's dumps and metrics for one step in ``out/name`` (every response "#### 3", scored with the shared
    reward: 1 where the answer is 3, 0.1 elsewhere), then ``--from-logs`` over it alone."""
    scores = [1.0 if g == "3" else 0.1 for g in gts]
    _dump(out / name / "rollouts", 1, [{"input": "q", "output": "#### 3", "gts": g, "score": s}
                                       for g, s in zip(gts, scores)])
    row = {"critic/score/mean": sum(scores) / len(scores)}
    (out / name / "metrics.jsonl").write_text(json.dumps(dict(step=1, data=row) if name == "verl" else
                                                         dict(step=1, **row)) + "\n")
    return learning.main(["--model", "/m", "--out", str(out), "--sides", name, "--from-logs"])


def test_a_recorded_side_is_compared_with_a_side_run_now(tmp_path):
    """rlkit's curves from an earlier learning.json, verl's from its own run: one comparison, checked the same way
    (same prompts, shared reward), that says where the recorded side came from."""
    _side_from_logs(tmp_path / "then", "rlkit", ["3", "5"])
    record = tmp_path / "then" / "learning.json"
    rec = json.loads(record.read_text())
    rec["card"], rec["date"] = "NVIDIA H100 80GB HBM3", "2026-12-07"
    record.write_text(json.dumps(rec))
    _dump(tmp_path / "now" / "verl" / "rollouts", 1,
          [{"input": "q", "output": "#### 3", "gts": g, "score": s} for g, s in (("5", 0.1), ("3", 1.0))])
    (tmp_path / "now" / "verl" / "metrics.jsonl").write_text(json.dumps(dict(step=1, data={"critic/score/mean": 0.55}))
                                                             + "\n")
    argv = ["--model", "/m", "--out", str(tmp_path / "now"), "--sides", "verl", "--from-logs",
            "--recorded", f"rlkit={record}"]
    res = learning.main(argv)
    assert list(res["sides"]) == ["rlkit", "verl"] and res["sides"]["rlkit"] == rec["sides"]["rlkit"]
    assert res["sides"]["rlkit"]["steps"][0]["score_shared"] == pytest.approx(0.55)  # (1 + 0.1) / 2
    assert res["same_prompts"] == {"steps": 1, "same": 1, "first_different": None} and res["problems"] == []
    assert res["recorded"] == {"rlkit": {"from": "<path>/learning.json", "date": "2026-12-07", "card": "NVIDIA H100 80GB HBM3",
                                         "versions": {}}}
    assert res["commands"]["rlkit"] == rec["commands"]["rlkit"] and "verl.trainer.main_ppo" in res["commands"]["verl"]
    # the checks cover the recorded side too: verl drawing other prompts is caught
    _dump(tmp_path / "now" / "verl" / "rollouts", 1, [{"input": "q", "output": "x", "gts": "7", "score": 0.0}])
    with pytest.raises(SystemExit, match="different prompts at 1 of 1 steps"):
        learning.main(argv)


def test_a_recorded_side_with_other_settings_is_refused_with_the_difference(tmp_path):
    _side_from_logs(tmp_path, "rlkit", ["3"])
    record = str(tmp_path / "learning.json")
    base = ["--model", "/m", "--out", str(tmp_path / "now"), "--sides", "verl", "--dry-run"]
    with pytest.raises(SystemExit) as e:
        learning.main(base + ["--lr", "2e-5", "--n", "8", "--recorded", f"rlkit={record}"])
    assert "n: recorded 4, now 8" in str(e.value) and "lr: recorded 1e-05, now 2e-05" in str(e.value)
    assert "steps:" not in str(e.value) and "Run rlkit again with --sides" in str(e.value)
    with pytest.raises(SystemExit, match=r"extra_overrides: recorded \[\], now \['actor_rollout_ref.actor.clip_ratio"):
        learning.main(base + ["--override", "actor_rollout_ref.actor.clip_ratio=0.3", "--recorded", f"rlkit={record}"])
    # a speed-only key (rlkit accepts it unread) does not change the run: verl's fused log-probs
    plan = learning.main(base + ["--override", "actor_rollout_ref.model.use_fused_kernels=True",
                                 "--recorded", f"rlkit={record}"])
    assert list(plan) == ["verl"] and "actor_rollout_ref.model.use_fused_kernels=True" in plan["verl"]["argv"]
    for spec, message in ((f"rlkit={tmp_path / 'nope.json'}", "cannot read"), ("rlkit", "write SIDE=PATH"),
                          (f"trl={record}", "write SIDE=PATH"), (f"verl={record}", "already in this comparison")):
        with pytest.raises(SystemExit, match=message):
            learning.main(base + ["--recorded", spec])
    with pytest.raises(SystemExit, match=r"holds no verl side \(it has: rlkit\)"):
        learning.main(base[:5] + ["rlkit", "--dry-run", "--recorded", f"verl={record}"])


def test_the_recorded_h100_run_compares_with_verl_run_now_with_fused_log_probs():
    """The command the verl side of the committed learning run is due to run with (data/gpu/learning_h100)."""
    record = Path(__file__).resolve().parents[2] / "data" / "gpu" / "learning_h100" / "learning.json"
    plan = learning.main(["--model", "/m", "--out", "/tmp/unused", "--sides", "verl", "--dry-run",
                          "--override", "actor_rollout_ref.model.use_fused_kernels=True",
                          "--recorded", f"rlkit={record}"])
    assert list(plan) == ["verl"]
