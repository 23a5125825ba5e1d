"""`python -m rlkit.main_ppo` as a user runs it: resume with a new command line, retention, errors,
progress bars and the console line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import char_tokenizer, make_tiny_model, toy_parquet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer()), toy_parquet(tmp_path_factory.mktemp("d"))


def args(toy, out_dir, **extra):
    model, data = toy
    o = {
        "data.train_files": f"{data}/train.parquet", "data.val_files": f"{data}/test.parquet",
        "data.train_batch_size": 4, "data.max_prompt_length": 32, "data.max_response_length": 8,
        "actor_rollout_ref.model.path": model, "actor_rollout_ref.rollout.n": 2,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "trainer.device": "cpu",
        "trainer.logger": "['console','jsonl']", "trainer.default_local_dir": out_dir,
        "trainer.val_before_train": False, "trainer.total_training_steps": 2, "trainer.save_freq": 1,
        "custom_reward_function.path": str(REPO / "tests" / "rewards_for_tests.py"),
        "custom_reward_function.name": "digit_fraction",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def main_ppo(argv, cwd, **env):
    e = dict(os.environ, PYTHONPATH=str(REPO), RLKIT_PROGRESS="0", **env)
    e.pop("RLKIT_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "rlkit.main_ppo", *argv], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=600)


def step_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("step:")]


def test_rerun_with_more_steps_resumes_and_applies_them(toy, tmp_path):
    out = tmp_path / "run"
    first = main_ppo(args(toy, out), tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert [line.split(" - ")[0] for line in step_lines(first.stdout)] == ["step:1", "step:2"]
    again = main_ppo(args(toy, out, **{"trainer.total_training_steps": 4}), tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "global_step_2 at step 2 of 4" in again.stderr
    assert "trainer.total_training_steps: 2 -> 4" in again.stderr
    assert [line.split(" - ")[0] for line in step_lines(again.stdout)] == ["step:3", "step:4"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_rerun_that_changes_the_model_is_refused_in_one_message(toy, tmp_path):
    out = tmp_path / "run"
    assert main_ppo(args(toy, out, **{"trainer.total_training_steps": 1}), tmp_path).returncode == 0
    other = make_tiny_model(tmp_path / "other", char_tokenizer(), hidden=16)
    proc = main_ppo(args(toy, out, **{"actor_rollout_ref.model.path": other}), tmp_path)
    assert proc.returncode == 1
    assert "cannot resume" in proc.stderr and "actor_rollout_ref.model.path: saved" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "global_step_1" / "rlkit_checkpoint.json").exists()  # the checkpoint is untouched


def test_retention_keeps_the_newest_checkpoints(toy, tmp_path):
    out = tmp_path / "run"
    proc = main_ppo(args(toy, out, **{"trainer.total_training_steps": 4, "trainer.max_actor_ckpt_to_keep": 2,
                                      "trainer.max_critic_ckpt_to_keep": 2}), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("global_step_*")) == ["global_step_3", "global_step_4"]
    assert "removed old checkpoint global_step_1" in proc.stderr
    assert "saved global_step_4: " in proc.stderr and "actor/dcp" in proc.stderr and "1 rank, sharded" in proc.stderr


def test_user_errors_are_one_message_with_the_traceback_on_request(toy, tmp_path):
    bad = args(toy, tmp_path / "run", **{"data.train_files": str(tmp_path / "missing.parquet")})
    proc = main_ppo(bad, tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("rlkit: error: data.train_files: ") and "missing.parquet not found" in lines[0]
    assert "Traceback" not in proc.stderr and len(lines) <= 3
    verbose = main_ppo(bad + ["--traceback"], tmp_path)
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr
    assert "missing.parquet not found" in verbose.stderr


def test_sglang_on_a_machine_without_gpu_fails_at_once(toy, tmp_path):
    """With the default TP=2 the first thing said is what this machine lacks, not the TP arithmetic."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = main_ppo(args(toy, tmp_path / "run", **{"actor_rollout_ref.rollout.name": "sglang"}), tmp_path)
    assert proc.returncode == 2
    assert "needs an NVIDIA GPU with CUDA, and this machine has none" in proc.stderr
    assert "tensor_model_parallel_size" not in proc.stderr
    if "sglang" not in sys.modules and not _installed("sglang"):
        assert "needs the sglang package" in proc.stderr


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_progress_bars_and_a_readable_console_line(toy, tmp_path):
    out = tmp_path / "run"
    proc = main_ppo(args(toy, out, **{"trainer.total_training_steps": 1, "trainer.save_freq": -1}) + ["--progress"],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for bar in ("step 1/1", "generate 8 responses", "old log-probs", "values", "update critic", "update actor"):
        assert bar in proc.stderr, bar
    (line,) = step_lines(proc.stdout)
    assert "critic/score/mean:" in line and "actor/pg_loss:" in line and "timing_s/step:" in line
    assert "perf/total_num_tokens" not in line and len(line) < 600  # the rest goes to metrics.jsonl
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "perf/total_num_tokens" in row


def test_val_only_validates_and_stops(toy, tmp_path):
    proc = main_ppo(args(toy, tmp_path / "run", **{"trainer.val_only": True}), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = step_lines(proc.stdout)
    assert line.startswith("step:0 - val-core/toy/digits/acc/mean@1:")
    assert not list((tmp_path / "run").glob("global_step_*"))


def test_generation_dumps_at_verls_steps(toy, tmp_path):
    """verl's loop: validation before training at step 0, a rollout file per step, validation after the last step;
    every dumped score is one the step reported (its mean is the logged critic/score/mean)."""
    out, rollouts, val = tmp_path / "run", tmp_path / "rollouts", tmp_path / "val"
    proc = main_ppo(args(toy, out, **{"trainer.val_before_train": True, "trainer.test_freq": 2, "trainer.save_freq": -1,
                                      "trainer.rollout_data_dir": rollouts, "trainer.validation_data_dir": val}),
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in rollouts.iterdir()) == ["1.jsonl", "2.jsonl"]
    assert sorted(p.name for p in val.iterdir()) == ["0.jsonl", "2.jsonl"]
    logged = {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    # verl times the validation of a training step apart from the step (none before training)
    assert logged[2]["timing_s/testing"] > 0 and "timing_s/testing" not in logged[0] | logged[1]
    for step in (1, 2):
        lines = [json.loads(line) for line in (rollouts / f"{step}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 4 * 2 and {line["step"] for line in lines} == {step}  # train_batch_size x rollout.n
        assert sum(line["score"] for line in lines) / 8 == pytest.approx(logged[step]["critic/score/mean"])
        # verl 0.9: a number is also acc (the reward's float; score went through the fp32 reward tensor)
        assert [line["acc"] for line in lines] == pytest.approx([line["score"] for line in lines], rel=1e-6)
    for step in (0, 2):
        lines = [json.loads(line) for line in (val / f"{step}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 4 and {line["step"] for line in lines} == {step}  # the 4 validation prompts
        assert sum(line["score"] for line in lines) / 4 == pytest.approx(
            logged[step]["val-core/toy/digits/acc/mean@1"])


def test_log_val_generations_logs_verls_picks(toy, tmp_path):
    """trainer.log_val_generations=2: after the validation, the console and metrics.jsonl get 2 of the 4 validation
    samples, the ones verl logs: sorted by input ("count 0" .. "count 3"), RandomState(42) orders 4 items
    1, 3, 0, 2, so "count 1" and "count 3", each with the output and score the validation dump holds."""
    out, val = tmp_path / "run", tmp_path / "val"
    proc = main_ppo(args(toy, out, **{"trainer.val_only": True, "trainer.log_val_generations": 2,
                                      "trainer.validation_data_dir": val}), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dumped = {"".join(line["input"].split()): line
              for line in map(json.loads, (val / "0.jsonl").read_text(encoding="utf-8").splitlines())}
    assert sorted(dumped) == ["count0", "count1", "count2", "count3"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("val/generations") for r in rows] == [1, 2, None]  # the samples, then the metrics
    picked = rows[:2]
    assert ["".join(r["input"].split()) for r in picked] == ["count1", "count3"]
    for r in picked:
        line = dumped["".join(r["input"].split())]
        assert r == {"step": 0, "val/generations": r["val/generations"], "input": line["input"],
                     "output": line["output"], "score": line["score"]}
    headers = [line for line in proc.stdout.splitlines() if line.startswith("val/generations")]
    assert [h.split(" score:")[0] for h in headers] == ["val/generations step:0 sample:1/2",
                                                        "val/generations step:0 sample:2/2"]
    assert step_lines(proc.stdout)[0].startswith("step:0 - val-core/toy/digits/acc/mean@1:")
